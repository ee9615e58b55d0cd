"""SCORE [B, T, G, G] -> POINTS, POINT_LABELS, PSEUDO_MASK: pseudo prompts for all classes at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from escnet_export.runtime import steps
from escnet_export.triton_serving.step_models.base import StepModel


class TritonPythonModel(StepModel):
    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return steps.pseudo_points(inputs["SCORE"], self.config)
