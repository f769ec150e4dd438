"""Dead-letter records: what goes to ``user-events-dlq`` for a message we could not use.

A record is one JSON object (schema ``DLQ_SCHEMA``) that says where the message came from
(topic, partition, offset, key), why it failed (the ``InvalidEvent`` reason code, a detail) and
when, and carries the original bytes so an operator can inspect or replay them:

- ``raw`` is the message as UTF-8 text when it decodes (``raw_encoding: "utf-8"``), else
  base64 (``raw_encoding: "base64"``); the key is stored the same way.
- The Kafka key of a dead letter is the original key, hashed when it is over 1 KiB
  (``dead_letter_key``), so a record plus its key always fits one produce request.
- A record never exceeds ``max_record_bytes`` (keep it under the broker's message limit): a
  raw too big to fit is cut to a prefix and flagged ``raw_truncated: true``. The full-size
  rejection is still recorded: ``raw_size`` and ``raw_sha256`` always describe the *whole*
  original message, so it can be matched against the source log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import orjson

DLQ_SCHEMA = "intent-stream.dead-letter.v1"
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024
MAX_DETAIL_CHARS = 1024
MAX_REASON_CHARS = 128
MIN_RAW_BUDGET = 256


def _as_text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _encode_blob(data: bytes, budget: int) -> tuple[str, str, bool]:
    """``(value, encoding, truncated)`` whose JSON string form fits in ``budget`` bytes."""
    text = _as_text(data)
    if text is not None and len(orjson.dumps(text)) <= budget:
        return text, "utf-8", False
    if text is not None:
        # orjson escapes one input byte to at most 6 output bytes (\u00XX), so this prefix fits.
        prefix = data[: max(0, budget - 2) // 6].decode("utf-8", errors="ignore")
        return prefix, "utf-8", True
    limit = max(0, budget - 2) // 4 * 3
    return base64.b64encode(data[:limit]).decode("ascii"), "base64", len(data) > limit


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead letter: the original key, or ``sha256:<hex>`` of it when it is
    longer than ``MAX_KEY_BYTES``, so that key plus record always fit one produce request
    (Kafka allows a ~1 MB key; the record itself is bounded by ``max_record_bytes``)."""
    if key is None or len(key) <= MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def dead_letter_record(
    raw: bytes,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    failed_at_ms: int,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> bytes:
    """One dead-letter record as JSON bytes, at most ``max_record_bytes`` long (see module doc)."""
    record: dict[str, Any] = {
        "schema": DLQ_SCHEMA,
        "reason": reason[:MAX_REASON_CHARS],
        "detail": detail[:MAX_DETAIL_CHARS],
        "topic": topic[:MAX_REASON_CHARS],
        "partition": partition,
        "offset": offset,
        "failed_at_ms": failed_at_ms,
        "key": None,
        "key_encoding": None,
        "key_truncated": False,
        "raw_size": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
    }
    if key is not None:
        key_value, key_encoding, key_cut = _encode_blob(key, MAX_KEY_BYTES)
        record.update(key=key_value, key_encoding=key_encoding, key_truncated=key_cut)
    # Measure the envelope with an empty raw and the longest flag spellings, so the budget left
    # for raw (its quotes included) is exact.
    record.update(raw="", raw_encoding="base64", raw_truncated=False)
    budget = max_record_bytes - len(orjson.dumps(record)) + 2
    if budget < MIN_RAW_BUDGET:
        raise ValueError(f"max_record_bytes={max_record_bytes} leaves no room for the message")
    raw_value, raw_encoding, raw_cut = _encode_blob(raw, budget)
    record.update(raw=raw_value, raw_encoding=raw_encoding, raw_truncated=raw_cut)
    return orjson.dumps(record)


def _decode_blob(value: object, encoding: object, field: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"dead-letter {field} is not a string")
    if encoding == "utf-8":
        return value.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"dead-letter {field} is not valid base64") from exc
    raise ValueError(f"dead-letter {field} has unknown encoding {encoding!r}")


def parse_dead_letter(data: bytes) -> dict[str, Any]:
    """Read a record back; ``raw`` and ``key`` become ``bytes`` again (a prefix if truncated).

    Raises ``ValueError`` for anything that is not one of our dead-letter records.
    """
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError("dead-letter record is not JSON") from exc
    if not isinstance(record, dict) or record.get("schema") != DLQ_SCHEMA:
        raise ValueError(f"not a {DLQ_SCHEMA} record")
    record["raw"] = _decode_blob(record.get("raw"), record.get("raw_encoding"), "raw")
    record["key"] = _decode_blob(record.get("key"), record.get("key_encoding"), "key")
    if record["raw"] is None:
        raise ValueError("dead-letter record has no raw message")
    return record
