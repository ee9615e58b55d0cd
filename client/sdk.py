"""The synchronous client: :class:`SegmentationClient`, one interface over Triton's HTTP and gRPC.

    with SegmentationClient("127.0.0.1:8000") as client:
        client.wait_until_ready(timeout_s=120)
        result = client.segment("photo.jpg", "cat; sofa, couch; floor")
        print(result.class_shares())

Every failure of a request comes out as a :class:`~escnet_client.errors.SegmentationError`
(:class:`ServerUnavailable` or :class:`BadRequest`) carrying the server's message; problems found
before sending (an unreadable image, a wrong array, an empty class list) are ValueError / TypeError.
The HTTP client is not thread-safe: use one client per thread, or the asyncio client.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from escnet_client.errors import RequestTimeout, SegmentationError, ServerUnavailable, translate_error
from escnet_client.images import ImageInput
from escnet_client.result import SegmentationResult, Timings
from escnet_client.shm import (
    ERROR_GRACE_S,
    UNREGISTER_POLL_S,
    UNREGISTER_WAIT_S,
    RequestRegions,
    is_in_use_error,
)
from escnet_client.wire import (
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT_S,
    Request,
    build_tensors,
    check_protocol,
    normalize_url,
    prepare_request,
    protocol_module,
    read_result,
)

log = logging.getLogger(__name__)

_POLL_S = 0.5  # between readiness probes
DEFAULT_RETRIES = 3  # further attempts of a call the server could not take (connection refused, 503)
DEFAULT_RETRY_BACKOFF_S = 0.5  # before the first retry; doubles each time, at most MAX_RETRY_WAIT_S
MAX_RETRY_WAIT_S = 8.0


def retry_waits(retries: int, backoff_s: float) -> list[float]:
    """The waits before each retry: backoff_s, 2 * backoff_s, ... capped at MAX_RETRY_WAIT_S."""
    return [min(backoff_s * 2**attempt, MAX_RETRY_WAIT_S) for attempt in range(retries)]


class SegmentationClient:
    """Segment images with the ``escnet`` or ``catseg`` ensemble of a Triton server.

    url:               ``host:port``; None -> 127.0.0.1:8000 (HTTP) or 127.0.0.1:8001 (gRPC)
    protocol:          "http" or "grpc"
    timeout_s:         longest wait for one call (connection and answer)
    use_shared_memory: send IMAGE and receive LABELS / SCORES through system shared memory (the
                       server must run on this host); each ``segment`` call may override it. The
                       regions are always removed: after an error answer the client waits
                       ERROR_GRACE_S first, after a timeout until the server lets them go (see
                       escnet_client.shm)
    retries:           how many more times ``segment`` is tried when the server cannot be reached or
                       answers "unavailable" (a restarting server); never after a timeout (the server
                       may still be working) nor after a refusal. Segmenting is idempotent.
    retry_backoff_s:   wait before the first retry, doubled before each next (at most 8 s)
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str = "http",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        use_shared_memory: bool = False,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0 or retry_backoff_s < 0:
            raise ValueError(f"retries and retry_backoff_s must be >= 0, got {retries}, {retry_backoff_s}")
        self.retries = int(retries)
        self.retry_backoff_s = float(retry_backoff_s)
        self.protocol = check_protocol(protocol)
        self.url = normalize_url(url, protocol)
        self.timeout_s = float(timeout_s)
        self.use_shared_memory = use_shared_memory
        self._module = protocol_module(protocol)
        if protocol == "http":
            self._client = self._module.InferenceServerClient(
                url=self.url, connection_timeout=min(self.timeout_s, 30.0), network_timeout=self.timeout_s
            )
        else:
            self._client = self._module.InferenceServerClient(url=self.url)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connections (an open HTTP connection keeps a stopping server waiting)."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SegmentationClient(url={self.url!r}, protocol={self.protocol!r})"

    @property
    def triton(self) -> Any:
        """The underlying tritonclient InferenceServerClient (statistics, shared memory status, ...)."""
        return self._client

    # -- health ------------------------------------------------------------------------------------

    def is_ready(self, model: str = DEFAULT_MODEL) -> bool:
        """Server live and ``model`` ready; False when not, or when the server cannot be reached."""
        try:
            self.check_ready(model)
        except SegmentationError:
            return False
        return True

    def check_ready(self, model: str = DEFAULT_MODEL) -> None:
        """Ask once; raise ServerUnavailable saying why the server or ``model`` is not ready."""
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            server_ready = self._client.is_server_ready(**timeout)
            model_ready = server_ready and self._client.is_model_ready(model, **timeout)
        except Exception as error:
            raise translate_error(error, url=self.url) from error
        if not server_ready:
            raise ServerUnavailable(f"server at {self.url} is not ready")
        if not model_ready:
            raise ServerUnavailable(f"model {model!r} is not ready on the server at {self.url}")

    def wait_until_ready(self, timeout_s: float = 120.0, model: str = DEFAULT_MODEL) -> None:
        """Poll until the server and ``model`` are ready; ServerUnavailable with the last reason after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.check_ready(model)
                return
            except ServerUnavailable as error:
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"not ready after {timeout_s:.0f} s: {error.message}", status=error.status
                    ) from error
            time.sleep(_POLL_S)

    # -- inference ---------------------------------------------------------------------------------

    def segment(
        self,
        image: ImageInput,
        classes: str | list[str] | tuple[str, ...],
        *,
        scores: bool = False,
        model: str = DEFAULT_MODEL,
        use_shared_memory: bool | None = None,
    ) -> SegmentationResult:
        """Segment one image into ``classes``.

        image:   a path, encoded bytes, a PIL image or a uint8 [H, W, 3] RGB array
        classes: a list of names, or one string with classes separated by ';' ("cat; sofa, couch");
                 a comma inside a name lists synonyms of one class
        scores:  also return SCORES [T, H, W] float32
        Returns labels [H, W] int32 at the image's size. Raises ValueError / TypeError before
        sending, SegmentationError (BadRequest, ServerUnavailable) for what the server answers.
        """
        started = time.perf_counter()
        request = prepare_request(image, classes, scores=scores, model=model)
        shared = self.use_shared_memory if use_shared_memory is None else use_shared_memory
        waits = retry_waits(self.retries, self.retry_backoff_s)
        for attempt in range(len(waits) + 1):
            try:
                result = self._segment_once(request, shared, started)
                break
            except RequestTimeout:
                raise
            except ServerUnavailable as error:
                if attempt == len(waits):
                    raise
                log.warning(
                    "segment: %s; retry %d of %d in %.1f s",
                    error.message,
                    attempt + 1,
                    len(waits),
                    waits[attempt],
                )
                time.sleep(waits[attempt])
        return replace(result, timings=replace(result.timings, total_s=time.perf_counter() - started))

    def _segment_once(self, request: Request, shared: bool, started: float) -> SegmentationResult:
        """One attempt: the request in the message, or through shared memory regions of its own."""
        if not shared:
            return self._infer(request, None, started)
        regions = RequestRegions.plan(request.image.shape, len(request.class_names), request.scores)
        error_answer = False  # the server answered with an error (not: could not be reached)
        try:
            regions.create(request.image)
            for region in regions.all:
                self._call(
                    self._client.register_system_shared_memory, region.name, region.key, region.byte_size
                )
                region.registered = True
            try:
                return self._infer(request, regions, started)
            except SegmentationError as error:
                error_answer = not isinstance(error, ServerUnavailable)
                raise
        finally:
            self._release(regions, error_answer)

    def _infer(self, request: Request, regions: RequestRegions | None, started: float) -> SegmentationResult:
        inputs, outputs = build_tensors(self._module, request, regions)
        sent = time.perf_counter()
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        response = self._call(self._client.infer, request.model, inputs, outputs=outputs, **timeout)
        answered = time.perf_counter()
        return read_result(response, request, regions, Timings(sent - started, answered - sent, 0.0))

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as error:
            raise translate_error(error, url=self.url) from error

    def _release(self, regions: RequestRegions, error_answer: bool) -> None:
        """Unregister (after the grace period that follows an error answer) and destroy the regions."""
        try:
            if error_answer and regions.image.registered:
                time.sleep(ERROR_GRACE_S)
            for region in regions.all:
                if region.registered:
                    self._unregister(region.name)
                    region.registered = False
        finally:
            regions.destroy()

    def _unregister(self, name: str) -> None:
        """Unregister a region, retrying while the server says a request still uses it."""
        deadline = time.monotonic() + UNREGISTER_WAIT_S
        while True:
            try:
                self._client.unregister_system_shared_memory(name)
                return
            except Exception as error:  # the server may be gone; the local region is destroyed regardless
                if is_in_use_error(error) and time.monotonic() < deadline:
                    time.sleep(UNREGISTER_POLL_S)
                    continue
                log.warning("could not unregister shared memory region %s from %s: %s", name, self.url, error)
                return
