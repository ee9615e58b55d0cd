"""The ``pseudo_points`` step in numpy alone: ESC-Net's pseudo prompt generation without torch.

Each Python step of the server is its own process and importing torch costs about 1 GiB in each,
so this port of :func:`escnet.pseudo_prompts.generate_pseudo_prompts` (the PyTorch reference,
whose module docstring states the algorithm) lets the step run without it: it imports only numpy,
the standard library and the torch-free :mod:`escnet.config` and :mod:`escnet.pseudo_prompt_arithmetic`.

The outputs are the reference's to the bit, as parity_tests/export/runtime/test_numpy_pseudo_points.py
checks: the softmax runs the reference's float64 operations one by one (an ``exp`` of IEEE
basic operations, a fixed pairwise sum, a division), the linear sampling its float64 operations
in the same order (both from escnet.pseudo_prompt_arithmetic, which the reference calls too), and
everything else (threshold, K-means, arg-max) is exact and
decided with the same tie rules. The K-means differs from the reference only in how it is computed:

- the squared distance of every cell to a centre splits into a row part and a column part
  (``D = (n i - R)^2 + (n j - C)^2``), each worked out on ``H`` or ``W`` values and broadcast;
- on grids up to 34 x 34 the distances are compared as float64 quotients ``D / n^2``, whose order
  is provably the exact one there (:func:`_assign_by_quotient`), on larger ones as the reference's
  int64 cross products;
- the cluster sums are bincounts over the list of foreground cells;
- a map whose centres (integer sums and counts) come out of a Lloyd step unchanged has reached a
  fixed point, since the next step would compute the same assignment from them: it leaves the
  working set and keeps its centres, which is what the remaining steps would have left.
"""

from __future__ import annotations

import numpy as np

from escnet import pseudo_prompt_arithmetic as shared
from escnet.config import PseudoPromptConfig

__all__ = ["pseudo_points"]

# The frozen default configuration (a module-level instance, so no call sits in a default argument).
_DEFAULT_CONFIG = PseudoPromptConfig()


def _validate(score: np.ndarray, image_size: int, config: PseudoPromptConfig) -> None:
    """The reference's checks, for ``score`` ``[B, T, H, W]``; raises ValueError naming the problem."""
    if not isinstance(score, np.ndarray):
        raise ValueError(f"score must be a numpy.ndarray, got {type(score).__name__}")
    if score.ndim != 4:
        raise ValueError(
            f"score must have rank 4 [B, T, G, G], got rank {score.ndim} with shape {score.shape}"
        )
    shared.check_score_maps(
        "score",
        score.shape,
        score.dtype,
        floating=bool(np.issubdtype(score.dtype, np.floating)),
        has_nan=lambda: bool(np.isnan(score).any()),
        has_inf=lambda: bool(np.isinf(score).any()),
        image_size=image_size,
        config=config,
    )


def _exp_nonpositive(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` of float64 ``x <= 0`` (any shape), 0 below ``shared.EXP_FLOOR``: the reference's
    operations (range reduction, Horner's rule, ``2**k`` from its exponent bits), one by one."""
    k, poly = shared.exp_reduction(np.maximum(x, shared.EXP_FLOOR), np.floor)
    power = ((k.astype(np.int64) + 1023) << 52).view(np.float64)  # 2**k, k >= -938
    np.multiply(poly, power, out=poly)
    poly[x < shared.EXP_FLOOR] = 0.0
    return poly


def _pad_columns(values: np.ndarray, extra: int) -> np.ndarray:
    return np.concatenate([values, np.zeros((values.shape[0], extra))], axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of float64 ``[N, L]``, bit for bit the reference's -> ``[N, L]``."""
    weights = _exp_nonpositive(logits - logits.max(axis=-1, keepdims=True))
    return weights / shared.pairwise_sum(weights, _pad_columns)


def _assign(
    row_sums: np.ndarray,
    col_sums: np.ndarray,
    counts: np.ndarray,
    exists: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Nearest existing centre of every cell, by squared distance, ties to the lower cluster index.

    The reference's rule: centre ``k`` is ``(row_sums[k], col_sums[k]) / counts[k]`` and its squared
    distance to cell ``(i, j)`` is the rational ``D_k / n_k^2`` with the integer
    ``D_k = (n_k i - row_sums[k])^2 + (n_k j - col_sums[k])^2`` (a row part plus a column part,
    each worked out per row or column and broadcast); the lowest index among the nearest wins.

    ``row_sums``, ``col_sums``, ``counts``: ``[A, K]`` int64 (every ``counts`` >= 1); ``exists``:
    ``[A, K]`` bool, cluster 0 always exists. Returns ``[A, H*W]`` signed integers (int8 or int64).
    """
    d_row = counts[:, :, None] * np.arange(height) - row_sums[:, :, None]  # [A, K, H]
    d_col = counts[:, :, None] * np.arange(width) - col_sums[:, :, None]  # [A, K, W]
    row_part, col_part = d_row * d_row, d_col * d_col
    cells = height * width
    max_distance = (height - 1) ** 2 + (width - 1) ** 2
    if cells**4 * max_distance < 2**52:
        return _assign_by_quotient(row_part, col_part, counts * counts, exists)
    return _assign_by_products(row_part, col_part, counts * counts, exists)


def _assign_by_quotient(
    row_part: np.ndarray, col_part: np.ndarray, count_sq: np.ndarray, exists: np.ndarray
) -> np.ndarray:
    """:func:`_assign` by the float64 quotients ``fl(D_k / n_k^2)``, exact on square grids up to 34 x 34.

    ``D_k < 2**53`` is exact in float64 and the division is correctly rounded, hence monotone:
    equal distances give equal quotients, and two different ones differ by at least
    ``1 / (n_a^2 n_b^2) >= 1 / (H W)^4``, more than the float64 spacing ``2**-52 max D / n^2`` at
    the largest squared distance when ``(H W)^4 ((H - 1)^2 + (W - 1)^2) < 2**52`` (the caller's
    test; 24 x 24 has a factor 38 to spare), so the quotients keep the strict order too. A running
    minimum with a strict ``<`` then keeps the lower index on ties. Five passes over the cells per
    cluster instead of eight for the integer products.

    ``row_part``: ``[A, K, H]`` int64, ``col_part``: ``[A, K, W]`` int64, ``count_sq``: ``[A, K]``
    int64, ``exists``: ``[A, K]`` bool. Returns ``[A, H*W]``, a signed integer dtype wide enough.
    """
    num_maps, num_clusters, height = row_part.shape
    width = col_part.shape[-1]
    rows = row_part.astype(np.float64)
    rows[~exists] = np.inf  # a cluster that does not exist is never nearer
    cols = col_part.astype(np.float64)
    divisor = count_sq.astype(np.float64)[:, :, None, None]
    best = np.empty((num_maps, height, width))
    np.add(rows[:, 0, :, None], cols[:, 0, None, :], out=best)
    np.divide(best, divisor[:, 0], out=best)
    dist = np.empty_like(best)
    closer = np.empty(best.shape, dtype=bool)
    assignment = np.zeros(best.shape, dtype=np.min_scalar_type(-num_clusters))  # int8 for K <= 128
    for k in range(1, num_clusters):
        np.add(rows[:, k, :, None], cols[:, k, None, :], out=dist)
        np.divide(dist, divisor[:, k], out=dist)
        np.less(dist, best, out=closer)
        np.minimum(best, dist, out=best)
        np.copyto(assignment, k, where=closer)
    return assignment.reshape(num_maps, height * width)


def _assign_by_products(
    row_part: np.ndarray, col_part: np.ndarray, count_sq: np.ndarray, exists: np.ndarray
) -> np.ndarray:
    """:func:`_assign` in int64, as the reference: ``k`` replaces the best so far ``b`` when
    ``D_k n_b^2 < D_b n_k^2`` (strict: ties keep the lower index). Any grid the validation admits.

    Arguments and result as :func:`_assign_by_quotient`.
    """
    num_maps, num_clusters, height = row_part.shape
    width = col_part.shape[-1]

    def numerator(k: int) -> np.ndarray:
        return (row_part[:, k, :, None] + col_part[:, k, None, :]).reshape(num_maps, height * width)

    best = numerator(0)
    best_count_sq = np.repeat(count_sq[:, 0:1], height * width, axis=1)
    assignment = np.zeros(best.shape, dtype=np.int64)
    for k in range(1, num_clusters):
        dist = numerator(k)
        closer = dist * best_count_sq < best * count_sq[:, k : k + 1]
        closer &= exists[:, k : k + 1]
        np.copyto(best, dist, where=closer)
        np.copyto(best_count_sq, count_sq[:, k : k + 1], where=closer)
        np.copyto(assignment, k, where=closer)
    return assignment


def _cluster_sums(
    assignment: np.ndarray, local: np.ndarray, cell: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, row sums and column sums of the foreground cells of each of the ``K = k`` clusters.

    ``assignment``: ``[A, H*W]`` integer; the foreground cells as flat lists: ``local`` (their row of
    ``assignment``), ``cell`` (flat index), ``rows``, ``cols`` (coordinates), all ``[F]`` int64.
    Returns three ``[A, K]`` int64 (integer sums, exact in any order).
    """
    num_maps, cells = assignment.shape
    bins = local * k + assignment.reshape(-1)[local * cells + cell]
    size = num_maps * k
    counts = np.bincount(bins, minlength=size)
    # float64 sums of small integers: exact (below 2**53).
    row_sums = np.bincount(bins, weights=rows, minlength=size).astype(np.int64)
    col_sums = np.bincount(bins, weights=cols, minlength=size).astype(np.int64)
    return counts.reshape(num_maps, k), row_sums.reshape(num_maps, k), col_sums.reshape(num_maps, k)


def _first_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the maximum along the last axis, the lowest among ties: ``[..., L]`` -> ``[...]``."""
    return np.argmax(values, axis=-1)


def _prompts(
    maps: np.ndarray, image_size: int, config: PseudoPromptConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference's prompts of ``maps`` ``[N, H, W]`` (validated, any floating dtype).

    Returns ``points`` ``[N, K, 2]`` float32 ``(x, y)``, ``labels`` ``[N, K]`` int64 (1 / -1),
    ``mask`` ``[N, H, W]`` float32 and ``cluster_ids`` ``[N, H, W]`` int64 (-1 for background).
    """
    num_maps, height, width = maps.shape
    cells = height * width
    num_clusters = config.num_clusters

    # a. softmax over the cells of each map, in float64.
    prob = _softmax(maps.reshape(num_maps, cells).astype(np.float64))  # [N, H*W]

    # b. foreground: above the threshold, or the most probable cell(s).
    threshold = config.threshold if config.threshold is not None else 1.0 / cells
    foreground = (prob > threshold) | (prob == prob.max(axis=-1, keepdims=True))  # [N, H*W]
    num_foreground = foreground.sum(axis=-1)  # [N]

    flat = np.arange(cells)
    rows, cols = flat // width, flat % width  # [H*W] int64

    # c. K-means, initialised from the K most probable foreground cells, ties to the lower index.
    exists = np.arange(num_clusters)[None, :] < num_foreground[:, None]  # [N, K]
    key = np.where(foreground, prob, -1.0)  # background below any probability
    map_index = np.arange(num_maps)
    seeds = np.empty((num_maps, num_clusters), dtype=np.int64)
    for k in range(num_clusters):
        seeds[:, k] = _first_argmax(key)
        key[map_index, seeds[:, k]] = -2.0
    row_sums, col_sums = rows[seeds], cols[seeds]  # [N, K] int64
    counts = np.ones_like(seeds)

    # Lloyd steps on the maps not yet at a fixed point (the module docstring says why that is exact),
    # with their foreground cells as flat lists (``local``: the map's row among the active ones).
    active = map_index
    positions = np.flatnonzero(foreground)
    local, cell = positions // cells, positions % cells
    for _ in range(config.kmeans_iterations):
        if active.size == 0:
            break
        state = (row_sums[active], col_sums[active], counts[active])
        assignment = _assign(*state, exists[active], height, width)
        new_counts, new_row_sums, new_col_sums = _cluster_sums(
            assignment, local, cell, rows[cell], cols[cell], num_clusters
        )
        keep = new_counts == 0  # an emptied cluster keeps its centre
        new_state = (
            np.where(keep, state[0], new_row_sums),
            np.where(keep, state[1], new_col_sums),
            np.where(keep, state[2], new_counts),
        )
        changed = np.zeros(active.size, dtype=bool)
        for old, new in zip(state, new_state, strict=True):
            changed |= (old != new).any(axis=-1)
        row_sums[active], col_sums[active], counts[active] = new_state
        active = active[changed]
        still = changed[local]
        local, cell = (np.cumsum(changed) - 1)[local[still]], cell[still]
    assignment = _assign(row_sums, col_sums, counts, exists, height, width)
    cluster_ids = np.where(foreground, assignment, -1)  # [N, H*W]
    in_cluster = cluster_ids[:, None, :] == np.arange(num_clusters)[:, None]  # [N, K, H*W]
    labels_valid = in_cluster.any(axis=-1)  # [N, K]: exists and not empty at the end

    # d. per cluster, the most probable cell inside it (eq. 1), ties to the lower flat index.
    best = _first_argmax(np.where(in_cluster, prob[:, None, :], -1.0))  # [N, K]
    best_row, best_col = best // width, best % width

    # e. linear sampling over the clipped 3x3 neighbourhood: the (w * p)-weighted centroid, with
    # the reference's float64 operations in its order.
    def weight_at(d_row: int, d_col: int, w: float) -> np.ndarray:
        n_row = best_row + d_row
        n_col = best_col + d_col
        inside = (n_row >= 0) & (n_row < height) & (n_col >= 0) & (n_col < width)
        neighbour = np.clip(n_row, 0, height - 1) * width + np.clip(n_col, 0, width - 1)
        p_neighbour = np.take_along_axis(prob, neighbour, axis=1)  # [N, K]
        return np.where(inside, w * p_neighbour, 0.0)

    zeros = np.zeros((num_maps, num_clusters))
    row_offset, col_offset = shared.centroid_offsets(weight_at, zeros, height, width, np.where)
    row_c = best_row.astype(np.float64) + row_offset
    col_c = best_col.astype(np.float64) + col_offset

    # f. cell centres in the pixel frame, less the +0.5 SAM's prompt encoder adds.
    x, y = shared.pixel_points(row_c, col_c, image_size, height, width)
    points = np.where(labels_valid[:, :, None], np.stack([x, y], axis=-1), 0.0).astype(np.float32)
    labels = np.where(labels_valid, 1, -1).astype(np.int64)
    mask = foreground.astype(np.float32).reshape(num_maps, height, width)
    return points, labels, mask, cluster_ids.astype(np.int64).reshape(num_maps, height, width)


def pseudo_points(
    score: np.ndarray, image_size: int, config: PseudoPromptConfig = _DEFAULT_CONFIG
) -> dict[str, np.ndarray]:
    """SCORE [B, T, G, G] -> POINTS [B, T, K, 2], POINT_LABELS [B, T, K], PSEUDO_MASK [B, T, G, G].

    What ``escnet_export.runtime.steps.pseudo_points(score, model_config)`` returns, without torch.

    Args:
        score: ``[B, T, H, W]`` floating (float32 as served; ``H = W = 24``), one correlation map
            per (image, class) pair; computed in float64 like the reference.
        image_size: side of the square image, in pixels, whose frame the points are given in
            (``model_config.clip.image_size``, 384 for ViT-B/16).
        config: ``model_config.pseudo_prompts``: threshold (None -> ``1 / (H * W)``), number of
            clusters ``K`` and K-means iterations.

    Returns:
        ``POINTS`` ``[B, T, K, 2]`` float32 ``(x, y)`` in the pixel frame (``(0, 0)`` for padding),
        ``POINT_LABELS`` ``[B, T, K]`` float32 (1 for a point, -1 for padding), ``PSEUDO_MASK``
        ``[B, T, H, W]`` float32 in ``{0, 1}``.

    Raises:
        ValueError: ``score`` is not a rank-4 numpy array, not floating, empty, or holds NaN or inf;
            its grid is too large; ``image_size`` is not a positive int; the config has no cluster
            or negative iterations.
    """
    _validate(score, image_size, config)
    b, t, height, width = score.shape
    points, labels, mask, _ = _prompts(score.reshape(b * t, height, width), image_size, config)
    k = config.num_clusters
    return {
        "POINTS": points.reshape(b, t, k, 2),
        "POINT_LABELS": labels.reshape(b, t, k).astype(np.float32),
        "PSEUDO_MASK": mask.reshape(b, t, height, width),
    }
