"""One runner interface for every backend of a graph: ``runner.infer(feeds) -> outputs``.

Feeds and outputs are dicts of numpy arrays keyed by the contract's tensor names. ``infer``
validates the feeds against the graph's contract (names, dtypes, ranks, fixed sizes) before any
work, so a wrong tensor fails with a message naming it.

Graphs run in chunks of their separable axes (``RunChunks``, StepSpec.separable): every graph
computes each view (axis B) on its own, the text encoder each text (N), the SAM blocks and the
decoder each class (T), so running them in slices gives the same answer with a bounded working
memory. That bound matters most for the aggregators under the official 1x1 pooling, whose class
attention sees 256+ classes at each cell of a view, and for the text encoder on many new names
(figures: README, Memory, "What the code's choices were measured at"; scripts/benchmark_memory.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from escnet_export.contract import StepSpec, TensorSpec
from escnet_export.runtime.request_checks import RequestCancelled

NUMPY_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32, "UINT8": np.uint8}


def validate_feeds(step: StepSpec, feeds: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first feed that breaks the contract of ``step``."""
    missing = [name for name in step.input_names if name not in feeds]
    if missing:
        raise ValueError(f"{step.name}: missing inputs {missing}")
    for spec in step.inputs:
        array = feeds[spec.name]
        expected = NUMPY_DTYPES.get(spec.dtype)
        if expected is not None and array.dtype != expected:
            raise ValueError(f"{step.name}.{spec.name}: dtype {array.dtype}, expected {np.dtype(expected)}")
        if array.ndim != len(spec.shape):
            raise ValueError(f"{step.name}.{spec.name}: rank {array.ndim}, expected shape {spec.shape}")
        for axis, (size, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if isinstance(want, int) and size != want:
                raise ValueError(
                    f"{step.name}.{spec.name}: axis {axis} is {size}, expected {want} (shape {spec.shape})"
                )
            if size == 0:
                raise ValueError(f"{step.name}.{spec.name}: axis {axis} ({want}) is empty")


@dataclass(frozen=True)
class RunChunks:
    """The largest slice of each separable axis one run of a graph sees (StepSpec.separable).

    views (B): 1 bounds a graph's working memory to one view's; texts (N) and classes (T): the
    text encoder and the class-separable graphs (SAM blocks, decoder) in slices of that many.
    """

    views: int = 1
    classes: int = 128
    texts: int = 16

    def __post_init__(self) -> None:
        if min(self.views, self.classes, self.texts) < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {self}")

    def size(self, axis: str) -> int | None:
        return {"B": self.views, "T": self.classes, "N": self.texts}.get(axis)


DEFAULT_CHUNKS = RunChunks()


def _axis_of(spec: TensorSpec, axis: str) -> int | None:
    return spec.shape.index(axis) if axis in spec.shape else None


def infer_in_chunks(
    step: StepSpec,
    feeds: dict[str, np.ndarray],
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    chunks: RunChunks = DEFAULT_CHUNKS,
    axes: tuple[str, ...] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, np.ndarray]:
    """``run`` over slices of ``step``'s separable axes, the outputs written into place.

    Each input and output that has the axis (by the contract's shape) is sliced or filled along
    it; inputs without it go to every run whole. Slices nest: B first, then T or N within a view.
    ``cancelled`` is asked before every run; when it says so, RequestCancelled stops the work.
    """
    axes = step.separable if axes is None else axes
    if not axes:
        if cancelled is not None and cancelled():
            raise RequestCancelled(f"{step.name}: the client gave up; stopped before the next run")
        return run(feeds)
    axis, rest = axes[0], axes[1:]
    limit = chunks.size(axis)
    in_axes = {spec.name: _axis_of(spec, axis) for spec in step.inputs}
    sized = [
        feeds[name].shape[index] for name, index in in_axes.items() if index is not None and name in feeds
    ]
    length = sized[0] if sized else 0
    if limit is None or length <= limit:
        return infer_in_chunks(step, feeds, run, chunks, rest, cancelled)
    out_axes = {spec.name: _axis_of(spec, axis) for spec in step.outputs}
    outputs: dict[str, np.ndarray] = {}
    for start in range(0, length, limit):
        window = slice(start, min(start + limit, length))
        part_feeds = {
            name: value if in_axes.get(name) is None else _take(value, in_axes[name], window)
            for name, value in feeds.items()
        }
        for name, value in infer_in_chunks(step, part_feeds, run, chunks, rest, cancelled).items():
            index = out_axes[name]
            if index is None:  # an output without the axis is the same for every slice
                outputs[name] = value
                continue
            if name not in outputs:
                shape = list(value.shape)
                shape[index] = length
                outputs[name] = np.empty(shape, dtype=value.dtype)
            outputs[name][(slice(None),) * index + (window,)] = value
    return outputs


def _take(array: np.ndarray, axis: int, window: slice) -> np.ndarray:
    return np.ascontiguousarray(array[(slice(None),) * axis + (window,)])


class GraphRunner(Protocol):
    step: StepSpec

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    """An exported graph run by onnxruntime on the CPU."""

    def __init__(
        self,
        step: StepSpec,
        path: Path,
        threads: int | None = None,
        chunks: RunChunks = DEFAULT_CHUNKS,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No per-session memory arena: a chain of 11 sessions otherwise keeps the sum of every
        # graph's peak (measured 7.3 GB vs 3.6 GB for ESC-Net at T=150).
        options.enable_cpu_mem_arena = False
        self.step = step
        self.chunks = chunks
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def infer(
        self, feeds: dict[str, np.ndarray], cancelled: Callable[[], bool] | None = None
    ) -> dict[str, np.ndarray]:
        validate_feeds(self.step, feeds)
        inputs = {n: feeds[n] for n in self.step.input_names}
        return infer_in_chunks(self.step, inputs, self._run, self.chunks, cancelled=cancelled)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.step.output_names, feeds)
        return dict(zip(self.step.output_names, outputs, strict=True))


class TorchRunner:
    """A graph's export wrapper run in PyTorch: the reference each exported graph is held to."""

    def __init__(self, step: StepSpec, module: object) -> None:
        self.step = step
        self.module = module

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        validate_feeds(self.step, feeds)
        with torch.no_grad():
            outputs = self.module(*(torch.from_numpy(feeds[n]) for n in self.step.input_names))  # type: ignore[operator]
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        return {name: out.numpy() for name, out in zip(self.step.output_names, outputs, strict=True)}
