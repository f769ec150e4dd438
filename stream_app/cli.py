"""``intent-stream`` console script: one sub-command per job.

Heavy imports (torch, faust, onnxruntime) happen inside the sub-commands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stream_app.core.extras import MissingExtra, require_extra

# Nothing may be fetched from a model hub at run time: weights come from disk only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Handler = Callable[[argparse.Namespace], int]
EXIT_CONFIG = 2


def _worker(args: argparse.Namespace) -> int:
    from stream_app.worker import run_worker

    return run_worker()


def _triggers(args: argparse.Namespace) -> int:
    from stream_app.worker import run_triggers

    return run_triggers()


def _api(args: argparse.Namespace) -> int:
    require_extra("api", "intent-stream api")
    from stream_app.api.server import run_api

    return run_api()


def _backtest(args: argparse.Namespace) -> int:
    require_extra("plot", "intent-stream backtest (its plot)")
    from stream_app.replay.backtest import main_backtest

    return main_backtest(args)


def _demo(args: argparse.Namespace) -> int:
    require_extra("demo", "intent-stream demo")
    from stream_app.local.demo import run_demo

    return run_demo(args)


def _replay(args: argparse.Namespace) -> int:
    if getattr(args, "plot", None):
        require_extra("plot", "intent-stream replay --plot")
    from stream_app.replay.runner import main_replay

    return main_replay(args)


def _build_model(args: argparse.Namespace) -> int:
    require_extra("train", "intent-stream build-model")
    from model_export.bundle import WEIGHTS_DIR, build_model_dir
    from stream_app.core.errors import ModelLoadError
    from stream_app.core.logs import configure_logging

    configure_logging("INFO")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        print(f"intent-stream build-model: --out {out} is a file; pass a directory",
              file=sys.stderr)  # fmt: skip
        return 2
    weights = Path(args.weights) if args.weights else WEIGHTS_DIR
    try:
        print(build_model_dir(weights, out_dir=out, force=args.force))
    except ModelLoadError as exc:
        print(f"intent-stream build-model: {exc}", file=sys.stderr)
        return 2
    return 0


def _build_engines(args: argparse.Namespace) -> int:
    from model_export.engine_cache import run
    from stream_app.core.errors import IntentStreamError
    from stream_app.core.logs import configure_logging

    configure_logging("INFO")
    try:
        print(run(args))
    except IntentStreamError as exc:  # no GPU, no TensorRT, no writable cache: one line
        print(f"intent-stream build-engines: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _train(args: argparse.Namespace) -> int:
    require_extra("train", "intent-stream train")
    if not _prechecked("train", args.argv, logs=("--events", "--data")):
        return 2
    overwrite_flags = ("--out", "--update-shipped", "--force")
    if not any(flag in args.argv for flag in overwrite_flags) and _shipped_weights().is_dir():
        print(f"intent-stream train: training would overwrite the shipped weights in "
              f"{_shipped_weights()}; pass --out DIR for new weights, or --update-shipped",
              file=sys.stderr)  # fmt: skip
        return 2
    from model_export.train import main as main_train

    return main_train(args.argv)


def _evaluate(args: argparse.Namespace) -> int:
    require_extra("train", "intent-stream evaluate")
    if not _prechecked("evaluate", args.argv, logs=("--events", "--train"),
                       outputs=("--report-json",)):  # fmt: skip
        return 2
    from model_export.evaluate import run_evaluate_cli

    return run_evaluate_cli(args.argv)


def _prechecked(
    command: str, argv: Sequence[str], logs: Sequence[str], outputs: Sequence[str] = ()
) -> bool:
    """Arguments checked before the sub-command imports torch (seconds on a busy machine)."""
    from stream_app.core.errors import ConfigError
    from stream_app.ingest.inputs import precheck_cli

    try:
        precheck_cli(argv, logs=logs, outputs=outputs)
    except ConfigError as exc:
        print(f"intent-stream {command}: {exc}", file=sys.stderr)
        return False
    return True


def _shipped_weights() -> Path:
    """``model_export/weights`` without importing ``model_export.train`` (torch)."""
    import importlib.util

    spec = importlib.util.find_spec("model_export")
    locations = spec.submodule_search_locations if spec else None
    return Path(next(iter(locations or ["."]))) / "weights"


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the whole pipeline locally on a sample and show it")
    source = demo.add_mutually_exclusive_group()
    source.add_argument(
        "--events", help="a log to replay: REES46/ga_merch CSV(.gz) or raw JSONL(.gz)"
    )
    source.add_argument(
        "--sample",
        choices=("ga_merch", "rees46"),
        default="ga_merch",
        help="bundled sample: a day of the Google Merchandise Store (default) or REES46",
    )
    demo.add_argument(
        "--speed",
        help="replay speed factor, or 'max' (default: 1440 for ga_merch, 20 otherwise)",
    )
    demo.add_argument(
        "--times",
        choices=("compress", "shift", "send", "keep"),
        default="compress",
        help="event-time rule, as for replay (default compress: live times at any speed)",
    )
    demo.add_argument("--summary-json", help="write the run's summary here")
    demo.add_argument("--limit", type=int, default=0, help="send at most N messages (0 = all)")
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after S seconds")
    demo.add_argument("--top", type=int, default=12, help="sessions shown in the live view")
    demo.add_argument("--no-live", action="store_true", help="plain progress lines, no live view")
    demo.set_defaults(handler=_demo)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    build = sub.add_parser("build-model", help="build (or locate) the serving model directory")
    build.add_argument("--out", help="target directory (default: the cache)")
    build.add_argument("--weights", help="trained weights (default: the shipped ones)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(handler=_build_model)

    engines = sub.add_parser(
        "build-engines",
        help="build (or reuse) the TensorRT engines of a model dir for this GPU into a cache",
    )
    engines.add_argument("--model-dir", type=Path, required=True, help="built model directory")
    engines.add_argument("--out", type=Path, required=True, help="writable engine cache")
    engines.set_defaults(handler=_build_engines)

    train = sub.add_parser("train", help="train the intent model on event logs", add_help=False)
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="evaluate the model vs baselines", add_help=False)
    evaluate.set_defaults(handler=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intent-stream", description="Real-time purchase-intent scoring of live sessions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a Faust worker (configured by env vars)")
    worker.set_defaults(handler=_worker)
    triggers = sub.add_parser("triggers", help="run the campaign-triggers worker (env vars)")
    triggers.set_defaults(handler=_triggers)
    api = sub.add_parser("api", help="serve the read API and the live dashboard (env vars)")
    api.set_defaults(handler=_api)
    _add_backtest(sub)
    _add_demo(sub)
    replay = sub.add_parser("replay", help="replay a recorded event log as a load test")
    _add_replay_arguments(replay)
    replay.set_defaults(handler=_replay)
    _add_model_commands(sub)
    return parser


def _add_backtest(sub: argparse._SubParsersAction) -> None:
    backtest = sub.add_parser("backtest", help="run trigger rules over a labelled log, offline")
    backtest.add_argument("--events", required=True, help="REES46-style CSV(.gz) or JSONL log")
    backtest.add_argument("--rules", help="rules YAML (default: the shipped examples)")
    backtest.add_argument("--report-json", required=True, help="where to write the report")
    backtest.add_argument("--max-sessions", type=int, default=0, help="first N sessions (0 = all)")
    backtest.set_defaults(handler=_backtest)


def _add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    from stream_app.replay.runner import add_replay_arguments

    add_replay_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # train/evaluate own their argument parsing (they live in model_export).
    if argv and argv[0] in ("train", "evaluate"):
        args = argparse.Namespace(argv=argv[1:])
        handler: Handler = _train if argv[0] == "train" else _evaluate
    else:
        args = parser.parse_args(argv)
        handler = args.handler
    try:
        return int(handler(args))
    except MissingExtra as exc:  # a user error: one line, no traceback
        print(f"intent-stream: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
