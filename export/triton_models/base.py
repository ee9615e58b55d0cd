"""What every Python-backend step shares: reading its config, answering each request on its own.

A request that fails gets an error response naming the step and the problem; the other requests
of the batch, and the server, carry on.

Error responses leave ERROR_RESPONSE_DELAY_S after the failure, not at once. tritonserver 2.51
deadlocks when an ensemble step answers with an error while the gRPC frontend is still handing the
same request's first steps to their models: the frontend thread holds the request's lock and waits
for the ensemble's, the step's thread holds the ensemble's and waits for the request's (seen here
with gdb on a hung server: an empty image refused by preprocess over gRPC; every later escnet
request then hung, catseg's kept answering). HTTP has no such lock. Refusals by the first steps
(preprocess, text_embedder) are the ones that come back that fast; the delay keeps them out of
that window, at the cost of a slower error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from escnet.config import MODEL_CONFIGS, ModelConfig, resolve_protocol
from escnet_export.contract import RequestLimits, StepSpec, step_specs
from escnet_export.request_checks import RequestError

__all__ = ["ERROR_RESPONSE_DELAY_S", "RequestError", "StepModel"]

ERROR_RESPONSE_DELAY_S = 0.25  # see the module docstring: tritonserver 2.51's gRPC/ensemble deadlock


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
        # The inference protocol the repository was built with (build_repository --protocol).
        protocol = resolve_protocol(self.parameters["protocol"], self.parameters["synonyms"])
        self.config = MODEL_CONFIGS[self.parameters["variant"]].with_protocol(protocol)
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
        responses = [self._answer(request, self.run) for request in requests]
        if any(response.has_error() for response in responses):
            time.sleep(ERROR_RESPONSE_DELAY_S)
        return responses

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
