"""The SDK and the command line against a real tritonserver serving the ``escnet`` ensemble.

Every comparison is exact: the same image and classes give the same LABELS whatever the path
(direct tritonclient call, SDK over HTTP or gRPC, sync or asyncio, in the message or in shared
memory). The requests are few and small (256x256, three classes): each takes seconds on a CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from client_kinds import EitherClient
from PIL import Image

from escnet_client import (
    AsyncSegmentationClient,
    BadRequest,
    RequestTimeout,
    SegmentationClient,
    SegmentationResult,
    ServerUnavailable,
)
from escnet_client.shm import REGION_PREFIX
from escnet_export.contract import CLASS_NAMES, IMAGE, LABELS, MAX_CLASSES
from escnet_export.triton_serving.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "escnet"
CLI = [sys.executable, "-m", "escnet_client.cli"]


def leftover_regions(server: TritonServer) -> tuple[list[str], list[str]]:
    """(regions registered with the server, this process's region files in /dev/shm)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        registered = [region["name"] for region in client.get_system_shared_memory_status()]
    finally:
        client.close()
    mine = f"{REGION_PREFIX}_{os.getpid()}_"
    files = [name for name in os.listdir("/dev/shm") if name.startswith(mine)]
    return registered, files


@pytest.fixture(scope="module")
def direct_labels(triton_server: TritonServer, test_image: np.ndarray, classes: list[str]) -> np.ndarray:
    """LABELS [H, W] of a plain tritonclient.http call, no SDK in between."""
    client = httpclient.InferenceServerClient(triton_server.http_url, network_timeout=300)
    try:
        image = httpclient.InferInput(IMAGE.name, list(test_image.shape), IMAGE.dtype)
        image.set_data_from_numpy(test_image)
        names = httpclient.InferInput(CLASS_NAMES.name, [len(classes)], CLASS_NAMES.dtype)
        names.set_data_from_numpy(np.array([n.encode() for n in classes], dtype=np.object_))
        response = client.infer(MODEL, [image, names], outputs=[httpclient.InferRequestedOutput(LABELS.name)])
        return response.as_numpy(LABELS.name)
    finally:
        client.close()


@pytest.fixture(scope="module")
def http_result(triton_server: TritonServer, test_image: np.ndarray, classes_text: str) -> SegmentationResult:
    """The SDK's answer over HTTP, in the message, with SCORES."""
    with SegmentationClient(triton_server.http_url, protocol="http") as client:
        return client.segment(test_image, classes_text, scores=True, model=MODEL)


def test_sdk_labels_equal_a_direct_call(
    http_result: SegmentationResult, direct_labels: np.ndarray, classes: list[str]
) -> None:
    assert http_result.labels.dtype == np.int32 and http_result.labels.shape == direct_labels.shape
    np.testing.assert_array_equal(http_result.labels, direct_labels)
    assert http_result.class_names == classes
    assert http_result.scores is not None and http_result.scores.shape == (len(classes), 256, 256)
    np.testing.assert_array_equal(http_result.scores.argmax(axis=0), http_result.labels)
    shares = http_result.class_shares()
    assert list(shares) == classes and abs(sum(shares.values()) - 1.0) < 1e-9
    timings = http_result.timings
    assert 0 < timings.round_trip_s <= timings.total_s and timings.prepare_s >= 0


def test_grpc_agrees_with_http(
    triton_server: TritonServer, test_image: np.ndarray, classes: list[str], http_result: SegmentationResult
) -> None:
    with SegmentationClient(triton_server.grpc_url, protocol="grpc") as client:
        result = client.segment(test_image, classes, model=MODEL)
    np.testing.assert_array_equal(result.labels, http_result.labels)
    assert result.scores is None


def test_shared_memory_agrees_with_plain_and_leaves_no_region(
    triton_server: TritonServer, test_image: np.ndarray, classes_text: str, http_result: SegmentationResult
) -> None:
    with SegmentationClient(triton_server.http_url, protocol="http", use_shared_memory=True) as client:
        result = client.segment(test_image, classes_text, scores=True, model=MODEL)
    np.testing.assert_array_equal(result.labels, http_result.labels)
    np.testing.assert_array_equal(result.scores, http_result.scores)
    assert leftover_regions(triton_server) == ([], [])


def test_async_agrees_with_sync(
    triton_server: TritonServer,
    test_image: np.ndarray,
    test_image_path: Path,
    classes: list[str],
    http_result: SegmentationResult,
) -> None:
    """segment_many over gRPC aio, in shared memory, two requests in flight, results in input order."""
    crop = test_image[:192, :224]

    async def run() -> list[SegmentationResult]:
        async with AsyncSegmentationClient(
            triton_server.grpc_url, protocol="grpc", use_shared_memory=True
        ) as client:
            await client.wait_until_ready(timeout_s=30, model=MODEL)
            return await client.segment_many([test_image_path, crop], classes, concurrency=2, progress=False)

    results = asyncio.run(run())
    np.testing.assert_array_equal(results[0].labels, http_result.labels)
    assert results[1].labels.shape == (192, 224)
    assert leftover_regions(triton_server) == ([], [])


def test_refusals_raise_bad_request_and_the_server_carries_on(
    triton_server: TritonServer, test_image: np.ndarray, classes: list[str], http_result: SegmentationResult
) -> None:
    too_many = [f"class {i}" for i in range(MAX_CLASSES + 1)]
    with SegmentationClient(triton_server.http_url, protocol="http") as client:
        with pytest.raises(BadRequest, match=f"{MAX_CLASSES + 1} classes requested") as refused:
            client.segment(test_image, too_many, model=MODEL)
        assert "more than the maximum" in refused.value.message
    with SegmentationClient(triton_server.grpc_url, protocol="grpc") as client:
        with pytest.raises(BadRequest, match="is empty"):
            client.segment(test_image, ["cat", ",,"], model=MODEL)
        # In shared memory: refused too, and its regions cleaned up.
        with pytest.raises(BadRequest, match="is empty"):
            client.segment(test_image, ["cat", " , , "], model=MODEL, use_shared_memory=True)
        assert leftover_regions(triton_server) == ([], [])
        assert client.is_ready(MODEL)
        result = client.segment(test_image, classes, model=MODEL)
    np.testing.assert_array_equal(result.labels, http_result.labels)


def test_unknown_model_and_readiness(triton_server: TritonServer, test_image: np.ndarray) -> None:
    with SegmentationClient(triton_server.http_url, protocol="http") as client:
        client.wait_until_ready(timeout_s=30, model=MODEL)
        with pytest.raises(ServerUnavailable, match="not ready"):
            client.check_ready("no_such_model")
        with pytest.raises(BadRequest, match="no_such_model"):
            client.segment(test_image, ["cat"], model="no_such_model")


def test_timeout_with_shared_memory_still_cleans_up(
    either_client: EitherClient, triton_server: TritonServer, test_image: np.ndarray, classes: list[str]
) -> None:
    """The client gives up after 1 s; the server refuses to unregister the regions until it is done
    with them, and the client (blocking or asyncio: one policy) waits for that rather than leave
    them registered."""
    with (
        either_client.open(triton_server.grpc_url, protocol="grpc", timeout_s=1.0) as client,
        pytest.raises(RequestTimeout),
    ):
        client.segment(test_image, classes, model=MODEL, use_shared_memory=True)
    assert leftover_regions(triton_server) == ([], [])


def test_cli_writes_pngs_and_json(
    triton_server: TritonServer,
    test_image_path: Path,
    classes: list[str],
    classes_text: str,
    http_result: SegmentationResult,
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    args = ["--classes", classes_text, "--url", triton_server.grpc_url, "--protocol", "grpc"]
    command = [*CLI, str(test_image_path), *args, "--shared-memory", "--out", str(out), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    document = json.loads(done.stdout)
    assert document["classes"] == classes and len(document["results"]) == 1
    printed = document["results"][0]
    assert printed["shares"] == pytest.approx(http_result.class_shares())

    stem = test_image_path.stem
    with Image.open(out / f"{stem}_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.width > 256 and overlay.height >= 256
    with Image.open(out / f"{stem}_labels.png") as labels:
        np.testing.assert_array_equal(np.asarray(labels).astype(np.int32), http_result.labels)
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["shares"] == pytest.approx(http_result.class_shares())
    assert saved["timings"]["round_trip_s"] > 0
    assert set(saved["outputs"]) == {"overlay", "labels", "json"}


def test_cli_server_refusal_exit_5(triton_server: TritonServer, test_image_path: Path) -> None:
    command = [*CLI, str(test_image_path), "--classes", "cat; ,,", "--url", triton_server.http_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is empty" in lines[0] and "refused" in lines[0]
