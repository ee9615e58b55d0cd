"""LOGITS of the views -> LABELS [H, W] int32 and, only when the client asks for them, SCORES [T, H, W].

The score budget (T x H x W) was checked by preprocess, before any work. With device tensors
(base.py) the torch step runs on LOGITS' device; otherwise the numpy step."""

from __future__ import annotations

from typing import Any

from escnet_export.contract import SCORES
from escnet_export.runtime import steps
from escnet_export.triton_serving.step_models.base import StepModel


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.device_tensors:
            from escnet_export.runtime import torch_steps  # imports torch: the device path only

            outputs = torch_steps.postprocess(inputs["LOGITS"], inputs["VIEW_PLAN"])
        else:
            outputs = steps.postprocess(inputs["LOGITS"], inputs["VIEW_PLAN"])
        if SCORES.name not in request.requested_output_names():
            outputs.pop(SCORES.name)
        return outputs
