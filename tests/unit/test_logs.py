"""Structured logs: WORKER_LOG_JSON=1 gives one JSON object per line, also under Faust."""

from __future__ import annotations

import io
import logging
import logging.config

import orjson

from stream_app.core.logs import JsonFormatter, worker_logging_config


def test_json_formatter_emits_one_object_per_record() -> None:
    record = logging.LogRecord(
        "stream_app.x", logging.WARNING, __file__, 1, "store %s", ("down",), None
    )
    line = JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "stream_app.x"
    assert entry["msg"] == "store down"
    assert entry["ts"].endswith("+00:00")


def test_worker_config_routes_the_root_logger_through_json() -> None:
    assert worker_logging_config("INFO", as_json=False) is None
    config = worker_logging_config("INFO", as_json=True)
    assert config is not None
    stream = io.StringIO()
    config["handlers"]["stderr"]["stream"] = stream
    saved_handlers, saved_level = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(config)
        logging.getLogger("faust.worker").info("Ready")
    finally:
        logging.root.handlers[:] = saved_handlers
        logging.root.setLevel(saved_level)
    assert orjson.loads(stream.getvalue().splitlines()[-1])["msg"] == "Ready"
