"""TensorRT backend: one serialized engine per ONNX graph (item encoder, session model).

The engines (built by ``model_export.tensorrt_build``, usually through ``intent-stream
build-engines``) live in the model directory next to the ONNX graphs they came from;
``metadata.json["tensorrt"]`` names them and lists each one's optimization profiles, which
match the preprocessor's (batch, tokens) buckets. ``tensorrt`` is imported only when this
backend is chosen; without it, or without CUDA, loading is a ``ModelLoadError`` that says
what is missing. Device memory and streams are torch's, so no extra CUDA binding is needed.

What happens when, per engine:

* start-up (the constructor, before the worker reads its first event): deserialize the
  engine; create its ONE execution context; allocate persistent device buffers (one flat
  buffer per I/O tensor, sized for the largest shape any profile admits, so its address never
  changes) and pinned host staging buffers; then for every (profile, batch bucket) the
  preprocessor can emit (``capture_plan``): switch the context to that profile
  (``set_optimization_profile_async`` on the engine's stream), set the input shapes, run
  ``execute_async_v3`` once eagerly (TensorRT finishes its shape-dependent set-up there, as
  capture requires) and capture a CUDA graph of a second ``execute_async_v3``. Finally every
  graph is replayed in another order (so each replay follows a profile switch, as live
  batches do) and compared with its eager result; a mismatch or a capture failure turns
  graphs off for that engine (logged) and the backend runs eagerly, still correct.
* a live batch: look up its (profile, rows, tokens) key; re-bind the context only if the key
  differs from the last one (profile switch + input shapes); copy the inputs into the
  persistent buffers; replay the key's graph; copy the output back; synchronize. Nothing is
  allocated, built or captured.

Threading: the worker calls ``score`` from its single inference thread
(``pipeline``'s one-thread executor). An execution context is not safe to use from two
threads at once (its bound shapes, profile and buffers are shared state), so each engine
holds a lock for a whole bind→copy→run→copy-out sequence; a second thread would wait, not
corrupt. CUDA graphs and the stream may be used from any thread; each call enters the
engine's device and stream explicitly because both are per-thread state in torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.item_cache import DEFAULT_CAPACITY, ItemEmbeddingCache
from stream_app.scoring.model_dir import ModelMetadata, load_metadata
from stream_app.scoring.preprocess import (
    ITEM_INPUTS,
    SESSION_INPUTS,
    EncodedBatch,
    Preprocessor,
    SessionBatch,
    SnapshotScoring,
)
from stream_app.sessions.features import EVENT_NUMERIC_NAMES, N_EVENT_TYPES

log = logging.getLogger(__name__)

ENGINES = {"items": (ITEM_INPUTS, "item_embedding"), "session": (SESSION_INPUTS, "probability")}
BUILD_HINT = "run `intent-stream build-engines --model-dir DIR --out CACHE` on this GPU"
GRAPH_RTOL, GRAPH_ATOL = 1e-3, 1e-5  # a replayed graph must reproduce its eager run


@dataclass(frozen=True)
class EngineProfile:
    """Shape range of one optimization profile: batch in [min, max] at exactly ``tokens``
    (item tokens for the item encoder; window events K for the session model)."""

    tokens: int
    min_batch: int
    opt_batch: int
    max_batch: int

    def covers(self, rows: int, tokens: int) -> bool:
        return tokens == self.tokens and self.min_batch <= rows <= self.max_batch

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, order=True)
class GraphKey:
    """One shape the engine runs at: the profile that serves it, and the (rows, tokens)."""

    profile: int
    rows: int
    tokens: int


def profiles_from_metadata(raw: list[dict[str, Any]]) -> list[EngineProfile]:
    try:
        return [EngineProfile(**{k: int(v) for k, v in p.items()}) for p in raw]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid tensorrt profiles in metadata: {exc!r}") from exc


def profile_for(profiles: Sequence[EngineProfile], rows: int, tokens: int) -> int:
    """Index of the narrowest profile that covers (rows, tokens)."""
    fitting = [i for i, p in enumerate(profiles) if p.covers(rows, tokens)]
    if not fitting:
        raise ValueError(f"no TensorRT profile covers batch {rows} x {tokens} tokens")
    return min(fitting, key=lambda i: profiles[i].max_batch - profiles[i].min_batch)


def bucket_shapes(kind: str, meta: ModelMetadata) -> list[tuple[int, int]]:
    """Every (rows, tokens) the preprocessor can send to the ``kind`` graph."""
    tokens = meta.seq_buckets if kind == "items" else (meta.max_events,)
    return [(rows, t) for t in tokens for rows in meta.batch_buckets]


def capture_plan(profiles: Sequence[EngineProfile], shapes: Sequence[tuple[int, int]]
                 ) -> list[GraphKey]:  # fmt: skip
    """One key per shape, grouped by profile (fewest switches while capturing).

    A shape no profile covers is a ``ModelLoadError``: engines built for other buckets than
    the model's metadata lists would otherwise fail on the first live batch of that shape.
    """
    missing = [s for s in shapes if not any(p.covers(*s) for p in profiles)]
    if missing:
        raise ModelLoadError(
            f"TensorRT profiles do not cover the preprocessor's shapes {missing}: {BUILD_HINT}"
        )
    return sorted(GraphKey(profile_for(profiles, rows, tokens), rows, tokens)
                  for rows, tokens in shapes)  # fmt: skip


def replay_order(plan: Sequence[GraphKey]) -> list[GraphKey]:
    """The self-check's order: round-robin over the profiles, starting away from the last
    captured key, so every replay follows a bind to another key (and, where the plan has
    several profiles, a profile switch), as live batches do."""
    groups: dict[int, list[GraphKey]] = {}
    for key in plan:
        groups.setdefault(key.profile, []).append(key)
    depth = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(depth) for _, g in sorted(groups.items()) if i < len(g)]


def io_shapes(kind: str, rows: int, tokens: int, item_dim: int, n_features: int
              ) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """Shapes of every input and the output of the ``kind`` graph at (rows, tokens)."""
    if kind == "items":
        return {"input_ids": (rows, tokens), "attention_mask": (rows, tokens),
                "item_embedding": (rows, item_dim)}  # fmt: skip
    if kind == "session":
        return {"items": (rows, tokens, item_dim), "event_types": (rows, tokens),
                "numerics": (rows, tokens, len(EVENT_NUMERIC_NAMES)), "mask": (rows, tokens),
                "features": (rows, n_features), "probability": (rows,)}  # fmt: skip
    raise ValueError(f"unknown engine kind {kind!r}")


def buffer_elements(kind: str, plan: Sequence[GraphKey], item_dim: int, n_features: int
                    ) -> dict[str, int]:  # fmt: skip
    """Elements of each flat I/O buffer: the largest shape of the plan (views take a prefix)."""
    sizes: dict[str, int] = {}
    for key in plan:
        for name, shape in io_shapes(kind, key.rows, key.tokens, item_dim, n_features).items():
            sizes[name] = max(sizes.get(name, 0), int(np.prod(shape)))
    return sizes


def warm_inputs(kind: str, rows: int, tokens: int, item_dim: int, n_features: int,
                seed: int = 0) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Valid, seeded inputs of one shape (in-vocabulary ids, real event types, some padding)
    for capture and the replay self-check; the dtypes are the preprocessor's."""
    rng = np.random.default_rng(seed)
    shapes = io_shapes(kind, rows, tokens, item_dim, n_features)
    if kind == "items":
        ids = rng.integers(1000, 30000, size=shapes["input_ids"], dtype=np.int64)
        ids[:, 0] = 101  # [CLS]
        mask = np.ones(shapes["attention_mask"], dtype=np.int64)
        mask[rows // 2 :, max(1, tokens // 2) :] = 0  # padded rows exercise the masking
        return ids, mask
    mask = np.ones(shapes["mask"], dtype=np.float32)
    mask[:, : tokens // 2] = 0.0  # left padding, as windows shorter than K have
    return (
        rng.normal(size=shapes["items"]).astype(np.float32),
        rng.integers(1, N_EVENT_TYPES, size=shapes["event_types"], dtype=np.int64),
        rng.normal(size=shapes["numerics"]).astype(np.float32),
        mask,
        rng.normal(size=shapes["features"]).astype(np.float32),
    )


_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64",
                 "int32": "int32", "int8": "int8", "bool": "bool", "uint8": "uint8"}  # fmt: skip


def torch_dtype_name(numpy_dtype: Any) -> str:
    """The torch dtype name for an engine tensor's numpy dtype (``trt.nptype``)."""
    name = np.dtype(numpy_dtype).name
    if name not in _TORCH_DTYPES:
        raise ModelLoadError(f"TensorRT I/O dtype {name} is not supported by this backend")
    return _TORCH_DTYPES[name]


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelLoadError(
            "TensorRT engines need the `tensorrt` package (pip install 'intent-stream[gpu]')"
        ) from exc
    return tensorrt


def _require_cuda(device: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError("MODEL_BACKEND=tensorrt needs torch (intent-stream[gpu])") from exc
    if not torch.cuda.is_available():
        raise ModelLoadError("MODEL_BACKEND=tensorrt needs a CUDA GPU; none is available")
    try:
        return torch.device(device if device.startswith("cuda") else "cuda")
    except RuntimeError as exc:
        raise ModelLoadError(f"invalid MODEL_DEVICE {device!r}: {exc}") from exc


def load_engine(trt: ModuleType, path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"no TensorRT engine at {path}: {BUILD_HINT}")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:  # wrong TensorRT version or GPU architecture, or a corrupt file
        raise ModelLoadError(f"cannot deserialize TensorRT engine {path} (built elsewhere?)")
    return engine


def _check_engine(trt: ModuleType, engine: Any, path: Path, kind: str, n_profiles: int) -> None:
    inputs, output = ENGINES[kind]
    names = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
             for i in range(engine.num_io_tensors)}  # fmt: skip
    expected = {**{n: trt.TensorIOMode.INPUT for n in inputs}, output: trt.TensorIOMode.OUTPUT}
    if names != expected:
        raise ModelLoadError(f"{path}: I/O tensors {sorted(names)} != {sorted(expected)}")
    if engine.num_optimization_profiles != n_profiles:
        raise ModelLoadError(f"{path}: {engine.num_optimization_profiles} optimization profiles, "
                             f"metadata lists {n_profiles}: {BUILD_HINT}")  # fmt: skip


class _Engine:
    """One engine, its one execution context, persistent buffers and CUDA graphs."""

    def __init__(self, trt: ModuleType, path: Path, profiles: list[EngineProfile], kind: str,
                 meta: ModelMetadata, device: Any) -> None:  # fmt: skip
        import torch

        self.kind, self.device, self.profiles = kind, device, profiles
        self.inputs, self.output = ENGINES[kind]
        self.dims = (meta.item_dim, len(meta.feature_names))
        self.plan = capture_plan(profiles, bucket_shapes(kind, meta))
        self.keys = {(k.rows, k.tokens): k for k in self.plan}
        self.engine = load_engine(trt, path)
        _check_engine(trt, self.engine, path, kind, len(profiles))
        self.lock = threading.Lock()
        self.stream = torch.cuda.Stream(device=device)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelLoadError(f"{path}: cannot create an execution context (GPU memory?)")
        self.contexts_created = 1
        sizes = buffer_elements(kind, self.plan, *self.dims)
        dtypes = {name: getattr(torch, torch_dtype_name(trt.nptype(self.engine.get_tensor_dtype(
            name)))) for name in sizes}  # fmt: skip
        self.device_buffers = {n: torch.zeros(sizes[n], dtype=dtypes[n], device=device)
                               for n in sizes}  # fmt: skip
        self.host_buffers = {n: torch.zeros(sizes[n], dtype=dtypes[n], pin_memory=True)
                             for n in sizes}  # fmt: skip
        self.graphs: dict[GraphKey, Any] = {}
        self.graphs_enabled = False
        self.captures = 0
        self._bound: GraphKey | None = None
        self._profile = -1

    # -- pieces of one run (the caller holds the lock, the device and the stream) ------------

    def _view(self, buffers: dict[str, Any], name: str, shape: tuple[int, ...]) -> Any:
        return buffers[name][: int(np.prod(shape))].view(shape)

    def _bind(self, key: GraphKey) -> None:
        if key == self._bound:
            return
        if key.profile != self._profile:
            stream = self.stream.cuda_stream
            if not self.context.set_optimization_profile_async(key.profile, stream):
                raise RuntimeError(f"TensorRT refused optimization profile {key.profile}")
            self._profile = key.profile
        shapes = io_shapes(self.kind, key.rows, key.tokens, *self.dims)
        for name in self.inputs:
            if not self.context.set_input_shape(name, shapes[name]):
                raise RuntimeError(f"TensorRT refused shape {shapes[name]} for {name}")
        for name in (*self.inputs, self.output):
            self.context.set_tensor_address(name, self.device_buffers[name].data_ptr())
        self._bound = key

    def _copy_in(self, key: GraphKey, arrays: Sequence[np.ndarray]) -> None:
        import torch

        shapes = io_shapes(self.kind, key.rows, key.tokens, *self.dims)
        for name, array in zip(self.inputs, arrays, strict=True):
            if tuple(array.shape) != shapes[name]:
                raise ValueError(f"{name}: shape {array.shape} != {shapes[name]}")
            host = self._view(self.host_buffers, name, shapes[name])
            host.copy_(torch.from_numpy(np.ascontiguousarray(array)))  # casts if needed
            self._view(self.device_buffers, name, shapes[name]).copy_(host, non_blocking=True)

    def _execute_eager(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {self._bound}")

    def _copy_out(self, key: GraphKey) -> np.ndarray:
        shape = io_shapes(self.kind, key.rows, key.tokens, *self.dims)[self.output]
        host = self._view(self.host_buffers, self.output, shape)
        host.copy_(self._view(self.device_buffers, self.output, shape), non_blocking=True)
        self.stream.synchronize()
        return np.array(host.numpy(), dtype=np.float32)  # a copy: the buffer is reused

    def _enter(self) -> Any:
        import contextlib

        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(self.lock)
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.cuda.stream(self.stream))
        return stack

    # -- start-up ------------------------------------------------------------------------

    def warm_up(self, cuda_graphs: bool = True) -> None:
        """Bind and run every planned shape once; capture and self-check its CUDA graph."""
        eager: dict[GraphKey, np.ndarray] = {}
        capture = cuda_graphs
        with self._enter():
            for key in self.plan:
                self._bind(key)
                self._copy_in(key, self._warm_inputs(key))
                self._execute_eager()  # outside capture: TensorRT's set-up for this shape
                eager[key] = self._copy_out(key)
                if not np.all(np.isfinite(eager[key])):
                    raise ModelLoadError(f"TensorRT {self.kind} engine: non-finite outputs at "
                                         f"{key}")  # fmt: skip
                capture = capture and self._capture(key)  # after a failure: eager only
            self.graphs_enabled = cuda_graphs and len(self.graphs) == len(self.plan)
            if self.graphs_enabled and not self._replays_match(eager):
                self.graphs_enabled = False
            if not self.graphs_enabled:
                self._drop_graphs()

    def _warm_inputs(self, key: GraphKey) -> tuple[np.ndarray, ...]:
        return warm_inputs(
            self.kind, key.rows, key.tokens, *self.dims, seed=key.rows * 1009 + key.tokens
        )

    def _capture(self, key: GraphKey) -> bool:
        import torch

        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self._execute_eager()
        except Exception as exc:  # TensorRT/CUDA refuse capture (e.g. a non-capturable layer)
            log.warning("TensorRT %s engine: CUDA graph capture failed at %s (%s); running "
                        "without graphs", self.kind, key, exc)  # fmt: skip
            return False
        self.graphs[key] = graph
        self.captures += 1
        return True

    def _replays_match(self, eager: dict[GraphKey, np.ndarray]) -> bool:
        for key in replay_order(self.plan):
            self._bind(key)  # a profile switch before each replay, as in live traffic
            self._copy_in(key, self._warm_inputs(key))
            self.graphs[key].replay()
            got = self._copy_out(key)
            if not np.allclose(got, eager[key], rtol=GRAPH_RTOL, atol=GRAPH_ATOL):
                worst = float(np.max(np.abs(got - eager[key])))
                log.warning("TensorRT %s engine: graph replay at %s differs from eager by %.2e; "
                            "running without graphs", self.kind, key, worst)  # fmt: skip
                return False
        return True

    def _drop_graphs(self) -> None:
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()

    # -- live ----------------------------------------------------------------------------

    def run(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        rows, tokens = int(arrays[0].shape[0]), int(arrays[0].shape[1])
        key = self.keys.get((rows, tokens))
        if key is None:
            raise ValueError(f"{self.kind}: shape ({rows}, {tokens}) is not a planned bucket")
        with self._enter():
            self._bind(key)
            self._copy_in(key, arrays)
            graph = self.graphs.get(key) if self.graphs_enabled else None
            if graph is not None:
                graph.replay()
            else:
                self._execute_eager()
            return self._copy_out(key)

    def describe(self) -> dict[str, Any]:
        return {"profiles": len(self.profiles), "shapes": len(self.plan),
                "contexts": self.contexts_created, "cuda_graphs": len(self.graphs),
                "graphs_enabled": self.graphs_enabled}  # fmt: skip

    def close(self) -> None:
        with self.lock:
            self._drop_graphs()
            self.context = None  # the context goes before its engine
            self.engine = None


class TensorRTScorer(SnapshotScoring):
    """Synchronous; meant for one inference thread (each engine serialises its own calls)."""

    def __init__(self, model_dir: Path, device: str = "cuda",
                 cache_size: int = DEFAULT_CAPACITY, cuda_graphs: bool = True) -> None:  # fmt: skip
        trt = import_tensorrt()
        self.device = _require_cuda(device)
        self.metadata = load_metadata(model_dir)
        info = self.metadata.tensorrt
        if not info:
            raise ModelLoadError(f"{model_dir}: metadata has no tensorrt section: {BUILD_HINT}")
        try:
            files = {kind: Path(model_dir) / str(info["engines"][kind]) for kind in ENGINES}
            profiles = {kind: profiles_from_metadata(info["profiles"][kind]) for kind in ENGINES}
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"{model_dir}: invalid tensorrt metadata: {exc!r}") from exc
        self.engines = {kind: _Engine(trt, files[kind], profiles[kind], kind, self.metadata,
                                      self.device) for kind in ENGINES}  # fmt: skip
        try:
            for engine in self.engines.values():
                engine.warm_up(cuda_graphs)
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{model_dir}: TensorRT warm-up failed: {exc}") from exc
        self.preprocessor = Preprocessor(model_dir, self.metadata)
        self.item_cache = ItemEmbeddingCache(self.metadata.item_dim, cache_size)
        self.model_version = f"{self.metadata.model_version}-tensorrt-{info.get('precision', '')}"
        self.max_tokens = self.metadata.max_tokens
        from stream_app.scoring.onnx_backend import warm_up

        warm_up(self, model_dir)  # one real snapshot through tokeniser, both engines, cache

    def run_items(self, batch: EncodedBatch) -> np.ndarray:
        return self.engines["items"].run((batch.input_ids, batch.attention_mask))

    def run_session(self, batch: SessionBatch) -> np.ndarray:
        return self.engines["session"].run(batch.arrays())

    def describe(self) -> dict[str, Any]:
        return {kind: engine.describe() for kind, engine in self.engines.items()}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
