"""Shared fixtures of the client tests: a test image, its class list, and one real tritonserver
(started on first use by a test marked ``triton``, stopped after the module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet_export.triton_server import TritonServer, locate_tritonserver

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = ROOT / "model_repository"
# A graph the export places; absent while the repository holds only the generated configs.
BUILT_GRAPH = MODEL_REPOSITORY / "escnet_prep" / "1" / "model.onnx"
BUILD_COMMANDS = (
    "python -m escnet_export.run_export --variant escnet_vitb16_384 && "
    "python -m escnet_export.run_export --variant catseg_vitb16_384 && "
    "python -m escnet_export.build_repository"
)

IMAGE_SIDE = 256  # small: one request takes a few seconds on a CPU
CLASSES = ["cat", "sofa, couch", "wall"]  # the second is one class with two synonyms
CLASSES_TEXT = "cat; sofa, couch; wall"


@pytest.fixture(scope="session")
def classes() -> list[str]:
    """The test's class list; the second class has two synonyms."""
    return list(CLASSES)


@pytest.fixture(scope="session")
def classes_text() -> str:
    """The same classes as one string, separated by ';'."""
    return CLASSES_TEXT


@pytest.fixture(scope="session")
def test_image() -> np.ndarray:
    """skimage's chelsea (a cat), resized to [256, 256, 3] uint8."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the test image")
    picture = Image.fromarray(data.chelsea()).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.uint8).copy()


@pytest.fixture(scope="session")
def test_image_path(test_image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test image as a PNG file (lossless: the pixels sent are the same)."""
    path = tmp_path_factory.mktemp("client_images") / "chelsea.png"
    Image.fromarray(test_image).save(path)
    return path


@pytest.fixture(scope="module")
def triton_server() -> Iterator[TritonServer]:
    """One tritonserver on free ports serving model_repository/; skipped (with the reason printed)
    when the repository's graphs are not built or no tritonserver is installed.

    Module-scoped (all the client's server tests live in one module): it overrides the session
    server of parity_tests/triton_fixtures.py for these tests and is stopped before the next
    module runs, so a full run never holds two servers (about 6 GB each) at once.
    """
    if not BUILT_GRAPH.exists():
        reason = (
            f"model repository graphs are not built ({BUILT_GRAPH} is missing); build with: {BUILD_COMMANDS}"
        )
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        locate_tritonserver()
    except RuntimeError as error:
        print(f"SKIP: {error}")
        pytest.skip(str(error))
    server = TritonServer(model_repository=MODEL_REPOSITORY, exit_timeout_s=10)
    server.start(timeout_s=600)
    print(f"tritonserver ready after {server.startup_s:.0f} s (log {server.log_path})")
    try:
        yield server
    finally:
        server.stop()
