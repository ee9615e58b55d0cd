"""The asyncio client: :class:`AsyncSegmentationClient`, with bounded-concurrency batches.

    async with AsyncSegmentationClient("127.0.0.1:8001", protocol="grpc") as client:
        results = await client.segment_many(paths, "cat; sofa, couch", concurrency=4)

It speaks tritonclient.http.aio or tritonclient.grpc.aio; requests, results and errors are those
of :class:`~escnet_client.sdk.SegmentationClient`. The underlying connection is made inside the
running event loop on first use, so the client may be built outside one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from escnet_client.errors import SegmentationError, ServerUnavailable, translate_error
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


class AsyncSegmentationClient:
    """Segment images with the ``escnet`` or ``catseg`` ensemble of a Triton server, from asyncio.

    url:               ``host:port``; None -> 127.0.0.1:8000 (HTTP) or 127.0.0.1:8001 (gRPC)
    protocol:          "http" or "grpc"
    timeout_s:         longest wait for one call (connection and answer)
    use_shared_memory: send IMAGE and receive LABELS / SCORES through system shared memory (the
                       server must run on this host); each ``segment`` call may override it
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str = "http",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        use_shared_memory: bool = False,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.protocol = check_protocol(protocol)
        self.url = normalize_url(url, protocol)
        self.timeout_s = float(timeout_s)
        self.use_shared_memory = use_shared_memory
        self._module = protocol_module(protocol, asynchronous=True)
        self._client: Any = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def triton(self) -> Any:
        """The underlying tritonclient aio InferenceServerClient (made on first use)."""
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._client is None:
            if self.protocol == "http":
                self._client = self._module.InferenceServerClient(url=self.url, conn_timeout=self.timeout_s)
            else:
                self._client = self._module.InferenceServerClient(url=self.url)
        return self._client

    async def close(self) -> None:
        """Release the connections."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncSegmentationClient(url={self.url!r}, protocol={self.protocol!r})"

    # -- health ------------------------------------------------------------------------------------

    async def is_ready(self, model: str = DEFAULT_MODEL) -> bool:
        """Server live and ``model`` ready; False when not, or when the server cannot be reached."""
        try:
            await self.check_ready(model)
        except SegmentationError:
            return False
        return True

    async def check_ready(self, model: str = DEFAULT_MODEL) -> None:
        """Ask once; raise ServerUnavailable saying why the server or ``model`` is not ready."""
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        server_ready = await self._call(self.triton.is_server_ready, **timeout)
        model_ready = server_ready and await self._call(self.triton.is_model_ready, model, **timeout)
        if not server_ready:
            raise ServerUnavailable(f"server at {self.url} is not ready")
        if not model_ready:
            raise ServerUnavailable(f"model {model!r} is not ready on the server at {self.url}")

    async def wait_until_ready(self, timeout_s: float = 120.0, model: str = DEFAULT_MODEL) -> None:
        """Poll until the server and ``model`` are ready; ServerUnavailable with the last reason after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.check_ready(model)
                return
            except ServerUnavailable as error:
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"not ready after {timeout_s:.0f} s: {error.message}", status=error.status
                    ) from error
            await asyncio.sleep(_POLL_S)

    # -- inference ---------------------------------------------------------------------------------

    async def segment(
        self,
        image: ImageInput,
        classes: str | list[str] | tuple[str, ...],
        *,
        scores: bool = False,
        model: str = DEFAULT_MODEL,
        use_shared_memory: bool | None = None,
    ) -> SegmentationResult:
        """Segment one image into ``classes``; see :meth:`SegmentationClient.segment`.

        Returns labels [H, W] int32 (and scores [T, H, W] float32 when asked for).
        """
        started = time.perf_counter()
        # Decoding a large image takes a while: keep it off the event loop.
        request = await asyncio.to_thread(prepare_request, image, classes, scores=scores, model=model)
        shared = self.use_shared_memory if use_shared_memory is None else use_shared_memory
        if not shared:
            result = await self._infer(request, None, started)
        else:
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
                    result = await self._infer(request, regions, started)
                except SegmentationError as error:
                    error_answer = not isinstance(error, ServerUnavailable)
                    raise
            finally:
                await self._release(regions, error_answer)
        return replace(result, timings=replace(result.timings, total_s=time.perf_counter() - started))

    async def segment_many(
        self,
        images: Sequence[ImageInput],
        classes: str | list[str] | tuple[str, ...],
        *,
        concurrency: int = 4,
        progress: bool = True,
        scores: bool = False,
        model: str = DEFAULT_MODEL,
        use_shared_memory: bool | None = None,
    ) -> list[SegmentationResult]:
        """Segment every image into the same ``classes``, at most ``concurrency`` requests in flight.

        Results come in the order of ``images``. A tqdm bar on stderr counts finished images
        (``progress=False`` hides it). The first failure cancels the requests still waiting or in
        flight (their shared memory regions are still cleaned up) and is raised.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        images = list(images)
        limit = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(images), desc=f"segment ({model})", unit="image", disable=not progress)

        async def one(image: ImageInput) -> SegmentationResult:
            async with limit:
                result = await self.segment(
                    image, classes, scores=scores, model=model, use_shared_memory=use_shared_memory
                )
            bar.update(1)
            return result

        tasks = [asyncio.ensure_future(one(image)) for image in images]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()

    async def _infer(
        self, request: Request, regions: RequestRegions | None, started: float
    ) -> SegmentationResult:
        inputs, outputs = build_tensors(self._module, request, regions)
        sent = time.perf_counter()
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        response = await self._call(self.triton.infer, request.model, inputs, outputs=outputs, **timeout)
        answered = time.perf_counter()
        return read_result(response, request, regions, Timings(sent - started, answered - sent, 0.0))

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except Exception as error:
            raise translate_error(error, url=self.url) from error

    async def _release(self, regions: RequestRegions, error_answer: bool) -> None:
        """Unregister (after the grace period that follows an error answer) and destroy the regions."""
        try:
            if error_answer and regions.image.registered:
                await asyncio.sleep(ERROR_GRACE_S)
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
                await self.triton.unregister_system_shared_memory(name)
                return
            except Exception as error:  # the server may be gone; the local region is destroyed regardless
                if is_in_use_error(error) and time.monotonic() < deadline:
                    await asyncio.sleep(UNREGISTER_POLL_S)
                    continue
                log.warning("could not unregister shared memory region %s from %s: %s", name, self.url, error)
                return
