"""IMAGE [H, W, 3] uint8 -> IMAGES [V, 3, S, S] views and VIEW_PLAN, with the pixel budget check."""

from __future__ import annotations

from typing import Any

import numpy as np

from escnet_export import steps
from escnet_export.triton_models.base import RequestError, StepModel

MAX_PIXELS = 8192 * 8192  # a larger image is refused, not resized into memory trouble


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = inputs["IMAGE"]
        if image.ndim == 3 and image.shape[0] * image.shape[1] > MAX_PIXELS:
            raise RequestError(
                f"image of {image.shape[0]}x{image.shape[1]} pixels exceeds the limit of {MAX_PIXELS}"
            )
        return steps.preprocess(image, self.config)
