"""Write the held-out test users' rows of a log: the users the shipped model never trained on.

    python -m model_export.heldout --events LOG --out heldout.csv.gz

The split is the one training, ``select`` and ``evaluate`` use (``corpus.load_corpus``: seeded,
user-grouped, buyer-stratified, ``DEFAULT_TEST_FRACTION`` of the users). The output is the
input's own CSV rows (header and columns unchanged) of those users, so ``intent-stream
backtest``, ``replay`` and ``demo`` read it like the original log.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, cast

from model_export.corpus import DEFAULT_TEST_FRACTION, SPLIT_SEED
from model_export.data import load_dataset, split_by_user
from stream_app.core.errors import ConfigError
from stream_app.ingest.inputs import check_event_log, check_output_file


def heldout_users(path: Path, test_fraction: float = DEFAULT_TEST_FRACTION) -> frozenset[str]:
    """The users of ``path`` in the held-out test part (as ``data.user_key`` names them)."""
    dataset = load_dataset(path)
    return split_by_user(dataset, (1 - test_fraction, 0.0, test_fraction), SPLIT_SEED).test


def _open(path: Path, mode: str) -> IO[str]:
    if path.name.endswith(".gz"):
        return cast("IO[str]", gzip.open(path, mode + "t", encoding="utf-8", newline=""))
    return path.open(mode, encoding="utf-8", newline="")


def write_heldout(events: Path, out: Path, users: frozenset[str]) -> int:
    """Copy the rows of ``users`` from the CSV ``events`` to ``out``; returns rows written."""
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)  # e.g. artifacts/ in a fresh clone
    with _open(events, "r") as source, _open(out, "w") as target:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(target, fieldnames=list(reader.fieldnames or ()))
        writer.writeheader()
        for row in reader:
            user = row["user_id"] or f"anon:{row['user_session']}"  # as data.user_key
            if user in users:
                writer.writerow(row)
                written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model_export.heldout", description=__doc__)
    p.add_argument("--events", required=True, help="a shared REES46-layout CSV(.gz) log")
    p.add_argument("--out", required=True, help="where the held-out users' rows go (.csv[.gz])")
    a = p.parse_args(argv)
    try:
        events = check_event_log(a.events, "--events")
        if not events.is_file() or ".csv" not in events.name:
            raise ConfigError(f"--events {events}: pass a CSV(.gz) log")
        check_output_file("--out", a.out)
    except ConfigError as exc:
        print(f"model_export.heldout: {exc}", file=sys.stderr)
        return 2
    users = heldout_users(events)
    rows = write_heldout(events, Path(a.out), users)
    print(f"{rows} rows of {len(users)} held-out users -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
