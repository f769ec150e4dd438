"""The framework-free scoring pipeline (parse, window, batch, score, publish, ack) and
what guards it: ordered acks, batching policy, model thread with a timeout, circuit breaker,
probes, start-up checks, bounded lifecycle. The Faust wiring is ``stream_app/app.py``."""
