"""Session windows: the pure window rules, the Redis store (with the same rules in
``window.lua``) and the window features shared with training."""
