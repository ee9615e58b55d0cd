"""The one policy of both clients, :class:`~escnet_client.sdk.SegmentationClient` (blocking) and
:class:`~escnet_client.async_sdk.AsyncSegmentationClient` (asyncio): their settings and the checks
on them, readiness, which failures a ``segment`` call retries (and how often, after which waits),
one request's round trip, and the shared-memory lifecycle of a request (create, register, infer,
the grace period after an error answer, unregister while the server says "in use", destroy).

It is written once, as coroutines of :class:`ClientPolicy`, over three things each client gives:
``triton`` (its tritonclient client), ``_invoke`` (make one call of it) and ``_sleep``. The asyncio
client awaits the coroutines. The blocking client runs them with :func:`run_sync`: its ``_invoke``
calls tritonclient's blocking methods and its ``_sleep`` is ``time.sleep``, so nothing in them ever
suspends and each coroutine runs to its end in one step, in the caller's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from escnet_client.errors import RequestTimeout, SegmentationError, ServerUnavailable, translate_error
from escnet_client.result import SegmentationResult, Timings
from escnet_client.shm import (
    ERROR_GRACE_S,
    UNREGISTER_POLL_S,
    UNREGISTER_WAIT_S,
    RequestRegions,
    is_in_use_error,
)
from escnet_client.wire import (
    DEFAULT_TIMEOUT_S,
    Request,
    build_tensors,
    check_protocol,
    normalize_url,
    protocol_module,
    read_result,
)

T = TypeVar("T")

POLL_S = 0.5  # between readiness probes
DEFAULT_RETRIES = 3  # further attempts of a call the server could not take (connection refused, 503)
DEFAULT_RETRY_BACKOFF_S = 0.5  # before the first retry; doubles each time, at most MAX_RETRY_WAIT_S
MAX_RETRY_WAIT_S = 8.0


def retry_waits(retries: int, backoff_s: float) -> list[float]:
    """The waits before each retry: backoff_s, 2 * backoff_s, ... capped at MAX_RETRY_WAIT_S."""
    return [min(backoff_s * 2**attempt, MAX_RETRY_WAIT_S) for attempt in range(retries)]


def is_retried(error: SegmentationError) -> bool:
    """Whether ``segment`` tries again after ``error``: the server could not be reached or answered
    "unavailable" (a restarting server). Never after a timeout (the server may still be working on
    the request) nor after a refusal or any other error answer."""
    return isinstance(error, ServerUnavailable) and not isinstance(error, RequestTimeout)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of :class:`ClientPolicy` whose client never suspends (the blocking one)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a blocking client's call suspended; it must not await anything asynchronous")


class ClientPolicy:
    """What both clients share; a subclass makes the tritonclient client and says how to call it.

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

    _log: ClassVar[logging.Logger]  # each client logs under its own module's name
    _asynchronous: ClassVar[bool]  # speaks tritonclient's aio modules

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
        self._module = protocol_module(protocol, asynchronous=self._asynchronous)
        self._closed = False
        self._client: Any = self._connect()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r})"

    # -- what a client gives -----------------------------------------------------------------------

    def _connect(self) -> Any:
        """The tritonclient InferenceServerClient, or None where it is made on first use."""
        raise NotImplementedError

    @property
    def triton(self) -> Any:
        """The underlying tritonclient InferenceServerClient."""
        raise NotImplementedError

    async def _invoke(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """One call of a method of ``triton``, its exceptions as they come."""
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    # -- health ------------------------------------------------------------------------------------

    async def _is_ready(self, model: str) -> bool:
        try:
            await self._check_ready(model)
        except SegmentationError:
            return False
        return True

    async def _check_ready(self, model: str) -> None:
        triton = self.triton
        server_ready = await self._call(triton.is_server_ready, **self._call_timeout)
        model_ready = server_ready and await self._call(triton.is_model_ready, model, **self._call_timeout)
        if not server_ready:
            raise ServerUnavailable(f"server at {self.url} is not ready")
        if not model_ready:
            raise ServerUnavailable(f"model {model!r} is not ready on the server at {self.url}")

    async def _wait_until_ready(self, timeout_s: float, model: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self._check_ready(model)
                return
            except ServerUnavailable as error:
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"not ready after {timeout_s:.0f} s: {error.message}", status=error.status
                    ) from error
            await self._sleep(POLL_S)

    # -- inference ---------------------------------------------------------------------------------

    async def _segment(
        self, request: Request, use_shared_memory: bool | None, started: float
    ) -> SegmentationResult:
        """``request`` (prepared since ``started``), retried as :func:`is_retried` says."""
        shared = self.use_shared_memory if use_shared_memory is None else use_shared_memory
        waits = retry_waits(self.retries, self.retry_backoff_s)
        for attempt in range(len(waits) + 1):
            try:
                result = await self._segment_once(request, shared, started)
                break
            except ServerUnavailable as error:
                if not is_retried(error) or attempt == len(waits):
                    raise
                self._log.warning(
                    "segment: %s; retry %d of %d in %.1f s",
                    error.message,
                    attempt + 1,
                    len(waits),
                    waits[attempt],
                )
                await self._sleep(waits[attempt])
        return replace(result, timings=replace(result.timings, total_s=time.perf_counter() - started))

    async def _segment_once(self, request: Request, shared: bool, started: float) -> SegmentationResult:
        """One attempt: the request in the message, or through shared memory regions of its own."""
        if not shared:
            return await self._infer(request, None, started)
        regions = RequestRegions.plan(request.image.shape, len(request.class_names), request.scores)
        error_answer = False  # the server answered with an error (not: could not be reached)
        try:
            regions.create(request.image)
            for region in regions.all:
                await self._call(
                    self.triton.register_system_shared_memory, region.name, region.key, region.byte_size
                )
                region.registered = True
            try:
                return await self._infer(request, regions, started)
            except SegmentationError as error:
                error_answer = not isinstance(error, ServerUnavailable)
                raise
        finally:
            await self._release(regions, error_answer)

    async def _infer(
        self, request: Request, regions: RequestRegions | None, started: float
    ) -> SegmentationResult:
        inputs, outputs = build_tensors(self._module, request, regions)
        sent = time.perf_counter()
        response = await self._call(
            self.triton.infer,
            request.model,
            inputs,
            outputs=outputs,
            headers=request.headers,
            **self._call_timeout,
        )
        answered = time.perf_counter()
        return read_result(response, request, regions, Timings(sent - started, answered - sent, 0.0))

    @property
    def _call_timeout(self) -> dict[str, float]:
        """gRPC calls take their deadline per call; the HTTP clients have theirs from construction."""
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._invoke(method, *args, **kwargs)
        except Exception as error:
            raise translate_error(error, url=self.url) from error

    # -- shared memory cleanup -----------------------------------------------------------------------

    async def _release(self, regions: RequestRegions, error_answer: bool) -> None:
        """Unregister (after the grace period that follows an error answer) and destroy the regions."""
        try:
            if error_answer and regions.image.registered:
                await self._sleep(ERROR_GRACE_S)
            for region in regions.all:
                if region.registered:
                    await self._unregister(region.name)
                    region.registered = False
        finally:
            regions.destroy()

    async def _unregister(self, name: str) -> None:
        """Unregister a region, retrying while the server says a request still uses it."""
        deadline = time.monotonic() + UNREGISTER_WAIT_S
        while True:
            try:
                await self._invoke(self.triton.unregister_system_shared_memory, name)
                return
            except Exception as error:  # the server may be gone; the local region is destroyed regardless
                if is_in_use_error(error) and time.monotonic() < deadline:
                    await self._sleep(UNREGISTER_POLL_S)
                    continue
                self._log.warning(
                    "could not unregister shared memory region %s from %s: %s", name, self.url, error
                )
                return
