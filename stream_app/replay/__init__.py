"""Replaying recorded event logs into Kafka: the load test and the demo's producer.

- ``timing``: when each message is sent and how its times/ids are rewritten (pure).
- ``producer``: the batched confluent-kafka producer (+ ``kafka_client_config``).
- ``tracker``: matching sent events against scores and dead letters (pure).
- ``report``: the result, its JSON/table/plot, the SLO check.
- ``runner``: ``run_replay`` and the ``intent-stream replay`` arguments.
"""
