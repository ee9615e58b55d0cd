"""A bounded soak of the session's tritonserver: concurrent clients mixing good and bad requests.

For ``SOAK_S`` seconds (default 60; ``ESCNET_SOAK_S`` changes it) ``CLIENTS`` threads, each with
its own HTTP or gRPC client, send small images (128-256 px) with 2-3 classes to both ensembles;
every third request, starting with the first, is a bad one, and half the good ones carry a class
name never seen before, so the text embedder's cache keeps growing and encoding. Passes when no
good request failed, every bad one was refused with its message, the server stayed ready, and the
resident memory of the server and its Python stubs grew by at most ``MAX_RSS_GROWTH`` from after
the warm-up to the end.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402
from triton_fixtures import CLIENT_TIMEOUT_S  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

from escnet_export.contract import CLASS_NAMES, IMAGE, LABELS, MAX_CLASSES, REQUEST_LIMITS  # noqa: E402

pytestmark = pytest.mark.triton

SOAK_S = float(os.environ.get("ESCNET_SOAK_S", "60"))
CLIENTS = 3  # CI has 2 cores: more threads only queue at the server
MAX_RSS_GROWTH = 0.10
ENSEMBLES = ("escnet", "catseg")
SIZES = ((128, 128), (256, 192))  # (height, width)
NAMES = ["cat", "wall, brick wall", "floor", "person", "sofa, couch", "grass"]


def _image(height: int, width: int) -> np.ndarray:
    picture = Image.fromarray(skimage_data.chelsea()).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.uint8).copy()


IMAGES = {size: _image(*size) for size in SIZES}
SMALL = IMAGES[SIZES[0]]
# (image, class names, what the refusal says): refused by the edge steps and by Triton itself.
BAD = [
    (SMALL, [], "class list is empty"),
    (SMALL, ["cat", "  "], "is empty or blank"),
    (SMALL, ["cat", "floor", "CAT"], "are the same class"),
    (SMALL, ["cat", b"\xff\xfe"], "not valid UTF-8"),
    (SMALL, ["x" * (REQUEST_LIMITS.max_name_bytes + 1)], "bytes long"),
    (SMALL, [f"n{i}" for i in range(MAX_CLASSES + 1)], "more than the maximum"),
    (SMALL[:4], ["cat"], "too small"),
    (SMALL.astype(np.float32), ["cat"], "FP32"),
]


def infer(client: Any, ensemble: str, image: np.ndarray, names: Sequence[str | bytes]) -> np.ndarray:
    grpc = isinstance(client, grpcclient.InferenceServerClient)
    module = grpcclient if grpc else httpclient
    encoded = np.array([n.encode() if isinstance(n, str) else n for n in names], dtype=np.object_)
    image_input = module.InferInput(IMAGE.name, list(image.shape), np_to_triton_dtype(image.dtype))
    image_input.set_data_from_numpy(image)
    names_input = module.InferInput(CLASS_NAMES.name, list(encoded.shape), "BYTES")
    names_input.set_data_from_numpy(encoded)
    extra = {"client_timeout": CLIENT_TIMEOUT_S} if grpc else {}
    outputs = [module.InferRequestedOutput(LABELS.name)]
    result = client.infer(ensemble, [image_input, names_input], outputs=outputs, **extra)
    return result.as_numpy(LABELS.name)


class Tally:
    """Counts of the soak, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []

    def add(self, key: str, problem: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if problem is not None and len(self.problems) < 20:
                self.problems.append(problem)


def good_request(index: int) -> tuple[str, np.ndarray, list[str]]:
    ensemble = ENSEMBLES[index % len(ENSEMBLES)]
    size = SIZES[(index // 2) % len(SIZES)]
    count = 2 + index % 2
    names = [NAMES[(index + k) % len(NAMES)] for k in range(count)]
    if index % 4 >= 2:  # a name never seen: the text embedder encodes it and caches it
        names[-1] = f"soak {uuid.uuid4().hex[:10]}"
    return ensemble, IMAGES[size], names


def run_client(
    index: int, make_client: Callable[[], Any], tally: Tally, deadline: float, barrier: threading.Barrier
) -> None:
    client = make_client()
    try:
        barrier.wait(timeout=60)
        for n in itertools.count():
            if time.monotonic() >= deadline:
                return
            if n % 3 == 0:  # bad first: a CPU answers only a few good requests in SOAK_S
                image, names, message = BAD[(index + n) % len(BAD)]
                try:
                    infer(client, ENSEMBLES[n % 2], image, names)
                except InferenceServerException as error:
                    ok = message in (error.message() or "")
                    tally.add("bad refused" if ok else "bad wrong message", None if ok else error.message())
                else:
                    tally.add("bad answered", f"not refused: {names[:3]}")
            else:
                ensemble, image, names = good_request(index * 1000 + n)
                try:
                    labels = infer(client, ensemble, image, names)
                except Exception as error:
                    tally.add("good failed", f"{ensemble} {names}: {error!r}"[:500])
                    continue
                right = labels.shape == image.shape[:2] and labels.min() >= 0 and labels.max() < len(names)
                tally.add("good" if right else "good wrong", None if right else f"labels {labels.shape}")
    finally:
        client.close()


def test_soak_mixed_requests_keep_memory_flat(triton_server: Any) -> None:
    def http() -> Any:
        return httpclient.InferenceServerClient(url=triton_server.http_url, network_timeout=CLIENT_TIMEOUT_S)

    def grpc() -> Any:
        return grpcclient.InferenceServerClient(url=triton_server.grpc_url)

    # Warm-up: every shape a good request has, and every bad request once, on one client.
    warm = http()
    try:
        for index in range(len(ENSEMBLES) * len(SIZES) * 2):
            ensemble, image, names = good_request(index)
            infer(warm, ensemble, image, names)
        for image, names, _ in BAD:
            with pytest.raises(InferenceServerException):
                infer(warm, "escnet", image, names)
    finally:
        warm.close()
    rss_before = triton_server.server_rss_bytes()

    tally = Tally()
    barrier = threading.Barrier(CLIENTS)
    deadline = time.monotonic() + SOAK_S
    threads = [
        threading.Thread(target=run_client, args=(i, http if i % 2 == 0 else grpc, tally, deadline, barrier))
        for i in range(CLIENTS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SOAK_S + CLIENT_TIMEOUT_S)
    elapsed = time.monotonic() - started
    rss_after = triton_server.server_rss_bytes()
    growth = rss_after / rss_before - 1

    counts = tally.counts
    total = sum(counts.values())
    print(
        f"\nsoak: {CLIENTS} clients, {elapsed:.0f} s, {total} requests ({total / elapsed:.2f}/s): "
        f"{counts['good']} good answered, {counts['good failed']} good failed, "
        f"{counts['bad refused']} bad refused, {counts['bad answered']} bad answered; "
        f"server RSS {rss_before / 2**30:.3f} GiB after warm-up -> {rss_after / 2**30:.3f} GiB "
        f"at the end ({growth:+.1%})"
    )
    assert not any(thread.is_alive() for thread in threads), "a client thread did not finish"
    assert not tally.problems, "\n".join(tally.problems)
    assert counts["good"] > 0 and counts["bad refused"] > 0, dict(counts)
    assert set(counts) <= {"good", "bad refused"}, dict(counts)
    assert triton_server.running and triton_server.is_ready()
    assert growth <= MAX_RSS_GROWTH, (
        f"server RSS grew {growth:.1%} (from {rss_before} to {rss_after} bytes), "
        f"more than {MAX_RSS_GROWTH:.0%}"
    )
