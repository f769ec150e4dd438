"""Recorded logs -> producer messages: REES46 CSV, raw JSONL streams, DIGINETICA.

Readers yield what a producer would send, *not* validated events: validation is the worker's
job (``events.parse_event``), and replaying a recorded log must exercise it, malformed lines
included. Every reader streams its file (constant memory) except DIGINETICA, whose rows must be
regrouped per session.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import IO, Any, Literal

import orjson

REES46_COLUMNS: tuple[str, ...] = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
# Optional columns a shop's log may add (the ga_merch log has all of them): kept when present.
OPTIONAL_COLUMNS: tuple[str, ...] = ("product_name", "query", "device", "channel", "country")
SourceFormat = Literal["csv", "jsonl", "diginetica"]
_DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"))
    return path.open("rb")


# ---------------------------------------------------------------------------------------------
# REES46


def _csv_price(text: str) -> float | str | None:
    """A finite float when the cell is one; otherwise the text, so the parser names the fault."""
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def iter_rees46_csv(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a REES46 CSV (optionally ``.gz``) as our JSON message fields.

    Ids stay strings (``category_id`` has 19 digits: never through float); ``price`` is a float
    when present; absent optional fields are empty strings. ``OPTIONAL_COLUMNS`` present in the
    header are kept (empty cells omitted). Raises ``ValueError`` if the header lacks a REES46
    column.
    """
    with _open_text(Path(path)) as handle:
        reader = csv.DictReader(handle)
        header = set(reader.fieldnames or ())
        missing = set(REES46_COLUMNS) - header
        if missing:
            raise ValueError(f"{path}: not a REES46 CSV, missing columns {sorted(missing)}")
        optional = [name for name in OPTIONAL_COLUMNS if name in header]
        for row in reader:
            record: dict[str, Any] = {name: row[name] or "" for name in REES46_COLUMNS}
            record.update((name, row[name]) for name in optional if row[name])
            record["price"] = _csv_price(record["price"])
            yield record


def rees46_row_to_message(row: dict[str, Any]) -> bytes:
    """The JSON value a producer sends for one REES46 row (as yielded by ``iter_rees46_csv``)."""
    return orjson.dumps(row)


# ---------------------------------------------------------------------------------------------
# JSONL (a recorded raw stream)


def iter_jsonl_raw(path: str | Path) -> Iterator[bytes]:
    """Each line of a JSONL file (optionally ``.gz``) verbatim, without its line ending.

    Nothing is parsed or skipped: malformed and blank lines are messages too, exactly as a
    recorded raw stream would replay them. ``\\r\\n`` endings are removed like ``\\n``.
    """
    with _open_binary(Path(path)) as handle:
        for line in handle:
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            yield line


def _session_key(line: bytes) -> bytes | None:
    """The Kafka key of a recorded line: its ``user_session`` when the line parses."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    session = obj.get("user_session") if isinstance(obj, dict) else None
    if isinstance(session, str) and session:
        return session.encode("utf-8")
    if isinstance(session, int) and not isinstance(session, bool):
        return str(session).encode("ascii")
    return None


# ---------------------------------------------------------------------------------------------
# DIGINETICA (CIKM Cup 2016)


def _diginetica_file(directory: Path, prefix: str) -> Path:
    matches = sorted(directory.glob(f"{prefix}*.csv"))
    if len(matches) != 1:
        raise ValueError(f"{directory}: expected one {prefix}*.csv, found {len(matches)}")
    return matches[0]


def _read_semicolon_csv(path: Path) -> Iterator[dict[str, str]]:
    with _open_text(path) as handle:
        yield from csv.DictReader(handle, delimiter=";")


def _diginetica_categories(directory: Path) -> dict[str, str]:
    rows = _read_semicolon_csv(directory / "product-categories.csv")
    return {row["itemId"]: row["categoryId"] for row in rows}


def _diginetica_rows(directory: Path) -> dict[str, list[tuple[int, int, str, str, str, str]]]:
    """Per session: (timeframe, kind, event_type, item, user, eventdate); views sort first."""
    sessions: dict[str, list[tuple[int, int, str, str, str, str]]] = defaultdict(list)
    for row in _read_semicolon_csv(_diginetica_file(directory, "train-item-views")):
        sessions[row["session_id"]].append(
            (int(row["timeframe"]), 0, "view", row["item_id"], row["user_id"], row["eventdate"])
        )
    for row in _read_semicolon_csv(_diginetica_file(directory, "train-purchases")):
        sessions[row["sessionId"]].append(
            (int(row["timeframe"]), 1, "purchase", row["itemId"], row["userId"], row["eventdate"])
        )
    return sessions


def _day_ms(iso_date: str) -> int:
    return (date.fromisoformat(iso_date).toordinal() - _EPOCH_ORDINAL) * _DAY_MS


def iter_diginetica(directory: str | Path) -> Iterator[dict[str, Any]]:
    """DIGINETICA views + purchases as our message fields, one session after another.

    ``timeframe`` is ms since the session started, so ``event_time`` = midnight UTC of the
    session's *first* ``eventdate`` + ``timeframe`` (a session crossing midnight keeps its
    order; using each row's own date would push its late rows a day ahead). Sessions come in
    order of start time, then id; within a session events follow ``timeframe``, a view before
    a purchase at the same instant. ``user_id`` is "" for ``NA``; ``category_id`` comes from
    ``product-categories.csv``; there is no price or text.
    """
    directory = Path(directory)
    categories = _diginetica_categories(directory)
    sessions = _diginetica_rows(directory)
    starts = {sid: _day_ms(min(r[5] for r in rows)) for sid, rows in sessions.items()}
    for sid in sorted(sessions, key=lambda s: (starts[s] + min(r[0] for r in sessions[s]), s)):
        for timeframe, _kind, event_type, item, user, _date in sorted(sessions[sid]):
            yield {
                "event_time": starts[sid] + timeframe,
                "event_type": event_type,
                "product_id": item,
                "category_id": categories.get(item, ""),
                "category_code": "",
                "brand": "",
                "price": None,
                "user_id": "" if user == "NA" else user,
                "user_session": f"dg-{sid}",
            }


# ---------------------------------------------------------------------------------------------
# Format detection


def detect_format(path: str | Path) -> SourceFormat:
    """``csv`` (.csv, .csv.gz), ``jsonl`` (.jsonl, .jsonl.gz, .json) or ``diginetica`` (a dir)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "diginetica"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return "jsonl"
    raise ValueError(f"{path}: unknown log format (expected .csv[.gz], .jsonl[.gz] or .json)")


def iter_messages(path: str | Path) -> Iterator[tuple[bytes | None, bytes]]:
    """``(key, value)`` Kafka records for a recorded log; the key is the session id."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        for line in iter_jsonl_raw(path):
            yield _session_key(line), line
        return
    rows = iter_rees46_csv(path) if fmt == "csv" else iter_diginetica(path)
    for row in rows:
        session = str(row["user_session"])
        yield (session.encode("utf-8") if session else None), rees46_row_to_message(row)
