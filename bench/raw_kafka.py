"""Stage (4): a raw confluent-kafka consume -> produce loop, the ceiling for Kafka in Python.

No parsing, no state, no model: each consumed record is produced to another topic and offsets
are committed (asynchronously, a few times a second) once the produce was handed to librdkafka.
Run as ``python -m bench.raw_kafka BOOTSTRAP TOPIC OUT_TOPIC GROUP COUNT``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

COMMIT_EVERY_S = 0.25


def run(bootstrap: str, topic: str, out_topic: str, group: str, count: int) -> float:
    """Events per second from the first consumed record to the last one produced + flushed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 8 * 1024 * 1024,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1})
    # assign(), not subscribe(): a ceiling for the data path, without the group join (which
    # waits for the rebalance timeout on the embedded broker). Commits still go to ``group``.
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    done, next_commit = 0, time.monotonic() + COMMIT_EVERY_S
    first: float | None = None
    while done < count:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error() is None:
                first = first or time.monotonic()
                producer.produce(out_topic, value=message.value(), key=message.key())
                done += 1
        producer.poll(0)
        if time.monotonic() >= next_commit:
            consumer.commit(asynchronous=True)
            next_commit = time.monotonic() + COMMIT_EVERY_S
    producer.flush(30)
    elapsed = time.monotonic() - (first or time.monotonic())
    with contextlib.suppress(KafkaException):  # "no offset stored": all committed already
        consumer.commit(asynchronous=False)
    consumer.close()
    return done / max(elapsed, 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("bootstrap", "topic", "out_topic", "group"):
        parser.add_argument(name)
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    rate = run(args.bootstrap, args.topic, args.out_topic, args.group, args.count)
    sys.stdout.write(f"RESULT events_per_s={rate:.1f}\n")


if __name__ == "__main__":
    main()
