"""Shared fixtures of the client tests: a test image and its class list, and ``either_client``, which
runs a test once with the blocking client and once with the asyncio one. The server is the
session's one real tritonserver (``triton_server`` of parity_tests/triton_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from client_kinds import CLIENT_KINDS, EitherClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

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


@pytest.fixture(params=CLIENT_KINDS)
def either_client(request: pytest.FixtureRequest) -> EitherClient:
    """The blocking client, then the asyncio one: their policy (settings, retries, shared memory
    lifecycle, errors) is one (escnet_client.policy), and each test using this checks it for both."""
    return EitherClient(request.param)
