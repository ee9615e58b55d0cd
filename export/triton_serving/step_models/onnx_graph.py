"""An engine step on the CPU: the exported ONNX graph (1/model.onnx) run by onnxruntime."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from escnet_export.runtime.runners import OrtRunner, RunChunks
from escnet_export.triton_serving.step_models.base import StepModel


class TritonPythonModel(StepModel):
    def setup(self, args: dict[str, Any]) -> None:
        # ESCNET_ORT_THREADS, else the config's "threads" (build_repository --graph-threads),
        # else onnxruntime's default (one per core).
        threads = int(os.environ.get("ESCNET_ORT_THREADS") or self.parameters.get("threads") or 0) or None
        # Slices per onnxruntime run (build_repository --views-per-run ...): the step's working memory.
        chunks = RunChunks(
            **{
                field: int(self.parameters[f"{field}_per_run"])
                for field in ("views", "classes", "texts")
                if f"{field}_per_run" in self.parameters
            }
        )
        self.runner = OrtRunner(
            self.step, f"{self.model_directory}/model.onnx", threads=threads, chunks=chunks
        )

    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer(inputs, cancelled=request.is_cancelled)
