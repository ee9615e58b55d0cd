"""IMAGE [H, W, 3] uint8 (and CLASS_NAMES, for T) -> IMAGES [V, 3, S, S] views and VIEW_PLAN.

The image is checked first (min_side, max_pixels) and T x H x W against the score budget
(max_score_elements), so a request that would blow up postprocess's memory is refused before any
graph runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from escnet_export import steps
from escnet_export.request_checks import check_image, check_score_budget
from escnet_export.triton_models.base import StepModel


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = inputs["IMAGE"]
        check_image(image, self.limits)
        check_score_budget(image.shape[0], image.shape[1], inputs["CLASS_NAMES"].shape[0], self.limits)
        return steps.preprocess(image, self.config)
