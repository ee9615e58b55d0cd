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
from typing import Any

from escnet_client.images import ImageInput
from escnet_client.policy import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF_S,
    MAX_RETRY_WAIT_S,
    ClientPolicy,
    retry_waits,
    run_sync,
)
from escnet_client.result import SegmentationResult
from escnet_client.wire import DEFAULT_MODEL, prepare_request

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_BACKOFF_S",
    "MAX_RETRY_WAIT_S",
    "SegmentationClient",
    "retry_waits",
]


class SegmentationClient(ClientPolicy):
    """Segment images with the ``escnet`` or ``catseg`` ensemble of a Triton server.

    Its arguments (url, protocol, timeout_s, use_shared_memory, retries, retry_backoff_s) and what
    ``segment`` retries are those of :class:`~escnet_client.policy.ClientPolicy`, described there;
    the asyncio client shares them.
    """

    _log = logging.getLogger(__name__)
    _asynchronous = False

    def _connect(self) -> Any:
        if self.protocol == "http":
            return self._module.InferenceServerClient(
                url=self.url, connection_timeout=min(self.timeout_s, 30.0), network_timeout=self.timeout_s
            )
        return self._module.InferenceServerClient(url=self.url)

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

    @property
    def triton(self) -> Any:
        """The underlying tritonclient InferenceServerClient (statistics, shared memory status, ...)."""
        return self._client

    async def _invoke(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)  # blocks: the policy's coroutines never suspend (run_sync)

    async def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- health ------------------------------------------------------------------------------------

    def is_ready(self, model: str = DEFAULT_MODEL) -> bool:
        """Server live and ``model`` ready; False when not, or when the server cannot be reached."""
        return run_sync(self._is_ready(model))

    def check_ready(self, model: str = DEFAULT_MODEL) -> None:
        """Ask once; raise ServerUnavailable saying why the server or ``model`` is not ready."""
        run_sync(self._check_ready(model))

    def wait_until_ready(self, timeout_s: float = 120.0, model: str = DEFAULT_MODEL) -> None:
        """Poll until the server and ``model`` are ready; ServerUnavailable with the last reason after
        ``timeout_s``."""
        run_sync(self._wait_until_ready(timeout_s, model))

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
        return run_sync(self._segment(request, use_shared_memory, started))
