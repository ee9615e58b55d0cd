"""The asyncio client: :class:`AsyncSegmentationClient`, with bounded-concurrency batches.

    async with AsyncSegmentationClient("127.0.0.1:8001", protocol="grpc") as client:
        results = await client.segment_many(paths, "cat; sofa, couch", concurrency=4)

It speaks tritonclient.http.aio or tritonclient.grpc.aio; requests, results, errors and the retry
policy are those of :class:`~escnet_client.sdk.SegmentationClient` (both follow
escnet_client.policy). The underlying connection is made inside the running event loop on first
use, so the client may be built outside one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from escnet_client.images import ImageInput
from escnet_client.policy import ClientPolicy
from escnet_client.result import SegmentationResult
from escnet_client.wire import DEFAULT_MODEL, prepare_request


class AsyncSegmentationClient(ClientPolicy):
    """Segment images with the ``escnet`` or ``catseg`` ensemble of a Triton server, from asyncio.

    The arguments, and what ``segment`` retries, are those of
    :class:`~escnet_client.sdk.SegmentationClient` (both follow escnet_client.policy).
    """

    _log = logging.getLogger(__name__)
    _asynchronous = True

    def _connect(self) -> Any:
        return None  # made inside the running event loop, on first use (``triton``)

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

    async def _invoke(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return await method(*args, **kwargs)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # -- health ------------------------------------------------------------------------------------

    async def is_ready(self, model: str = DEFAULT_MODEL) -> bool:
        """Server live and ``model`` ready; False when not, or when the server cannot be reached."""
        return await self._is_ready(model)

    async def check_ready(self, model: str = DEFAULT_MODEL) -> None:
        """Ask once; raise ServerUnavailable saying why the server or ``model`` is not ready."""
        await self._check_ready(model)

    async def wait_until_ready(self, timeout_s: float = 120.0, model: str = DEFAULT_MODEL) -> None:
        """Poll until the server and ``model`` are ready; ServerUnavailable with the last reason after
        ``timeout_s``."""
        await self._wait_until_ready(timeout_s, model)

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
        return await self._segment(request, use_shared_memory, started)

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
