"""Pseudo prompt generation (escnet/pseudo_prompts.py) on small hand-made maps.

Every expected value below is worked out by hand in the comments beside it. Shorthands used:
on a W x W grid the linear-sampling weight of a side neighbour is 1 - 1/W and of a diagonal one
1 - sqrt(2)/W; the point is the (w * p)-weighted centroid (i_c, j_c) of the clipped 3x3
neighbourhood, mapped to x = s * j_c + s/2 - 0.5, y = s * i_c + s/2 - 0.5 with s = image_size / W.
"""

from __future__ import annotations

import math

import pytest
import torch

from escnet.config import PseudoPromptConfig
from escnet.pseudo_prompts import PseudoPrompts, _assign, generate_pseudo_prompts

# Weights on a 4x4 grid: side 1 - 1/4, diagonal 1 - sqrt(2)/4 = 0.6464466.
SIDE_4 = 0.75
DIAG_4 = 1.0 - math.sqrt(2.0) / 4.0


def _fields(result: PseudoPrompts) -> tuple[torch.Tensor, ...]:
    return (result.points, result.labels, result.mask, result.cluster_ids)


def _assert_identical(a: PseudoPrompts, b: PseudoPrompts) -> None:
    for x, y in zip(_fields(a), _fields(b), strict=True):
        assert x.dtype == y.dtype
        assert torch.equal(x, y)


def _random_maps(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, size, size, generator=generator)


def test_single_peak_gives_one_point_and_four_paddings() -> None:
    # 4x4, peak 10 at (1, 2), 0 elsewhere: p_peak = e^10 / (e^10 + 15) = 0.9993, the others
    # 1 / (e^10 + 15) = 4.5e-5 < 1/16, so one foreground cell -> one cluster, 4 padding slots.
    # Its 3x3 neighbourhood (rows 0-2, cols 1-3) lies inside the grid and all 8 neighbours have the
    # same p, so the centroid is the cell itself: with image 64 (stride 16) the point is
    # (16 * 2 + 7.5, 16 * 1 + 7.5) = (39.5, 23.5), exactly.
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 2] = 10.0
    out = generate_pseudo_prompts(maps, image_size=64)

    assert out.points.shape == (1, 5, 2) and out.points.dtype == torch.float32
    assert out.labels.shape == (1, 5) and out.labels.dtype == torch.int64
    assert out.mask.shape == (1, 4, 4) and out.mask.dtype == torch.float32
    assert out.cluster_ids.shape == (1, 4, 4) and out.cluster_ids.dtype == torch.int64
    assert out.labels.tolist() == [[1, -1, -1, -1, -1]]
    assert out.points[0].tolist() == [[39.5, 23.5], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    expected_mask = torch.zeros(1, 4, 4)
    expected_mask[0, 1, 2] = 1.0
    assert torch.equal(out.mask, expected_mask)
    expected_ids = torch.full((1, 4, 4), -1)
    expected_ids[0, 1, 2] = 0
    assert torch.equal(out.cluster_ids, expected_ids)


def test_two_separated_blobs_with_two_clusters() -> None:
    # 6x6, background 0; blob A: (1,1) = 200, (1,2) = 199; blob B: (4,4) = 199.5, (4,3) = 198.5.
    # Softmax subtracts the max (200): the background gets e^-200, which underflows to exactly 0 in
    # float32, so only the blob cells carry probability: 1, e^-1, e^-0.5, e^-1.5 over
    # Z = 2.1975 -> the smallest is 0.1015 > 1/36: foreground = the 4 blob cells.
    # Initial centres: (1,1) (p highest) then (4,4). Assignment: (1,2) is at squared distance 1 from
    # (1,1) and 9 + 4 = 13 from (4,4) -> cluster 0; (4,3) symmetric -> cluster 1. Centres move to
    # (1, 1.5) and (4, 3.5), which assigns the same way: converged.
    # Argmax per cluster: (1,1) and (4,4). Linear sampling around (1,1): only (1,2) has p > 0,
    # with weight 1 - 1/6 = 5/6 and p ratio e^-1, so
    #   j_c = 1 + (5/6 e^-1) / (1 + 5/6 e^-1) = 1 + 0.306566 / 1.306566 = 1.234635, i_c = 1.
    # Around (4,4) the same with (4,3) on the left: j_c = 4 - 0.234635 = 3.765365, i_c = 4.
    # Image 96 -> stride 16: x = 16 j_c + 7.5, y = 16 i_c + 7.5.
    maps = torch.zeros(1, 6, 6)
    maps[0, 1, 1], maps[0, 1, 2] = 200.0, 199.0
    maps[0, 4, 4], maps[0, 4, 3] = 199.5, 198.5
    out = generate_pseudo_prompts(maps, image_size=96, config=PseudoPromptConfig(num_clusters=2))

    assert out.labels.tolist() == [[1, 1]]
    expected_ids = torch.full((1, 6, 6), -1)
    expected_ids[0, 1, 1] = expected_ids[0, 1, 2] = 0
    expected_ids[0, 4, 4] = expected_ids[0, 4, 3] = 1
    assert torch.equal(out.cluster_ids, expected_ids)
    assert torch.equal(out.mask, (expected_ids >= 0).float())
    shift = (5.0 / 6.0 * math.exp(-1.0)) / (1.0 + 5.0 / 6.0 * math.exp(-1.0))
    assert shift == pytest.approx(0.234635, abs=1e-5)
    assert out.points[0, 0].tolist() == pytest.approx([16 * (1 + shift) + 7.5, 23.5], abs=1e-4)
    assert out.points[0, 1].tolist() == pytest.approx([16 * (4 - shift) + 7.5, 71.5], abs=1e-4)


def test_uniform_map_every_cell_is_foreground() -> None:
    # A constant map has p = 1/16 everywhere, not above the threshold 1/16, but every cell equals
    # max p, so all 16 cells are foreground and every one is in some cluster.
    out = generate_pseudo_prompts(torch.zeros(1, 4, 4), image_size=64)
    assert torch.equal(out.mask, torch.ones(1, 4, 4))
    assert bool((out.cluster_ids >= 0).all()) and bool((out.cluster_ids < 5).all())
    # A slot is a positive point exactly when its cluster holds cells.
    present = [bool((out.cluster_ids == k).any()) for k in range(5)]
    assert out.labels[0].tolist() == [1 if here else -1 for here in present]


def test_uniform_map_kmeans_two_clusters_tie_goes_to_lower_cluster() -> None:
    # 4x4 constant map, K = 2. All p equal, so the initial centres are the two lowest flat indices:
    # c0 = (0,0), c1 = (0,1).
    # Iteration 1: both centres lie on row 0, so only the column decides: column 0 -> c0, columns
    #   1-3 -> c1. New centres: c0 = (1.5, 0), c1 = (1.5, 2).
    # Iteration 2: column 1 is at squared distance 1 from both -> tie -> lower index c0. Clusters:
    #   columns {0,1} and {2,3}; centres (1.5, 0.5) and (1.5, 2.5).
    # Iteration 3 on: column 1 is 0.25 from c0 and 2.25 from c1, column 2 the mirror: converged.
    # (Were the tie sent to c1, iteration 2 would reproduce iteration 1 and stop at {0} / {1,2,3}.)
    # Argmax inside each cluster, all p equal -> lowest flat index: (0,0) and (0,2).
    # Point of (0,0), clipped to rows/cols 0-1: weights 1, 0.75 (0,1), 0.75 (1,0), 0.646447 (1,1);
    #   total 3.146447; i_c = j_c = (0.75 + 0.646447) / 3.146447 = 0.443817.
    # Point of (0,2), rows 0-1, cols 1-3: row 0 weights 0.75 + 1 + 0.75 = 2.5, row 1
    #   0.646447 + 0.75 + 0.646447 = 2.042893; total 4.542893; i_c = 2.042893 / 4.542893 = 0.449690;
    #   the columns are symmetric, so j_c = 2 exactly.
    # Image 16 -> stride 4: x = 4 j_c + 1.5, y = 4 i_c + 1.5.
    out = generate_pseudo_prompts(
        torch.zeros(1, 4, 4), image_size=16, config=PseudoPromptConfig(num_clusters=2)
    )

    assert out.labels.tolist() == [[1, 1]]
    assert out.cluster_ids[0].tolist() == [[0, 0, 1, 1]] * 4
    corner = (SIDE_4 + DIAG_4) / (1.0 + 2 * SIDE_4 + DIAG_4)
    edge = (2 * DIAG_4 + SIDE_4) / (2 * SIDE_4 + 1.0 + 2 * DIAG_4 + SIDE_4)
    assert corner == pytest.approx(0.443817, abs=1e-5)
    assert edge == pytest.approx(0.449690, abs=1e-5)
    assert out.points[0, 0].tolist() == pytest.approx([4 * corner + 1.5] * 2, abs=1e-5)
    assert out.points[0, 1, 0].item() == 9.5  # symmetric columns: exactly 4 * 2 + 1.5
    assert out.points[0, 1, 1].item() == pytest.approx(4 * edge + 1.5, abs=1e-5)


@pytest.mark.parametrize(
    ("exists", "expected"),
    [
        pytest.param([True, True], [[0, 0, 1]], id="tie-to-lower-index"),
        # A cluster that does not exist is never chosen, however close.
        pytest.param([True, False], [[0, 0, 0]], id="absent-cluster-never-chosen"),
    ],
)
def test_kmeans_distance_tie_is_exact(exists: list[bool], expected: list[list[int]]) -> None:
    # Centre 0 = (2, 1) (one cell), centre 1 = (6, 17) / 5 = (1.2, 3.4) (five cells). Cell (1, 2) is
    # at squared distance 1 + 1 = 2 from centre 0 and 0.2^2 + 1.4^2 = 0.04 + 1.96 = 2 from centre 1:
    # a true tie, which goes to the lower index 0. In floating point 1.2 and 3.4 are inexact and the
    # two distances come out unequal (in float64 the second is 1.9999999999999998, which would pick
    # centre 1); the integer form compares D_0 * n_1^2 = 2 * 25 = 50 with
    # D_1 * n_0^2 = ((5 - 6)^2 + (10 - 17)^2) * 1 = 50: equal.
    # Cell (0, 0): 4 + 1 = 5 from centre 0, 1.44 + 11.56 = 13 from centre 1 -> 0.
    # Cell (1, 4): 1 + 9 = 10 from centre 0, 0.04 + 0.36 = 0.4 from centre 1 -> 1.
    assignment = _assign(
        torch.tensor([1, 0, 1]),
        torch.tensor([2, 0, 4]),
        row_sums=torch.tensor([[2, 6]]),
        col_sums=torch.tensor([[1, 17]]),
        counts=torch.tensor([[1, 5]]),
        exists=torch.tensor([exists]),
    )
    assert assignment.tolist() == expected


def test_fewer_foreground_cells_than_clusters_uniform_2x2() -> None:
    # 2x2 constant map, K = 5: 4 foreground cells -> 4 clusters (initial centres in flat order, each
    # cell at distance 0 from its own centre), slot 4 is padding.
    # Each point: the neighbourhood is the whole 2x2 grid, weights 1 (own cell), 1 - 1/2 = 0.5 (two
    # side cells), 1 - sqrt(1/2) = 0.292893 (diagonal); total 2.292893; the centroid moves towards
    # the other row and column by (0.5 + 0.292893) / 2.292893 = 0.345805.
    # Image 2 -> stride 1, x = j_c + 0.5 - 0.5 = j_c, y = i_c.
    out = generate_pseudo_prompts(torch.zeros(1, 2, 2), image_size=2)
    d = (0.5 + 1.0 - math.sqrt(0.5)) / (1.0 + 2 * 0.5 + 1.0 - math.sqrt(0.5))
    assert d == pytest.approx(0.345805, abs=1e-5)

    assert out.labels.tolist() == [[1, 1, 1, 1, -1]]
    assert out.cluster_ids[0].tolist() == [[0, 1], [2, 3]]
    expected = [[d, d], [1 - d, d], [d, 1 - d], [1 - d, 1 - d], [0.0, 0.0]]
    for got, want in zip(out.points[0].tolist(), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert out.points[0, 4].tolist() == [0.0, 0.0]


def test_fewer_foreground_cells_than_clusters_three_peaks() -> None:
    # 4x4, (0,0) = 3, (3,3) = 2.9, (2,1) = 2.8, 0 elsewhere. Z = 13 + e^3 + e^2.9 + e^2.8
    # = 13 + 20.0855 + 18.1741 + 16.4446 = 67.7042; p = 0.2967, 0.2684, 0.2429, background 0.0148
    # (< 1/16 = 0.0625). Three foreground cells, each its own cluster, in descending p.
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 2, 1] = 3.0, 2.9, 2.8
    out = generate_pseudo_prompts(maps, image_size=64)

    assert out.labels.tolist() == [[1, 1, 1, -1, -1]]
    expected_ids = torch.full((1, 4, 4), -1)
    expected_ids[0, 0, 0], expected_ids[0, 3, 3], expected_ids[0, 2, 1] = 0, 1, 2
    assert torch.equal(out.cluster_ids, expected_ids)
    # Each point stays within half a cell (8 px) of its peak's centre (16 j + 7.5, 16 i + 7.5).
    for slot, (i, j) in enumerate([(0, 0), (3, 3), (2, 1)]):
        x, y = out.points[0, slot].tolist()
        assert abs(x - (16 * j + 7.5)) < 8 and abs(y - (16 * i + 7.5)) < 8
    assert out.points[0, 3:].abs().sum().item() == 0.0


@pytest.mark.parametrize(
    ("cell", "expected_xy"),
    [
        # Corner (0,0) with score ln 2, 0 elsewhere: p = 2/17 = 0.1176 > 1/16, the rest 1/17 = 0.0588
        # < 1/16, so one foreground cell. Neighbourhood clipped to rows/cols 0-1; in units of 1/17:
        # w * p = 1 * 2, 0.75 * 1 (0,1), 0.75 * 1 (1,0), 0.646447 * 1 (1,1); total 4.146447;
        # i_c = j_c = (0.75 + 0.646447) / 4.146447 = 0.336782; image 16 (stride 4):
        # x = y = 4 * 0.336782 + 1.5 = 2.847128.
        ((0, 0), (4 * (SIDE_4 + DIAG_4) / (2 + 2 * SIDE_4 + DIAG_4) + 1.5,) * 2),
        # Bottom edge (3,1): rows 2-3, cols 0-2. Row 3: 0.75 + 2 + 0.75 = 3.5; row 2:
        # 0.646447 + 0.75 + 0.646447 = 2.042893; total 5.542893; i_c = 3 - 2.042893 / 5.542893
        # = 3 - 0.368562; the columns are symmetric, j_c = 1. x = 4 * 1 + 1.5 = 5.5,
        # y = 4 * 2.631438 + 1.5 = 12.025752.
        ((3, 1), (5.5, 4 * (3 - (2 * DIAG_4 + SIDE_4) / (2 + 2 * SIDE_4 + 2 * DIAG_4 + SIDE_4)) + 1.5)),
    ],
)
def test_linear_sampling_on_clipped_neighbourhood(
    cell: tuple[int, int], expected_xy: tuple[float, float]
) -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, cell[0], cell[1]] = math.log(2.0)
    out = generate_pseudo_prompts(maps, image_size=16)
    assert out.labels.tolist() == [[1, -1, -1, -1, -1]]
    assert out.points[0, 0].tolist() == pytest.approx(list(expected_xy), abs=1e-5)


def test_linear_sampling_hand_values() -> None:
    # The two parametrised cases above, as the numbers worked out in their comments.
    corner = (SIDE_4 + DIAG_4) / (2 + 2 * SIDE_4 + DIAG_4)
    edge = (2 * DIAG_4 + SIDE_4) / (2 + 2 * SIDE_4 + 2 * DIAG_4 + SIDE_4)
    assert corner == pytest.approx(0.336782, abs=1e-5)
    assert 4 * corner + 1.5 == pytest.approx(2.847128, abs=1e-5)
    assert edge == pytest.approx(0.368562, abs=1e-5)
    assert 4 * (3 - edge) + 1.5 == pytest.approx(12.025752, abs=1e-5)


@pytest.mark.parametrize(
    ("cell", "expected_xy"),
    [
        # A 200 peak leaves every other cell at p = e^-200 = 0 in float32, so the centroid is the cell
        # itself, whatever the clipping: cell (i, j) -> (16 j + 7.5, 16 i + 7.5) on 384 / 24.
        ((0, 0), (7.5, 7.5)),
        ((23, 23), (375.5, 375.5)),
        ((10, 17), (279.5, 167.5)),
    ],
)
def test_pixel_frame_384_over_24(cell: tuple[int, int], expected_xy: tuple[float, float]) -> None:
    maps = torch.zeros(1, 24, 24)
    maps[0, cell[0], cell[1]] = 200.0
    out = generate_pseudo_prompts(maps, image_size=384)
    assert out.points[0, 0].tolist() == list(expected_xy)
    assert out.labels[0].tolist() == [1, -1, -1, -1, -1]


def test_pixel_frame_symmetric_interior_peak() -> None:
    # A moderate peak (5) at (10, 17) with equal neighbours: the 3x3 neighbourhood is symmetric, so
    # the point is exactly the cell centre (16 * 17 + 7.5, 16 * 10 + 7.5) = (279.5, 167.5).
    maps = torch.zeros(1, 24, 24)
    maps[0, 10, 17] = 5.0
    out = generate_pseudo_prompts(maps, image_size=384)
    assert out.points[0, 0].tolist() == [279.5, 167.5]


@pytest.mark.parametrize(
    ("threshold", "expected_labels", "foreground_cells"),
    [
        # Same three-peak map as above: p = 0.2967, 0.2684, 0.2429, background 0.0148.
        (0.25, [1, 1, -1, -1, -1], 2),  # only (0,0) and (3,3) exceed 0.25
        (0.9, [1, -1, -1, -1, -1], 1),  # nothing exceeds 0.9, the argmax cell is kept
        (0.0, None, 16),  # every p > 0: the whole grid is foreground
    ],
)
def test_threshold_override(
    threshold: float, expected_labels: list[int] | None, foreground_cells: int
) -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 2, 1] = 3.0, 2.9, 2.8
    out = generate_pseudo_prompts(maps, image_size=64, config=PseudoPromptConfig(threshold=threshold))
    assert out.mask.sum().item() == foreground_cells
    assert int((out.cluster_ids >= 0).sum()) == foreground_cells
    if expected_labels is not None:
        # Single-cell clusters: the most probable cell (0,0) seeds and stays in cluster 0.
        assert out.labels.tolist() == [expected_labels]
        assert out.cluster_ids[0, 0, 0].item() == 0
    else:
        # 16 cells in 5 clusters: the labels mark exactly the occupied clusters.
        present = [1 if bool((out.cluster_ids == k).any()) else -1 for k in range(5)]
        assert out.labels[0].tolist() == present


def test_stack_equals_map_by_map() -> None:
    maps = _random_maps(8)
    maps[3] = 0.0  # a uniform map inside the stack
    stacked = generate_pseudo_prompts(maps, image_size=384)
    for n in range(maps.shape[0]):
        alone = generate_pseudo_prompts(maps[n : n + 1], image_size=384)
        for field_stacked, field_alone in zip(_fields(stacked), _fields(alone), strict=True):
            assert torch.equal(field_stacked[n : n + 1], field_alone)


def test_deterministic() -> None:
    maps = _random_maps(6, seed=1)
    _assert_identical(
        generate_pseudo_prompts(maps, image_size=384), generate_pseudo_prompts(maps.clone(), image_size=384)
    )


def test_permuting_maps_permutes_outputs() -> None:
    maps = _random_maps(7, seed=2)
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    out = generate_pseudo_prompts(maps, image_size=384)
    out_perm = generate_pseudo_prompts(maps[perm], image_size=384)
    for field, field_perm in zip(_fields(out), _fields(out_perm), strict=True):
        assert torch.equal(field[perm], field_perm)


def test_random_maps_invariants() -> None:
    maps = _random_maps(16, seed=3)
    out = generate_pseudo_prompts(maps, image_size=384)
    assert out.points.shape == (16, 5, 2) and out.labels.shape == (16, 5)
    # The mask is exactly the set of clustered cells, and labels mark the occupied clusters.
    assert torch.equal(out.mask, (out.cluster_ids >= 0).float())
    for k in range(5):
        occupied = (out.cluster_ids == k).flatten(1).any(dim=1)
        assert torch.equal(out.labels[:, k] == 1, occupied)
    # Positive points lie inside the 384 frame (cell centres span 7.5 .. 375.5), padding is (0, 0).
    positive = out.labels == 1
    assert bool(((out.points >= 7.5) & (out.points <= 375.5)).all(dim=-1)[positive].all())
    assert bool((out.points[~positive] == 0).all())


def test_rank_4_input_keeps_batch_and_class_axes() -> None:
    maps = _random_maps(6, size=6, seed=4).reshape(2, 3, 6, 6)
    out4 = generate_pseudo_prompts(maps, image_size=96)
    out3 = generate_pseudo_prompts(maps.reshape(6, 6, 6), image_size=96)
    assert out4.points.shape == (2, 3, 5, 2)
    assert out4.labels.shape == (2, 3, 5)
    assert out4.mask.shape == (2, 3, 6, 6)
    assert out4.cluster_ids.shape == (2, 3, 6, 6)
    for field4, field3 in zip(_fields(out4), _fields(out3), strict=True):
        assert torch.equal(field4.reshape(field3.shape), field3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype: torch.dtype) -> None:
    maps = torch.zeros(1, 4, 4, dtype=dtype)
    maps[0, 1, 2] = 10.0
    out = generate_pseudo_prompts(maps, image_size=64)
    assert out.points.dtype == torch.float32 and out.mask.dtype == torch.float32
    assert out.points[0, 0].tolist() == [39.5, 23.5]


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (torch.zeros(4, 4), "rank"),
        (torch.zeros(1, 1, 1, 4, 4), "rank"),
        (torch.zeros(1, 4, 4, dtype=torch.int64), "floating dtype"),
        (torch.zeros(1, 4, 4, dtype=torch.bool), "floating dtype"),
        (torch.zeros(0, 4, 4), "non-empty"),
        (torch.zeros(1, 0, 4), "non-empty"),
        (torch.tensor([[[0.0, float("nan")], [0.0, 0.0]]]), "NaN"),
        (torch.tensor([[[0.0, float("inf")], [0.0, 0.0]]]), "inf"),
        (torch.tensor([[[0.0, float("-inf")], [0.0, 0.0]]]), "inf"),
        (torch.zeros(1, 80, 80), "too large"),
    ],
)
def test_bad_inputs_raise(maps: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_pseudo_prompts(maps, image_size=384)


@pytest.mark.parametrize("image_size", [0, -384, 384.0])
def test_bad_image_size_raises(image_size: int) -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate_pseudo_prompts(torch.zeros(1, 4, 4), image_size=image_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    maps = _random_maps(32, seed=5)
    cpu = generate_pseudo_prompts(maps, image_size=384)
    gpu = generate_pseudo_prompts(maps.cuda(), image_size=384)
    assert gpu.points.device.type == "cuda"
    assert torch.equal(gpu.labels.cpu(), cpu.labels)
    assert torch.equal(gpu.mask.cpu(), cpu.mask)
    assert torch.equal(gpu.cluster_ids.cpu(), cpu.cluster_ids)
    torch.testing.assert_close(gpu.points.cpu(), cpu.points, rtol=0, atol=1e-3)
