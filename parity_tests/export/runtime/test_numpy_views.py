"""The torch-free views and merge (export/runtime/numpy_views.py) against the torch reference
(escnet/image_views.py): the bilinear resize, both inference protocols, both CLIP input sizes.

The largest errors seen are printed (``pytest -s``). On torch's AVX2 / AVX512 builds the resize and
the views are bit-identical; the probabilities differ by at most about one float32 ulp, from
torch's vectorised exp inside the sigmoid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_support import assert_runs_without_torch

from escnet import image_views as reference
from escnet.config import PROTOCOLS, ModelConfig
from escnet.registry import MODEL_CONFIGS
from escnet_export.runtime import numpy_views
from escnet_export.runtime.numpy_views import class_labels, make_views, merge_views, resize_bilinear

TOLERANCE = 1e-6
SIZES = [(384, 384), (480, 640), (640, 853), (768, 1024), (100, 37), (10, 2000)]
MODELS = ["catseg_vitb16_384", "catseg_vitl14_336"]  # CLIP inputs 384 and 336
CLASSES = 7
LOGIT_SIDE = 96  # 4 x the 24-cell grid, the decoder's output (export/contract.py's LOGITS)
FMA_BUILD = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def config_for(model: str, protocol: str) -> ModelConfig:
    return MODEL_CONFIGS[model].with_protocol(PROTOCOLS[protocol])


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_logits(views: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((views, classes, LOGIT_SIDE, LOGIT_SIDE)) * 4).astype(np.float32)


def max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())


def report(what: str, actual: np.ndarray, expected: np.ndarray) -> float:
    error = max_error(actual, expected)
    differing = float((actual != expected).mean())
    print(f"\n[numpy_views] {what}: max |error| {error:.3g}, {differing:.2%} of values differ")
    return error


def torch_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False).numpy()


RESIZES = [
    ((1, 3, 480, 640), (640, 640)),  # the window, up
    ((1, 3, 853, 640), (384, 384)),  # the global view, down
    ((5, 3, 384, 384), (336, 336)),  # views to the ViT-L input
    ((2, 7, 96, 96), (384, 384)),  # logits to the crop
    ((1, 7, 384, 384), (640, 640)),  # the global view to the window
    ((1, 7, 640, 640), (1024, 768)),  # the window to the image
    ((1, 4, 640, 640), (37, 100)),  # strong shrink: only the needed rows
    ((1, 2, 13, 2560), (640, 640)),  # a thin strip
    ((3, 5, 17, 29), (301, 7)),  # up one axis, down the other
    ((1, 6, 200, 300), (200, 451)),  # width only
    ((1, 6, 200, 300), (77, 300)),  # height only
    ((1, 1, 1, 1), (129, 130)),  # one pixel
    ((1, 9, 384, 384), (384, 384)),  # same size: as it is
]


@pytest.mark.parametrize(("shape", "size"), RESIZES, ids=[f"{s[0]}->{z}" for s, z in RESIZES])
def test_resize_matches_torch(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    x = (np.random.default_rng(sum(shape)).standard_normal(shape)).astype(np.float32)
    actual = resize_bilinear(x, size)
    expected = torch_resize(x, size)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    error = report(f"resize {shape} -> {size}", actual, expected)
    assert error <= TOLERANCE * max(1.0, float(np.abs(x).max()))
    generic_kernel = not (shape[1] == 3 and torch.get_num_threads() == 1) and sum(size) > 128
    if FMA_BUILD and generic_kernel:  # its t0 * w0 + t1 * w1 is contracted into an fma, as reproduced
        np.testing.assert_array_equal(actual, expected)


def test_resize_of_many_planes_in_blocks_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks smaller than a plane, a row, and many planes per block: the same values.
    x = np.random.default_rng(3).random((2, 5, 61, 83), dtype=np.float32)
    expected = torch_resize(x, (97, 45))
    for block in (16, 100, 1 << 18):
        monkeypatch.setattr(numpy_views, "BLOCK_ELEMENTS", block)
        assert max_error(resize_bilinear(x, (97, 45)), expected) <= TOLERANCE


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("protocol", ["catseg_eval", "single_view"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_views_match_torch(model: str, protocol: str, height: int, width: int) -> None:
    config = config_for(model, protocol)
    pixels = random_image(height, width, seed=height * 7 + width)
    plan = reference.plan_views(height, width, config.protocol)
    resized = reference.resize_shortest_edge(pixels, config.protocol)
    expected = reference.make_views(torch.from_numpy(resized), plan, config).numpy()
    actual = make_views(resized, plan, config)
    size = config.clip.image_size
    assert actual.dtype == np.float32 and actual.shape == (plan.num_views, 3, size, size)
    assert report(f"views {model} {protocol} {height}x{width}", actual, expected) <= TOLERANCE


@pytest.mark.parametrize("protocol", ["catseg_eval", "single_view"])
@pytest.mark.parametrize(("height", "width"), [*SIZES, (8, 8), (30, 50)])
def test_probabilities_and_labels_match_torch(protocol: str, height: int, width: int) -> None:
    # (8, 8) and (30, 50): out_h + out_w <= 128, where torch resizes with its channels-last kernel.
    plan = reference.plan_views(height, width, PROTOCOLS[protocol])
    logits = random_logits(plan.num_views, CLASSES, seed=height + width)
    expected = reference.merge_views(torch.from_numpy(logits), plan).numpy()
    actual = merge_views(logits, plan)
    assert actual.dtype == np.float32 and actual.shape == (CLASSES, height, width)
    assert report(f"probabilities {protocol} {height}x{width}", actual, expected) <= TOLERANCE
    labels = class_labels(actual)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, actual.argmax(axis=0).astype(np.int32))


def test_merge_in_chunks_of_classes_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # One class per chunk, and chunks that leave a remainder (3, 3 and 2 of 8 classes).
    plan = reference.plan_views(300, 400, PROTOCOLS["catseg_eval"])
    logits = random_logits(plan.num_views, 8, seed=5)
    expected = reference.merge_views(torch.from_numpy(logits), plan).numpy()
    results = []
    for elements in (1, 3 * 640 * 640):
        monkeypatch.setattr(numpy_views, "MERGE_CHUNK_ELEMENTS", elements)
        results.append(merge_views(logits, plan))
        results.append(merge_views(logits, plan, workers=3))  # chunks in threads: the same bits
    assert max_error(results[0], expected) <= TOLERANCE
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_resize_into_out() -> None:
    x = np.random.default_rng(4).random((3, 50, 60), dtype=np.float32)
    out = np.full((3, 70, 40), np.nan, dtype=np.float32)
    assert resize_bilinear(x, (70, 40), out=out) is out
    np.testing.assert_array_equal(out, resize_bilinear(x, (70, 40)))
    same = np.empty_like(x)
    np.testing.assert_array_equal(resize_bilinear(x, (50, 60), out=same), x)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        resize_bilinear(x, (70, 40), out=np.empty((3, 70, 41), np.float32))


def test_saturated_logits_match_torch() -> None:
    # Logits of +-100 (CAT-Seg's dropped classes get -100): sigmoid 0 / 1, no overflow warning.
    plan = reference.plan_views(480, 640, PROTOCOLS["catseg_eval"])
    logits = random_logits(plan.num_views, 3, seed=9) * 30
    logits[:, 1] = -100.0
    expected = reference.merge_views(torch.from_numpy(logits), plan).numpy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        actual = merge_views(logits, plan)
    assert max_error(actual, expected) <= TOLERANCE


def test_views_match_torch_single_threaded() -> None:
    # One thread: torch resizes the 3-channel image with its channels-last kernel (the products
    # h * w of the weights, summed in another order): a few ulps of the 0-255 window, up to 7.2e-7
    # after normalisation on the images tried, so twice the tolerance here.
    config = config_for("catseg_vitl14_336", "catseg_eval")
    pixels = random_image(480, 640, seed=1)
    plan = reference.plan_views(480, 640, config.protocol)
    resized = reference.resize_shortest_edge(pixels, config.protocol)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = reference.make_views(torch.from_numpy(resized), plan, config).numpy()
    finally:
        torch.set_num_threads(threads)
    actual = make_views(resized, plan, config)
    assert report("views, torch single-threaded", actual, expected) <= 2 * TOLERANCE


@pytest.mark.parametrize("classes", [1, 2, 150])
def test_class_labels_equal_argmax(classes: int) -> None:
    probabilities = np.random.default_rng(classes).random((classes, 37, 53), dtype=np.float32)
    labels = class_labels(probabilities)
    assert labels.dtype == np.int32 and labels.shape == (37, 53)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=0))


def test_class_labels_take_the_first_class_on_ties() -> None:
    probabilities = (np.random.default_rng(0).random((20, 64, 64), dtype=np.float32) * 4).round() / 4
    np.testing.assert_array_equal(class_labels(probabilities), probabilities.argmax(axis=0))
    np.testing.assert_array_equal(class_labels(np.ones((5, 3, 3), np.float32)), np.zeros((3, 3)))


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from escnet.config import MODEL_CONFIGS\n"
        "from escnet_export.runtime.numpy_views import class_labels, make_views, merge_views, plan_views\n"
        "from escnet_export.runtime.numpy_views import resize_shortest_edge\n"
        "config = MODEL_CONFIGS['catseg_vitb16_384']\n"
        "plan = plan_views(48, 64, config.protocol)\n"
        "resized = resize_shortest_edge(np.zeros((48, 64, 3), np.uint8), config.protocol)\n"
        "views = make_views(resized, plan, config)\n"
        "assert views.shape == (5, 3, 384, 384)\n"
        "probabilities = merge_views(np.zeros((5, 2, 96, 96), np.float32), plan)\n"
        "assert class_labels(probabilities).shape == (48, 64)\n"
    )
    assert_runs_without_torch(code)
