"""A built TensorRT plan, checked and loaded, behind the runner interface of runtime/runners.py.

``load_engine`` refuses a plan that plans.check_plan refuses, then deserializes it; ``TrtRunner``
runs it through Polygraphy's TensorRT runner. TensorRT and Polygraphy are imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from escnet_export.contract import StepSpec
from escnet_export.engines.plans import PlanMetadata, PlanMismatch, check_plan, require_tensorrt
from escnet_export.runtime.runners import validate_feeds

if TYPE_CHECKING:
    import tensorrt as trt


def load_engine(plan_path: Path, metadata: PlanMetadata | None = None, **check: Any) -> trt.ICudaEngine:
    """Check a plan (check_plan) and deserialize it."""
    require_tensorrt()
    import tensorrt as trt

    check_plan(plan_path, metadata, **check)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise PlanMismatch(f"{plan_path}: TensorRT could not deserialize the plan")
    return engine


class TrtRunner:
    """A built engine behind the runner interface of runners.py (``infer(feeds) -> outputs``), run
    through Polygraphy's TensorRT runner."""

    def __init__(self, step: StepSpec, plan_path: Path, **check: Any) -> None:
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

        self.step = step
        self._runner = PolygraphyTrtRunner(load_engine(plan_path, **check))
        self._runner.activate()

    def infer(self, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        validate_feeds(self.step, feeds)
        outputs = self._runner.infer({n: feeds[n] for n in self.step.input_names}, copy_outputs_to_host=True)
        return {name: np.asarray(outputs[name]) for name in self.step.output_names}

    def close(self) -> None:
        self._runner.deactivate()
