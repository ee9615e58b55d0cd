"""LOGITS of the views -> LABELS [H, W] int32 and, only when the client asks for them, SCORES [T, H, W]."""

from __future__ import annotations

from typing import Any

import numpy as np

from escnet_export import steps
from escnet_export.contract import SCORES
from escnet_export.request_checks import check_score_budget
from escnet_export.triton_models.base import StepModel


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # T x H x W full-size scores: refused beyond the budget before they are allocated. Checked
        # here, where T and H, W meet, rather than by feeding CLASS_NAMES to preprocess: a refusal
        # there came back fast enough to hit tritonserver 2.51's gRPC/ensemble deadlock (base.py).
        height, width = int(inputs["VIEW_PLAN"][0]), int(inputs["VIEW_PLAN"][1])
        check_score_budget(height, width, inputs["LOGITS"].shape[1], self.limits)
        outputs = steps.postprocess(inputs["LOGITS"], inputs["VIEW_PLAN"])
        if SCORES.name not in request.requested_output_names():
            outputs.pop(SCORES.name)
        return outputs
