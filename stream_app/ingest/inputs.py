"""Command-line inputs checked before anything connects or loads a model.

Each check raises ``ConfigError`` with one line that names the input and what to do; the
sub-commands turn it into exit status 2 (see ``cli.py``).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path

from stream_app.core.errors import ConfigError
from stream_app.ingest.sources import iter_messages

LOG_KINDS = "a REES46 CSV(.gz), a JSONL(.gz) event log or a DIGINETICA folder"


def check_event_log(path: str | Path, flag: str) -> Path:
    """``path`` exists and its first record reads as an event log (header, encoding, gzip)."""
    log = Path(path)
    if not log.exists():
        raise ConfigError(f"{flag} {log}: no such file; pass {LOG_KINDS}")
    try:
        next(iter(iter_messages(log)), None)
    except (OSError, ValueError, EOFError, KeyError, UnicodeError) as exc:
        reason = _short(exc)
        raise ConfigError(f"{flag} {log}: not readable as an event log ({reason}); pass "
                          f"{LOG_KINDS}") from None  # fmt: skip
    return log


def check_positive(flag: str, value: float | None, *, allow_zero: bool = False) -> None:
    """A count, rate or duration given on the command line is > 0 (or >= 0)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{flag} must be {bound} (got {value})")


def check_output_file(flag: str, path: str | Path | None) -> None:
    """An output path is not a directory and its folder can be created."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {target} is a directory; pass a file path")
    if target.parent.exists() and not target.parent.is_dir():
        raise ConfigError(f"{flag} {target}: {target.parent} is not a directory")


def _short(exc: BaseException) -> str:
    if isinstance(exc, UnicodeError):
        return "not UTF-8 text"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def precheck_cli(
    argv: Sequence[str], *, logs: Sequence[str] = (), outputs: Sequence[str] = ()
) -> None:
    """Cheap checks of a sub-command's arguments before its heavy imports (torch takes
    seconds to import on a busy machine): event logs readable, outputs writable, no negative
    number after any option. The sub-command's own parser checks everything again."""
    if "-h" in argv or "--help" in argv:
        return
    parser = argparse.ArgumentParser(add_help=False)
    for flag in (*logs, *outputs):
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(list(argv))
    for flag in logs:
        value = getattr(known, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_event_log(value, flag)
    for flag in outputs:
        check_output_file(flag, getattr(known, flag.lstrip("-").replace("-", "_")))
    for flag, value in itertools.pairwise(argv):
        if flag.startswith("--") and _is_negative(value):
            raise ConfigError(f"{flag} must be >= 0 (got {value})")


def _is_negative(text: str) -> bool:
    try:
        return float(text) < 0
    except ValueError:
        return False
