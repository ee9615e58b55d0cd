"""SCORE [B, T, G, G] -> POINTS, POINT_LABELS, PSEUDO_MASK: pseudo prompts for all classes at once.

With device tensors (base.py) the torch step runs on SCORE's device; otherwise the numpy step."""

from __future__ import annotations

from typing import Any

from escnet_export.runtime import steps
from escnet_export.triton_serving.step_models.base import StepModel


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.device_tensors:
            from escnet_export.runtime import torch_steps  # imports torch: the device path only

            return torch_steps.pseudo_points(inputs["SCORE"], self.config)
        return steps.pseudo_points(inputs["SCORE"], self.config)
