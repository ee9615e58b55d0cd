"""What ``escnet-evaluate`` segments with: the served ensemble, or the in-process PyTorch reference.

A backend is called as ``backend(image, classes) -> labels``: image uint8 [H, W, 3] RGB, T class
names (commas = synonyms), labels [H, W] integer class indices at the image's size. Both are safe
to call from several threads: the served one keeps one SegmentationClient per thread (the HTTP
client is not thread-safe), the reference one runs one image at a time under a lock.

The reference backend imports torch and the model code only when it is built
(:meth:`ReferenceBackend.from_variant`), so ``import escnet_client`` stays light.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from escnet_client.sdk import SegmentationClient
from escnet_client.wire import DEFAULT_MODEL, DEFAULT_TIMEOUT_S


class Backend(Protocol):
    name: str

    def __call__(self, image: np.ndarray, classes: list[str]) -> np.ndarray: ...

    def close(self) -> None: ...


class ServedBackend:
    """The ``model`` ensemble of the Triton server at ``url``, one client per calling thread."""

    name = "served"

    def __init__(
        self,
        url: str | None,
        *,
        model: str = DEFAULT_MODEL,
        protocol: str = "http",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.model = model
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[SegmentationClient] = []
        self._lock = threading.Lock()

    def client(self) -> SegmentationClient:
        """This thread's client (made on first use)."""
        client: SegmentationClient | None = getattr(self._local, "client", None)
        if client is None:
            client = SegmentationClient(self.url, protocol=self.protocol, timeout_s=self.timeout_s)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def wait_until_ready(self, timeout_s: float) -> None:
        """Raise ServerUnavailable unless the server and the ensemble are ready within ``timeout_s``."""
        if timeout_s > 0:
            self.client().wait_until_ready(timeout_s, model=self.model)
        else:
            self.client().check_ready(self.model)

    def __call__(self, image: np.ndarray, classes: list[str]) -> np.ndarray:
        return self.client().segment(image, classes, model=self.model).labels  # [H, W] int32

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


class ReferenceBackend:
    """``OpenVocabSegmenter.segment`` of a built model, in this process (no server)."""

    name = "reference"

    def __init__(self, model: Any) -> None:
        self.model = model  # an escnet OpenVocabSegmenter in eval mode
        self._lock = threading.Lock()

    @classmethod
    def from_variant(
        cls,
        variant: str,
        *,
        checkpoint: str | None = None,
        clip_checkpoint: str | None = None,
        sam_checkpoint: str | None = None,
        device: str = "cpu",
    ) -> ReferenceBackend:
        """Build ``variant`` the way ``run_export`` does (seed 0; weights from the files given)."""
        from escnet.registry import build_model  # torch and the model code: only here

        model = build_model(
            variant, checkpoint=checkpoint, clip_checkpoint=clip_checkpoint, sam_checkpoint=sam_checkpoint
        )
        return cls(model.to(device))

    def __call__(self, image: np.ndarray, classes: list[str]) -> np.ndarray:
        pixels = image if image.flags.writeable else image.copy()  # torch warns on read-only arrays
        with self._lock:
            segmentation = self.model.segment(pixels, classes)
        return segmentation.labels.cpu().numpy()  # [H, W] int64

    def close(self) -> None:
        pass  # the model is freed with the backend
