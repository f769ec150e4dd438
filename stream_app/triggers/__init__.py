"""Campaign triggers: rules, their pure evaluation, trigger state in Redis, reason codes."""
