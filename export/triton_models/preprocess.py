"""IMAGE [H, W, 3] uint8 -> IMAGES [V, 3, S, S] views and VIEW_PLAN, after the image checks
(min_side, max_pixels)."""

from __future__ import annotations

from typing import Any

import numpy as np

from escnet_export import steps
from escnet_export.request_checks import check_image
from escnet_export.triton_models.base import StepModel


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_image(inputs["IMAGE"], self.limits)
        return steps.preprocess(inputs["IMAGE"], self.config)
