"""The numpy pseudo_points step (export/runtime/numpy_pseudo_points.py) against the PyTorch reference.

Masks, labels and cluster ids must be equal, and the points equal to the bit: both sides compute
the softmax and the linear sampling with the same correctly rounded float64 operations in the same
order (escnet/pseudo_prompts.py, module docstring), and the rest is exact.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from parity_support import assert_runs_without_torch

from escnet.config import MODEL_CONFIGS, PseudoPromptConfig
from escnet.pseudo_prompts import _assign as reference_assign
from escnet.pseudo_prompts import _softmax as reference_softmax
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet_export.runtime import numpy_pseudo_points as port
from escnet_export.runtime import steps
from escnet_export.runtime.numpy_pseudo_points import pseudo_points

MODEL_CONFIG = MODEL_CONFIGS["escnet_vitb16_384"]
IMAGE_SIZE = MODEL_CONFIG.clip.image_size
DEFAULT = PseudoPromptConfig()
FIELDS = ("points", "labels", "mask", "cluster_ids")


def _reference(maps: np.ndarray, image_size: int, config: PseudoPromptConfig) -> dict[str, np.ndarray]:
    """generate_pseudo_prompts on ``maps`` ``[N, H, W]``, as numpy arrays keyed by FIELDS."""
    made = generate_pseudo_prompts(torch.from_numpy(maps), image_size=image_size, config=config)
    return {name: getattr(made, name).numpy() for name in FIELDS}


def _ported(maps: np.ndarray, image_size: int, config: PseudoPromptConfig) -> dict[str, np.ndarray]:
    """The numpy port on ``maps`` ``[N, H, W]`` (validated through the public step first)."""
    port._validate(maps[None], image_size, config)
    return dict(zip(FIELDS, port._prompts(maps, image_size, config), strict=True))


def _assert_same(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    for name in expected:
        want, have = expected[name], got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, name
        if want.dtype == np.float32:  # bit for bit (also tells -0.0 from 0.0)
            same = want.view(np.uint32) == have.view(np.uint32)
            if not same.all():
                worst = np.abs(want.astype(np.float64) - have).max()
                pytest.fail(f"{name}: {int((~same).sum())} values differ in their bits, up to {worst}")
        else:
            assert np.array_equal(want, have), name


def _check(maps: np.ndarray, config: PseudoPromptConfig = DEFAULT, image_size: int = IMAGE_SIZE) -> None:
    _assert_same(_reference(maps, image_size, config), _ported(maps, image_size, config))


def _normal(shape: tuple[int, ...], scale: float, seed: int) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# --- random maps -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 100.0])
def test_random_normal_maps_24(scale: float) -> None:
    _check(_normal((96, 24, 24), scale, seed=int(scale * 1000)))


def test_near_uniform_maps_where_float32_softmax_libraries_disagree() -> None:
    # p = 1/576 (1 +- 1e-4), so float32 probabilities lie a few ulps apart around the threshold
    # 1/576: numpy's exp / sum and torch.softmax in float32 give a different mask for 55 of these
    # 300 maps. The float64 softmax of basic operations gives both sides the same bits.
    _check(_normal((300, 24, 24), 1e-4, seed=11))


@pytest.mark.parametrize("grid", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_random_normal_maps_small_grid(grid: int, scale: float) -> None:
    _check(_normal((40, grid, grid), scale, seed=grid), image_size=16 * grid)


def test_non_square_grid() -> None:
    _check(_normal((30, 6, 9), 1.0, seed=3), image_size=144)
    _check(_normal((30, 9, 6), 1.0, seed=4), image_size=144)


def test_large_grid_takes_the_integer_products() -> None:
    # 40 x 40 is past the float64 quotient bound ((H W)^4 max D >= 2**52): the int64 path.
    assert 1600**4 * 2 * 39**2 >= 2**52
    _check(_normal((6, 40, 40), 1.0, seed=5), image_size=640)


def test_extreme_finite_values() -> None:
    maps = _normal((8, 24, 24), 1.0, seed=6)
    maps[0, 3, 4] = np.finfo(np.float32).max
    maps[1, :, :] = -np.finfo(np.float32).max
    maps[1, 5, 5] = np.finfo(np.float32).max  # every other cell far below the exp floor
    maps[2] *= 1e30
    maps[3] = np.float32(np.finfo(np.float32).tiny) * np.sign(maps[3])
    maps[4] *= 700.0  # neighbours just above and below the exp floor
    _check(maps)


# --- ties ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 3.0, -7.5, 1e20])
def test_constant_maps(value: float) -> None:
    for grid in (2, 4, 24):
        _check(np.full((2, grid, grid), value, dtype=np.float32), image_size=16 * grid)


def test_repeated_values() -> None:
    rng = np.random.default_rng(7)
    maps = (0.5 * rng.integers(0, 3, (64, 24, 24))).astype(np.float32)  # three levels
    maps[32:] = (maps[32:] * 4.0 - rng.integers(0, 2, (32, 24, 24))).astype(np.float32)
    _check(maps)


def test_plateaus_and_symmetric_patterns() -> None:
    maps = np.zeros((8, 24, 24), dtype=np.float32)
    maps[0, 5:9, 10:16] = 2.0  # a flat-topped blob
    maps[1, 5:9, 10:16], maps[1, 15:20, 2:6] = 2.0, 2.0  # two equal plateaus
    maps[2] = (np.add.outer(np.arange(24), np.arange(24)) % 2).astype(np.float32)  # checkerboard
    maps[3, :, 7] = 1.0  # a constant column
    maps[4, 12, :] = 1.0  # a constant row
    maps[5, 3, 3] = maps[5, 20, 20] = maps[5, 3, 20] = maps[5, 20, 3] = 4.0  # four equal peaks
    maps[6] = np.abs(np.subtract.outer(np.arange(24), 11.5))[:, None] * np.ones(24, np.float32)  # rows
    maps[7] = -np.hypot(*np.meshgrid(np.arange(24) - 11.5, np.arange(24) - 11.5)).astype(np.float32)
    for num_clusters in (1, 2, 5, 8):
        _check(maps, replace(DEFAULT, num_clusters=num_clusters))


# --- peaked maps and fewer foreground cells than clusters ---------------------------------------


@pytest.mark.parametrize("height", [10.0, 200.0, 1e4])
def test_one_hot_maps(height: float) -> None:
    cells = [(0, 0), (0, 23), (23, 0), (23, 23), (0, 11), (11, 0), (10, 17), (23, 12)]
    maps = np.zeros((len(cells), 24, 24), dtype=np.float32)
    for n, (i, j) in enumerate(cells):
        maps[n, i, j] = height
    _check(maps)


def test_fewer_foreground_cells_than_clusters() -> None:
    rng = np.random.default_rng(8)
    maps = np.zeros((24, 24, 24), dtype=np.float32)
    for n in range(24):
        peaks = 1 + n % 4  # 1 to 4 peaks for K = 5
        flat = rng.choice(576, size=peaks, replace=False)
        maps[n].reshape(-1)[flat] = 8.0 + rng.standard_normal(peaks).astype(np.float32)
    out = _ported(maps, IMAGE_SIZE, DEFAULT)
    assert (out["labels"] == -1).any(axis=1).all()  # every map has padding
    _check(maps)


def test_peaks_on_a_noisy_background() -> None:
    maps = _normal((32, 24, 24), 0.5, seed=9)
    rng = np.random.default_rng(10)
    for n in range(32):
        for _ in range(1 + n % 6):
            i, j = rng.integers(0, 24, 2)
            maps[n, max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3] += 4.0
    _check(maps)


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 0.0, 1e-4, 1.0 / 576, 0.002, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("num_clusters", [1, 5])
def test_thresholds_and_cluster_counts(threshold: float | None, num_clusters: int) -> None:
    maps = np.concatenate([_normal((24, 24, 24), 2.0, seed=12), _normal((8, 24, 24), 1e-3, seed=13)])
    _check(maps, PseudoPromptConfig(threshold=threshold, num_clusters=num_clusters))


@pytest.mark.parametrize("iterations", [0, 1, 3, 25])
def test_kmeans_iterations(iterations: int) -> None:
    _check(_normal((48, 24, 24), 1.0, seed=14), replace(DEFAULT, kmeans_iterations=iterations))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(dtype: type) -> None:
    _check(_normal((24, 24, 24), 2.0, seed=15).astype(dtype))


# --- the step's contract -------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "classes"), [(1, 1), (1, 7), (3, 5), (2, 20)])
def test_step_outputs_equal_the_torch_step(batch: int, classes: int) -> None:
    score = _normal((batch, classes, 24, 24), 2.0, seed=batch * 100 + classes)
    score[0, 0] = 0.0  # a uniform map inside the stack
    expected = steps.pseudo_points(score, MODEL_CONFIG)
    got = pseudo_points(score, IMAGE_SIZE, MODEL_CONFIG.pseudo_prompts)
    assert list(got) == ["POINTS", "POINT_LABELS", "PSEUDO_MASK"] == list(expected)
    k = MODEL_CONFIG.pseudo_prompts.num_clusters
    assert got["POINTS"].shape == (batch, classes, k, 2)
    assert got["POINT_LABELS"].shape == (batch, classes, k)
    assert got["PSEUDO_MASK"].shape == (batch, classes, 24, 24)
    assert all(value.dtype == np.float32 for value in got.values())
    _assert_same(expected, got)


def test_stack_equals_map_by_map() -> None:
    score = _normal((2, 6, 24, 24), 1.0, seed=16)
    stacked = pseudo_points(score, IMAGE_SIZE, DEFAULT)
    for b in range(2):
        for t in range(6):
            alone = pseudo_points(score[b : b + 1, t : t + 1], IMAGE_SIZE, DEFAULT)
            for name, value in alone.items():
                assert np.array_equal(value[0, 0], stacked[name][b, t])


def test_softmax_bits_equal_the_reference() -> None:
    logits = np.concatenate(
        [_normal((20, 576), scale, seed=17).astype(np.float64) for scale in (1e-4, 1.0, 50.0)]
    )
    expected = reference_softmax(torch.from_numpy(logits)).numpy()
    got = port._softmax(logits)
    assert np.array_equal(expected.view(np.int64), got.view(np.int64))
    # and it is the softmax: within a few float64 ulps of numpy's exp over the sum.
    plain = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, plain / plain.sum(axis=1, keepdims=True), rtol=1e-14, atol=0)


def test_both_assignment_paths_equal_the_reference() -> None:
    rng = np.random.default_rng(18)
    height = width = 24
    counts = rng.integers(1, 60, (400, 5))
    row_sums = rng.integers(0, height, (400, 5)) * counts + rng.integers(0, counts)
    col_sums = rng.integers(0, width, (400, 5)) * counts + rng.integers(0, counts)
    # exact distance ties: the hand case of parity_tests/model/test_pseudo_prompts.py (centre (2, 1)
    # against (6, 17) / 5, equally far from cell (1, 2)) and duplicated centres.
    counts[0, :2], row_sums[0, :2], col_sums[0, :2] = (1, 5), (2, 6), (1, 17)
    counts[1], row_sums[1], col_sums[1] = 3, 30, 33
    exists = rng.random((400, 5)) < 0.8
    exists[:, 0] = True
    exists[:2] = True
    expected = reference_assign(
        torch.arange(height * width) // width,
        torch.arange(height * width) % width,
        *(torch.from_numpy(a) for a in (row_sums, col_sums, counts, exists)),
    ).numpy()
    d_row = counts[:, :, None] * np.arange(height) - row_sums[:, :, None]
    d_col = counts[:, :, None] * np.arange(width) - col_sums[:, :, None]
    parts = (d_row * d_row, d_col * d_col, counts * counts, exists)
    assert np.array_equal(port._assign_by_quotient(*parts), expected)
    assert np.array_equal(port._assign_by_products(*parts), expected)
    assert expected[0, 1 * width + 2] == 0  # the tie went to the lower index


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (torch.zeros(1, 1, 4, 4), "numpy.ndarray"),
        ([[[[0.0]]]], "numpy.ndarray"),
        (np.zeros((4, 4, 4), np.float32), "rank 4"),
        (np.zeros((1, 1, 1, 4, 4), np.float32), "rank 4"),
        (np.zeros((1, 1, 4, 4), np.int64), "floating dtype"),
        (np.zeros((1, 1, 4, 4), bool), "floating dtype"),
        (np.zeros((0, 1, 4, 4), np.float32), "non-empty"),
        (np.zeros((1, 1, 0, 4), np.float32), "non-empty"),
        (np.array([[[[0.0, np.nan], [0.0, 0.0]]]], np.float32), "NaN"),
        (np.array([[[[0.0, np.inf], [0.0, 0.0]]]], np.float32), "inf"),
        (np.array([[[[0.0, -np.inf], [0.0, 0.0]]]], np.float32), "inf"),
        (np.zeros((1, 1, 80, 80), np.float32), "too large"),
    ],
)
def test_bad_score_raises(score: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pseudo_points(score, IMAGE_SIZE, DEFAULT)  # type: ignore[arg-type]


@pytest.mark.parametrize("image_size", [0, -384, 384.0, True])
def test_bad_image_size_raises(image_size: object) -> None:
    with pytest.raises(ValueError, match="image_size"):
        pseudo_points(np.zeros((1, 1, 4, 4), np.float32), image_size, DEFAULT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (replace(DEFAULT, num_clusters=0), "num_clusters"),
        (replace(DEFAULT, kmeans_iterations=-1), "iterations"),
    ],
)
def test_bad_config_raises(config: PseudoPromptConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pseudo_points(np.zeros((1, 1, 4, 4), np.float32), IMAGE_SIZE, config)


# --- no torch ------------------------------------------------------------------------------------


def test_module_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from escnet.config import PseudoPromptConfig\n"
        "from escnet_export.runtime.numpy_pseudo_points import pseudo_points\n"
        "out = pseudo_points(np.zeros((1, 2, 24, 24), np.float32), 384, PseudoPromptConfig())\n"
        "assert out['POINT_LABELS'].shape == (1, 2, 5)\n"
    )
    assert_runs_without_torch(code)
