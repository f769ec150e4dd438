"""Recorded-log readers against the shared real data and small hand-made files."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.core.errors import InvalidEvent
from stream_app.ingest.events import Event, EventLimits, parse_event
from stream_app.ingest.sources import (
    detect_format,
    iter_diginetica,
    iter_jsonl_raw,
    iter_messages,
    iter_rees46_csv,
    rees46_row_to_message,
)
from tests.shared_data import SHARED_DATA

DATA = SHARED_DATA
MULTI = DATA / "rees46_multicategory" / "2019-Oct_head_users_a.csv"
COSMETICS = DATA / "rees46_cosmetics" / "2019-Dec_head100.csv"
DIGINETICA = DATA / "diginetica"
NOW_MS = 1_577_836_800_000  # 2020-01-01: every sample event is within the accepted window
LIMITS = EventLimits()
HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
)

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder not present")


def _parse(raw: bytes) -> Event:
    return parse_event(raw, limits=LIMITS, now_ms=NOW_MS)


@needs_data
def test_every_multicategory_row_parses() -> None:
    rows = list(iter_rees46_csv(MULTI))
    events = [_parse(rees46_row_to_message(row)) for row in rows]
    assert len(events) == 11_660
    assert Counter(e.event_type for e in events) == {"view": 11_410, "cart": 107, "purchase": 143}
    assert len({e.user_session for e in events}) == 3_453
    assert all(len(e.category_id) == 19 and e.category_id.isdigit() for e in events)
    assert sum(e.category_code == "" for e in events) == 3_888
    assert all(e.price is not None and e.price >= 0 for e in events)
    times = [e.event_time_ms for e in events]
    assert times == sorted(times)
    assert times[0] == 1_569_888_000_000  # 2019-10-01 00:00:00 UTC


@needs_data
def test_rows_keep_raw_strings_and_float_price() -> None:
    first = next(iter_rees46_csv(MULTI))
    assert first == {
        "event_time": "2019-10-01 00:00:00 UTC",
        "event_type": "view",
        "product_id": "44600062",
        "category_id": "2103807459595387724",
        "category_code": "",
        "brand": "shiseido",
        "price": 35.79,
        "user_id": "541312140",
        "user_session": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
    }


@needs_data
def test_cosmetics_remove_from_cart_parses() -> None:
    events = [_parse(rees46_row_to_message(row)) for row in iter_rees46_csv(COSMETICS)]
    counts = Counter(e.event_type for e in events)
    assert counts == {"view": 47, "cart": 26, "remove_from_cart": 26, "purchase": 1}
    first = events[0]
    assert (first.event_type, first.product_id, first.brand, first.price) == (
        "remove_from_cart", "5712790", "f.o.x", 6.27,
    )  # fmt: skip


@needs_data
def test_exact_duplicate_rows_share_an_event_id() -> None:
    rows = [rees46_row_to_message(row) for row in iter_rees46_csv(MULTI)]
    ids = Counter(_parse(raw).event_id for raw in rows)
    distinct_rows = len(set(rows))
    assert distinct_rows < len(rows)  # the sample does contain exact duplicates
    assert len(ids) == distinct_rows  # one id per distinct row, same id for exact duplicates


def test_gzip_csv_reads_like_plain(tmp_path: Path) -> None:
    body = HEADER + "2019-12-01 00:00:00 UTC,cart,1,2,a.b,br,1.50,3,s1\n"
    plain, packed = tmp_path / "x.csv", tmp_path / "x.csv.gz"
    plain.write_text(body)
    packed.write_bytes(gzip.compress(body.encode()))
    assert list(iter_rees46_csv(plain)) == list(iter_rees46_csv(packed))
    assert next(iter_rees46_csv(plain))["price"] == 1.5


def test_csv_faults_reach_the_parser(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "2019-12-01 00:00:00 UTC,view,1,2,,,abc,3,s1\n"
                    "2019-12-01 00:00:00 UTC,view,1,2,,,nan,3,s1\n"
                    "2019-12-01 00:00:00 UTC,view,1,2,,,,3\n")  # fmt: skip
    reasons = []
    for row in iter_rees46_csv(path):
        with pytest.raises(InvalidEvent) as caught:
            _parse(rees46_row_to_message(row))
        reasons.append(caught.value.reason)
    assert reasons == ["bad_price", "nan_or_inf", "empty:user_session"]


def test_csv_without_rees46_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a REES46 CSV"):
        list(iter_rees46_csv(path))


LINES = [b'{"user_session":"s1","event_type":"view"}', b"{not json", b"", b"\xff\xfe",
         b'{"user_session":42}', b"[1,2]", b'{"user_session":""}']  # fmt: skip


@pytest.mark.parametrize("name", ["raw.jsonl", "raw.jsonl.gz"])
def test_jsonl_lines_come_back_verbatim(tmp_path: Path, name: str) -> None:
    body = b"\n".join(LINES[:3]) + b"\r\n" + b"\n".join(LINES[3:]) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    assert list(iter_jsonl_raw(path)) == LINES


def test_jsonl_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b"a\nb")
    assert list(iter_jsonl_raw(path)) == [b"a", b"b"]


def test_jsonl_messages_are_keyed_by_session_when_they_parse(tmp_path: Path) -> None:
    path = tmp_path / "raw.json"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    keys = [key for key, _value in iter_messages(path)]
    assert keys == [b"s1", None, None, None, b"42", None, None]
    assert [value for _key, value in iter_messages(path)] == LINES


@needs_data
def test_csv_messages_are_keyed_by_session() -> None:
    messages = list(iter_messages(COSMETICS))
    assert len(messages) == 100
    for key, value in messages:
        assert key == _parse(value).user_session.encode()


@pytest.fixture(scope="module")
def diginetica_rows() -> list[dict[str, Any]]:
    return list(iter_diginetica(DIGINETICA))


@needs_data
def test_diginetica_merges_views_and_purchases_per_session(
    diginetica_rows: list[dict[str, Any]],
) -> None:
    rows = diginetica_rows
    events = [_parse(orjson.dumps(row)) for row in rows]
    assert Counter(e.event_type for e in events) == {"view": 7_998, "purchase": 181}
    sessions = [e.user_session for e in events]
    assert len(set(sessions)) == 1_955
    assert all(s.startswith("dg-") for s in sessions)
    # one contiguous block per session, in time order inside it
    blocks = [s for i, s in enumerate(sessions) if i == 0 or sessions[i - 1] != s]
    assert len(blocks) == len(set(blocks))
    for session in set(sessions):
        times = [e.event_time_ms for e in events if e.user_session == session]
        assert times == sorted(times)
    assert all(e.category_id for e in events)
    assert all(e.user_id == "" or e.user_id.isdigit() for e in events)
    assert any(e.user_id == "" for e in events)


@needs_data
def test_diginetica_times_start_at_the_session_date(
    diginetica_rows: list[dict[str, Any]],
) -> None:
    rows = [r for r in diginetica_rows if r["user_session"] == "dg-6"]
    assert rows[0]["event_time"] == 1_462_752_000_000 + 53_123  # 2016-05-09 + timeframe
    assert rows[0]["product_id"] == "73191"
    assert rows[0]["user_id"] == ""
    # session 629 crosses midnight: later rows are dated the next day but keep their order
    crossing = [
        r["event_time"] for r in iter_diginetica(DIGINETICA) if r["user_session"] == "dg-629"
    ]
    assert crossing == sorted(crossing)
    assert crossing[-1] - crossing[0] < 3_600_000


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.csv", "csv"), ("a.CSV.gz", "csv"), ("a.jsonl", "jsonl"), ("a.jsonl.gz", "jsonl"),
     ("a.json", "jsonl")],
)  # fmt: skip
def test_detect_format_by_extension(name: str, expected: str) -> None:
    assert detect_format(name) == expected


def test_detect_format_of_a_directory_and_unknown_files(tmp_path: Path) -> None:
    assert detect_format(tmp_path) == "diginetica"
    with pytest.raises(ValueError, match="unknown log format"):
        detect_format(tmp_path / "events.parquet")


GA_MERCH = DATA / "ga_merch" / "2016-Aug-Oct_users_a.csv.gz"


@needs_data
def test_ga_merch_rows_keep_text_and_context_columns() -> None:
    rows = []
    for row in iter_rees46_csv(GA_MERCH):
        rows.append(row)
        if len(rows) == 5_000:
            break
    events = [_parse(rees46_row_to_message(row)) for row in rows]
    assert all(e.device and e.channel for e in events)
    products = [e for e in events if e.event_type != "search"]
    assert sum(bool(e.product_name) for e in products) >= 0.99 * len(products)
    assert all(e.query for e in events if e.event_type == "search")
    assert rows[0]["event_time"].endswith(" UTC")
    assert "." in rows[0]["event_time"]  # millisecond precision


def test_optional_columns_are_read_when_present_and_empty_cells_omitted(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text(
        HEADER.rstrip("\n") + ",product_name,query,device,channel,country\n"
        "2016-08-01 07:06:00.123 UTC,search,,,,,,u1,s1,,red mug,mobile,Direct,\n"
    )
    (row,) = iter_rees46_csv(path)
    assert (row["query"], row["device"], row["channel"]) == ("red mug", "mobile", "Direct")
    assert not {"country", "product_name"} & set(row)
    event = _parse(rees46_row_to_message(row))
    assert (event.event_type, event.query, event.country) == ("search", "red mug", "")
