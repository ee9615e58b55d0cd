"""What goes over the wire, the same for HTTP and gRPC, sync and asyncio: the server address, the
request's tensors (in the message or in shared memory) and the arrays of the answer.

Tensor names, dtypes and shapes come from the deployment's contract (``escnet_export.contract``):
IMAGE uint8 [H, W, 3] and CLASS_NAMES bytes [T] in; LABELS int32 [H, W] and, only when asked for,
SCORES float32 [T, H, W] out.
"""

from __future__ import annotations

import hashlib
import importlib
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from escnet_client.classes import parse_classes
from escnet_client.errors import SegmentationError
from escnet_client.images import ImageInput, load_image
from escnet_client.result import SegmentationResult, Timings
from escnet_client.shm import RequestRegions
from escnet_export.contract import CLASS_NAMES, IMAGE, LABELS, SCORES

PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MODEL = "escnet"
DEFAULT_TIMEOUT_S = 300.0  # one request: a large image with many classes takes minutes on a CPU
_SCHEMES = ("http://", "https://", "grpc://")
# Sent with every request: a key of its vocabulary, for an L7 proxy to route the same vocabulary to
# the same replica, whose text cache holds it (README, Load balancing). Servers ignore it.
VOCABULARY_HEADER = "escnet-vocabulary"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol


def normalize_url(url: str | None, protocol: str) -> str:
    """``host:port`` as tritonclient takes it: None -> 127.0.0.1 and the protocol's default port;
    a scheme (http://, grpc://) and a trailing slash are dropped; a missing port is the default."""
    check_protocol(protocol)
    if url is None or not url.strip():
        return f"{DEFAULT_HOST}:{DEFAULT_PORTS[protocol]}"
    address = url.strip()
    for scheme in _SCHEMES:
        if address.startswith(scheme):
            address = address[len(scheme) :]
    address = address.rstrip("/")
    host_part = address.rsplit("]", 1)[-1]  # an IPv6 literal "[::1]:8000" holds colons
    if ":" not in host_part:
        address = f"{address}:{DEFAULT_PORTS[protocol]}"
    return address


def protocol_module(protocol: str, *, asynchronous: bool = False) -> types.ModuleType:
    """tritonclient.http / .grpc, or their asyncio variants (.http.aio / .grpc.aio)."""
    name = f"tritonclient.{check_protocol(protocol)}" + (".aio" if asynchronous else "")
    return importlib.import_module(name)


@dataclass(frozen=True)
class Request:
    """One request, checked and ready to send.

    image:       [H, W, 3] uint8 RGB
    class_names: the T class names
    """

    image: np.ndarray
    class_names: list[str]
    scores: bool
    model: str

    @property
    def headers(self) -> dict[str, str]:
        """The request's HTTP headers (gRPC metadata): its :func:`vocabulary_key`."""
        return {VOCABULARY_HEADER: vocabulary_key(self.class_names)}


def vocabulary_key(class_names: list[str]) -> str:
    """16 hex digits naming a set of class names: the same names in any order give the same key."""
    text = "\n".join(sorted(set(class_names)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prepare_request(image: ImageInput, classes: Any, *, scores: bool, model: str) -> Request:
    """Load and check the image and the classes before anything is sent (ValueError / TypeError)."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a model name such as {DEFAULT_MODEL!r}, got {model!r}")
    return Request(
        image=load_image(image), class_names=parse_classes(classes), scores=bool(scores), model=model
    )


def build_tensors(
    module: types.ModuleType, request: Request, regions: RequestRegions | None
) -> tuple[list[Any], list[Any]]:
    """The InferInputs and InferRequestedOutputs of ``module`` (tritonclient.http or .grpc; their
    aio variants use the same classes) for a request, with ``regions`` when in shared memory."""
    image_input = module.InferInput(IMAGE.name, list(request.image.shape), IMAGE.dtype)
    if regions is None:
        image_input.set_data_from_numpy(request.image)
    else:
        image_input.set_shared_memory(regions.image.name, regions.image.byte_size)
    names = np.array([name.encode("utf-8") for name in request.class_names], dtype=np.object_)  # [T]
    names_input = module.InferInput(CLASS_NAMES.name, [len(request.class_names)], CLASS_NAMES.dtype)
    names_input.set_data_from_numpy(names)

    wanted = [LABELS.name, *([SCORES.name] if request.scores else [])]
    outputs = []
    for name in wanted:
        output = module.InferRequestedOutput(name)
        if regions is not None:
            output.set_shared_memory(regions.outputs[name].name, regions.outputs[name].byte_size)
        outputs.append(output)
    return [image_input, names_input], outputs


def read_result(
    response: Any, request: Request, regions: RequestRegions | None, timings: Timings
) -> SegmentationResult:
    """LABELS [H, W] int32 (and SCORES [T, H, W] float32) of a response, checked against the request."""
    height, width = request.image.shape[:2]
    num_classes = len(request.class_names)
    labels = _output(response, LABELS.name, np.int32, regions)
    if labels.shape != (height, width):
        raise SegmentationError(
            f"the server sent LABELS of shape {list(labels.shape)}, expected [{height}, {width}]"
        )
    scores = None
    if request.scores:
        scores = _output(response, SCORES.name, np.float32, regions)
        if scores.shape != (num_classes, height, width):
            raise SegmentationError(
                f"the server sent SCORES of shape {list(scores.shape)}, "
                f"expected [{num_classes}, {height}, {width}]"
            )
    return SegmentationResult(
        labels=labels.astype(np.int32, copy=False),
        class_names=list(request.class_names),
        scores=None if scores is None else scores.astype(np.float32, copy=False),
        timings=timings,
        model=request.model,
    )


def _output(response: Any, name: str, dtype: type, regions: RequestRegions | None) -> np.ndarray:
    if regions is None:
        array = response.as_numpy(name)
        if array is None:
            raise SegmentationError(f"the server's answer has no {name}")
        return array
    meta = response.get_output(name)
    if meta is None:
        raise SegmentationError(f"the server's answer has no {name}")
    shape = [int(d) for d in (meta["shape"] if isinstance(meta, dict) else meta.shape)]
    return regions.read(name, dtype, shape)
