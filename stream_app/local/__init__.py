"""The embedded broker and Redis, the local stack of worker processes, and the demo."""
