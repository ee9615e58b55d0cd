"""An engine step on the CPU: the exported ONNX graph (1/model.onnx) run by onnxruntime.

The session runs without onnxruntime's CPU memory arena. With it, each graph model keeps the peak
memory of the largest request it has served, and a server of about twenty graph models grows
without bound: measured on escnet's aggregator_1 at T = 150, 1.66 GB resident against 0.16 GB
without the arena, for ~20% more CPU time in that graph; a served escnet + catseg repository held
~15 GB after the T = 150 parity requests and was OOM-killed on a 24 GB machine. The in-process
chain does the same (parity_tests/conftest.py); this is a no-op once OrtRunner disables the arena
itself.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort

from escnet_export.runners import OrtRunner
from escnet_export.triton_models.base import StepModel


class TritonPythonModel(StepModel):
    def setup(self, args: dict[str, Any]) -> None:
        threads = int(os.environ.get("ESCNET_ORT_THREADS", "0")) or None
        path = f"{self.model_directory}/model.onnx"
        self.runner = OrtRunner(self.step, path, threads=threads)
        options = self.runner.session.get_session_options()
        if options.enable_cpu_mem_arena:
            options.enable_cpu_mem_arena = False
            self.runner.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer(inputs)
