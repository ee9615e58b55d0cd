"""One runner interface for every backend of a graph: ``runner.infer(feeds) -> outputs``.

Feeds and outputs are dicts of numpy arrays keyed by the contract's tensor names. ``infer``
validates the feeds against the graph's contract (names, dtypes, ranks, fixed sizes) before any
work, so a wrong tensor fails with a message naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from escnet_export.contract import StepSpec

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


class GraphRunner(Protocol):
    step: StepSpec

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    """An exported graph run by onnxruntime on the CPU."""

    def __init__(self, step: StepSpec, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No per-session memory arena: a chain of 11 sessions otherwise keeps the sum of every
        # graph's peak (measured 7.3 GB vs 3.6 GB for ESC-Net at T=150).
        options.enable_cpu_mem_arena = False
        self.step = step
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        validate_feeds(self.step, feeds)
        outputs = self.session.run(self.step.output_names, {n: feeds[n] for n in self.step.input_names})
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
