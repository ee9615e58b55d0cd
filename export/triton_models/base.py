"""What every Python-backend step shares: reading its config, answering each request on its own.

A request that fails gets an error response naming the step and the problem; the other requests
of the batch, and the server, carry on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from escnet.config import MODEL_CONFIGS, ModelConfig
from escnet_export.contract import RequestLimits, StepSpec, step_specs
from escnet_export.request_checks import RequestError

__all__ = ["RequestError", "StepModel"]


class StepModel:
    """Base of the Python-backend models: subclasses implement ``run(request, inputs) -> outputs``."""

    model_name: str
    config: ModelConfig
    step: StepSpec
    parameters: dict[str, str]
    limits: RequestLimits  # from the config's parameters (the edge steps have them)

    def initialize(self, args: dict[str, Any]) -> None:
        model_config = json.loads(args["model_config"])
        self.model_name = model_config["name"]
        self.parameters = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        self.config = MODEL_CONFIGS[self.parameters["variant"]]
        self.step = step_specs(self.config)[self.parameters["step"]]
        self.limits = RequestLimits.from_parameters(self.parameters)
        self.model_directory = f"{args['model_repository']}/{args['model_version']}"
        try:
            self.setup(args)
        except Exception as error:  # the load fails; say which model, which folder and what to do
            raise RuntimeError(
                f"{self.model_name}: could not load from {self.model_directory}: "
                f"{type(error).__name__}: {error}. If a graph file (model.onnx) is missing or corrupt, "
                f"re-export it (python -m escnet_export.run_export --variant {self.config.name}) and "
                "rebuild the repository (python -m escnet_export.build_repository)"
            ) from error

    def setup(self, args: dict[str, Any]) -> None:
        """Load what the step needs once (graphs, tokenizers)."""

    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        inputs = {}
        for name in self.step.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"missing input {name}")
            inputs[name] = tensor.as_numpy()
        return inputs

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request, self.run) for request in requests]

    def _answer(
        self, request: Any, run: Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]
    ) -> Any:
        try:
            outputs = run(request, self.read_inputs(request))
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()]
            return pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as error:  # one request's failure must not take down the others
            kind = "bad request" if isinstance(error, RequestError | ValueError) else type(error).__name__
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"{self.model_name}: {kind}: {error}")
            )

    def finalize(self) -> None:
        pass
