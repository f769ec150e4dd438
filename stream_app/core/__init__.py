"""Settings and cross-cutting plumbing: typed config, errors, logging, metrics, retries,
Kafka/Redis client helpers. Imports nothing else of ours."""
