"""What every Python-backend step shares: reading its config, answering each request on its own.

A request that fails gets an error response naming the step and the problem; the other requests
of the batch, and the server, carry on. The error's code tells the client whose fault it was:
INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400) for a refused request (:class:`RequestError`),
UNAVAILABLE (503) when the step ran out of memory, CANCELLED when the client gave up before the
step began (the step does no work then), INTERNAL (500) for anything else, a fault of ours.

Device tensors. A step whose config sets FORCE_CPU_ONLY_INPUT_TENSORS to "no" (the steps that read
the graphs' outputs, on a runtime whose graphs run on a GPU: triton_serving.configs) is handed its
inputs where they lie, on the GPU or on the CPU. That same parameter turns on ``device_tensors``,
the one switch of this module: the step reads its inputs as torch tensors through DLPack (no copy,
on their device) and answers with torch tensors the same way. BYTES inputs, which DLPack cannot
carry, are still read with as_numpy(). Without the parameter (or with "yes", Triton's default) the
inputs come on the CPU, and the step reads and writes numpy only and never imports torch (~1 GiB in
each step process: README, Memory).

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

import contextlib
import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from escnet.config import MODEL_CONFIGS, ModelConfig, resolve_protocol
from escnet_export.contract import RequestLimits, StepSpec, step_specs
from escnet_export.runtime.request_checks import RequestCancelled, RequestError
from escnet_export.triton_serving.step_models.metrics import StepMetrics

__all__ = ["DEVICE_TENSORS_PARAMETER", "ERROR_RESPONSE_DELAY_S", "RequestError", "StepModel"]

ERROR_RESPONSE_DELAY_S = 0.25  # see the module docstring: tritonserver 2.51's gRPC/ensemble deadlock
# The Python backend's own parameter: "no" hands the step its inputs on the device they lie on.
DEVICE_TENSORS_PARAMETER = "FORCE_CPU_ONLY_INPUT_TENSORS"


def _libc_malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None


_MALLOC_TRIM = _libc_malloc_trim()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says an allocation failed: numpy's MemoryError, torch's OutOfMemoryError
    (a GPU allocation), or the RuntimeError of torch's CPU allocator. torch is looked for only where
    a step has imported it already."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def give_memory_back() -> None:
    """After each batch of requests, hand the allocator's free memory back to the system (glibc's
    malloc_trim): a T=150 request's freed tensors otherwise stay in the step's heap. Off with
    ESCNET_MALLOC_TRIM=0 (README, Memory, measures both)."""
    if _MALLOC_TRIM is not None and os.environ.get("ESCNET_MALLOC_TRIM", "1") != "0":
        _MALLOC_TRIM(0)


class StepModel:
    """Base of the Python-backend models: subclasses implement ``run(request, inputs) -> outputs``."""

    model_name: str
    config: ModelConfig
    step: StepSpec
    parameters: dict[str, str]
    limits: RequestLimits  # from the config's parameters (the edge steps have them)
    cancelled_requests: int = 0  # requests answered CANCELLED without running
    metrics: StepMetrics | None = None
    # Inputs and outputs as torch tensors through DLPack, not numpy arrays (the module docstring):
    # on where the config sets FORCE_CPU_ONLY_INPUT_TENSORS to "no".
    device_tensors: bool = False

    def initialize(self, args: dict[str, Any]) -> None:
        model_config = json.loads(args["model_config"])
        self.model_name = model_config["name"]
        self.parameters = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        # The inference protocol the repository was built with (build_repository --protocol).
        protocol = resolve_protocol(self.parameters["protocol"], self.parameters["synonyms"])
        self.config = MODEL_CONFIGS[self.parameters["variant"]].with_protocol(protocol)
        self.step = step_specs(self.config)[self.parameters["step"]]
        self.limits = RequestLimits.from_parameters(self.parameters)
        self.device_tensors = self.parameters.get(DEVICE_TENSORS_PARAMETER) == "no"
        self.model_directory = f"{args['model_repository']}/{args['model_version']}"
        self.metrics = StepMetrics.create(self.model_name)  # on Triton's /metrics (metrics.py)
        if self.device_tensors and args.get("model_instance_kind") == "GPU":
            import torch  # the device path only

            # What the step allocates goes to its instance's GPU, where its inputs come from.
            torch.cuda.set_device(int(args["model_instance_device_id"]))
        try:
            self.setup(args)
        except Exception as error:  # the load fails; say which model, which folder and what to do
            raise RuntimeError(
                f"{self.model_name}: could not load from {self.model_directory}: "
                f"{type(error).__name__}: {error}. If a graph file (model.onnx) is missing or corrupt, "
                f"re-export it (python -m escnet_export.onnx_graphs.export --variant {self.config.name}) and "
                "rebuild the repository (python -m escnet_export.triton_serving.repository)"
            ) from error

    def setup(self, args: dict[str, Any]) -> None:
        """Load what the step needs once (graphs, tokenizers)."""

    def run(self, request: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The step's outputs by name. ``inputs`` are numpy arrays, or torch tensors where
        :attr:`device_tensors` is on (BYTES inputs stay numpy); outputs may be either."""
        raise NotImplementedError

    def read_inputs(self, request: Any) -> dict[str, Any]:
        inputs = {}
        for spec in self.step.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise RequestError(f"missing input {spec.name}", "missing_input")
            if self.device_tensors and spec.dtype != "BYTES":  # DLPack has no string type
                import torch  # the device path only

                inputs[spec.name] = torch.from_dlpack(tensor.to_dlpack())
            else:
                inputs[spec.name] = tensor.as_numpy()
        return inputs

    def output_tensors(self, outputs: dict[str, Any]) -> list[Any]:
        """pb_utils tensors of the outputs: numpy arrays by value, torch tensors through DLPack, on
        their device (DLPack takes only C-contiguous tensors)."""
        tensors = []
        on_gpu = [value for value in outputs.values() if not isinstance(value, np.ndarray) and value.is_cuda]
        if on_gpu:
            import torch  # the device path only

            # The step's kernels are done before Triton, on a stream of its own, reads their outputs.
            torch.cuda.synchronize(on_gpu[0].device)
        for name, value in outputs.items():
            if isinstance(value, np.ndarray):
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(value)))
            else:
                tensors.append(pb_utils.Tensor.from_dlpack(name, value.contiguous()))
        return tensors

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            start = time.perf_counter()
            response = self._cancelled(request) if request.is_cancelled() else self._answer(request, self.run)
            if self.metrics is not None:
                self.metrics.answered(response, time.perf_counter() - start)
            responses.append(response)
        give_memory_back()
        if self.metrics is not None:
            self.metrics.batch_done()
        if any(response.has_error() for response in responses):
            time.sleep(ERROR_RESPONSE_DELAY_S)
        return responses

    def _answer(self, request: Any, run: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> Any:
        try:
            outputs = run(request, self.read_inputs(request))
            return pb_utils.InferenceResponse(output_tensors=self.output_tensors(outputs))
        except RequestError as error:
            if self.metrics is not None:
                self.metrics.refused(error.reason)
            return self._error(f"bad request: {error}", pb_utils.TritonError.INVALID_ARG)
        except RequestCancelled as error:
            self.cancelled_requests += 1
            return self._error(str(error), pb_utils.TritonError.CANCELLED)
        except Exception as error:  # one request's failure must not take down the others
            if is_out_of_memory(error):
                return self._error(
                    f"out of memory ({error or 'allocation failed'}): send fewer classes or a smaller "
                    "image, or retry when the server is less busy",
                    pb_utils.TritonError.UNAVAILABLE,
                )
            return self._error(f"{type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL)

    def _error(self, message: str, code: int) -> Any:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.model_name}: {message}", code))

    def _cancelled(self, request: Any) -> Any:
        """The client gave up (timeout, disconnect, cancel): answer at once, run nothing."""
        self.cancelled_requests += 1
        return self._error("request cancelled by the client; not run", pb_utils.TritonError.CANCELLED)

    def finalize(self) -> None:
        pass
