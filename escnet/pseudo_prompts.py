"""Pseudo prompt generation (PPG) of ESC-Net: correlation maps -> SAM point prompts and pseudo masks.

One ESC block turns each (image, class) correlation map ``S`` of shape ``[H, W]`` (24 x 24) into a
prompt set for SAM's prompt encoder:

a. ``p = softmax(S)`` over the ``H * W`` cells, in float64 (see below);
b. foreground = ``p > threshold`` or ``p == max p`` (``threshold`` defaults to ``1 / (H * W)``),
   so a map is never empty;
c. K-means on the ``(row, col)`` coordinates of the foreground cells, initialised from the ``K``
   most probable foreground cells (descending ``p``, ties to the lower flat index ``i * W + j``),
   ``kmeans_iterations`` Lloyd steps (nearest centre by squared distance, ties to the lower cluster
   index; an emptied cluster keeps its centre), then a final assignment;
d. per cluster, the cell ``(i*, j*)`` of highest ``p`` inside it (supplementary eq. 1, ties to the
   lower flat index);
e. linear sampling over the 3x3 neighbourhood of ``(i*, j*)`` clipped to the grid (eqs. 2-3): the
   weights ``w = max(0, 1 - sqrt((x - j/W)^2 + (y - i/H)^2))`` with ``x = j*/W, y = i*/H``; the
   paper's final formula floors back to ``(i*, j*)``, so the point we return is the sub-cell
   ``(w * p)``-weighted centroid ``(i_c, j_c)`` of the neighbourhood (any neighbour, in a cluster
   or not);
f. cell ``(i, j)`` is the centre of a ``stride = image_size / W`` pixel patch and SAM's prompt
   encoder adds ``+0.5`` itself, so the point is ``(x, y) = (stride * j_c + stride / 2 - 0.5,
   stride * i_c + stride / 2 - 0.5)`` (``16 j + 7.5, 16 i + 7.5`` for 384 pixels over 24 cells).

Slot ``k`` of the outputs is cluster ``k`` (the order of the initial centres, i.e. descending
probability of their cells). A cluster that does not exist (fewer foreground cells than ``K``) or
ends empty is padding: label ``-1`` and point ``(0, 0)``, left in its slot, as SAM's prompt encoder
accepts padding points anywhere.

The function is pure torch, vectorised over all maps, and runs on the device of its input. It uses
only elementwise operations, explicit first-index arg-min/max and K-means in exact integer
arithmetic (centres as integer sums over counts), so the same input gives bit-identical output
whether a map is processed alone or inside a stack, and clusters never depend on float rounding:
distance ties are real ties, broken as specified.

The softmax is computed in float64 from IEEE basic operations only (``+ - * /``, floor, a power of
two built from its bits): ``exp`` by Cody-Waite range reduction and a degree-13 Taylor polynomial
(within about 1 ulp of float64's exp; a cell more than 650 below its map's maximum gets exactly 0)
and the sum over the cells in a fixed pairwise order. Library ``exp`` and ``softmax`` kernels round
differently from one another (numpy's and torch's float32 softmax disagree in the last bit for half
the cells or more, which flips ``p > threshold`` in maps near uniform), whereas these operations
are correctly rounded everywhere: the probabilities, and hence the masks, clusters and points, are
the same bits on any device and in the numpy port the served step runs
(export/runtime/numpy_pseudo_points.py; both call escnet/pseudo_prompt_arithmetic.py for the
operations no array library decides, so they run them in the same order). The linear sampling is
in float64 too; the points are rounded to float32 last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from escnet.config import PseudoPromptConfig
from escnet.pseudo_prompt_arithmetic import (
    EXP_FLOOR,
    centroid_offsets,
    check_score_maps,
    exp_reduction,
    pairwise_sum,
    pixel_points,
)

__all__ = ["PseudoPrompts", "generate_pseudo_prompts"]

# The frozen default configuration (a module-level instance, so no call sits in a default argument).
_DEFAULT_CONFIG = PseudoPromptConfig()


@dataclass(frozen=True)
class PseudoPrompts:
    """The prompts of ``N`` maps (or ``[B, T]`` maps when the input was ``[B, T, H, W]``).

    Attributes:
        points: ``[N, K, 2]`` float32, ``(x, y)`` in the pixel frame of the ``image_size`` square,
            ready for SAM's prompt encoder (which adds ``+0.5``); ``(0, 0)`` for padding.
        labels: ``[N, K]`` int64, ``1`` for a positive point, ``-1`` for padding (no point).
        mask: ``[N, H, W]`` float32 in ``{0, 1}``, the union of the clusters (all foreground cells).
        cluster_ids: ``[N, H, W]`` int64, the cluster index of each foreground cell, ``-1`` for
            background.
    """

    points: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    cluster_ids: torch.Tensor


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """Index of the maximum along the last axis, the lowest index among ties, on any device.

    ``values``: ``[..., L]`` without NaN; returns ``[...]`` int64.
    """
    size = values.shape[-1]
    index = torch.arange(size, device=values.device)
    best = values.amax(dim=-1, keepdim=True)
    return torch.where(values == best, index, size).amin(dim=-1)


def _exp_nonpositive(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` of float64 ``x <= 0`` (any shape) from IEEE basic operations, 0 below ``EXP_FLOOR``.

    ``x = k ln 2 + r`` with ``k = floor(x / ln 2 + 1/2)``, ``exp(r)`` by Horner's rule, times
    ``2**k`` built from its exponent bits. Every step is one correctly rounded operation, so the
    result is the same bits on any device and in numpy.
    """
    k, poly = exp_reduction(torch.clamp(x, min=EXP_FLOOR), torch.floor)
    power = ((k.to(torch.int64) + 1023) << 52).view(torch.float64)  # 2**k, k >= -938
    return torch.where(x < EXP_FLOOR, 0.0, poly * power)


def _pad_columns(values: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.nn.functional.pad(values, (0, extra))


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of float64 ``[N, L]`` (see the module docstring) -> ``[N, L]``."""
    weights = _exp_nonpositive(logits - logits.amax(dim=-1, keepdim=True))
    return weights / pairwise_sum(weights, _pad_columns)


def _validate(score_maps: torch.Tensor, image_size: int, config: PseudoPromptConfig) -> None:
    if not isinstance(score_maps, torch.Tensor):
        raise ValueError(f"score_maps must be a torch.Tensor, got {type(score_maps).__name__}")
    if score_maps.dim() not in (3, 4):
        raise ValueError(
            f"score_maps must have rank 3 [N, H, W] or 4 [B, T, H, W], got rank {score_maps.dim()} "
            f"with shape {tuple(score_maps.shape)}"
        )
    check_score_maps(
        "score_maps",
        tuple(score_maps.shape),
        score_maps.dtype,
        floating=score_maps.is_floating_point(),
        has_nan=lambda: bool(torch.isnan(score_maps).any()),
        has_inf=lambda: bool(torch.isinf(score_maps).any()),
        image_size=image_size,
        config=config,
    )


def _assign(
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_sums: torch.Tensor,
    col_sums: torch.Tensor,
    counts: torch.Tensor,
    exists: torch.Tensor,
) -> torch.Tensor:
    """Nearest existing centre of every cell, by squared distance, ties to the lower cluster index.

    Exact integer arithmetic: centre ``k`` is ``(row_sums[k], col_sums[k]) / counts[k]``, so its
    squared distance to cell ``(i, j)`` is ``D_k / n_k^2`` with the integer
    ``D_k = (n_k i - row_sums[k])^2 + (n_k j - col_sums[k])^2``, and cluster ``k`` is closer than
    the best so far ``b`` when ``D_k n_b^2 < D_b n_k^2``. A running minimum over the clusters with a
    strict ``<`` keeps the lower index on ties, whatever the device or float dtype.

    ``rows``, ``cols``: ``[H*W]`` int64 cell coordinates; ``row_sums``, ``col_sums``, ``counts``:
    ``[N, K]`` int64 (every ``counts`` >= 1); ``exists``: ``[N, K]`` bool, cluster 0 always
    exists. Returns ``[N, H*W]`` int64.
    """

    def numerator(k: int) -> torch.Tensor:
        n = counts[:, k : k + 1]
        d_row = n * rows[None, :] - row_sums[:, k : k + 1]
        d_col = n * cols[None, :] - col_sums[:, k : k + 1]
        return d_row * d_row + d_col * d_col  # [N, H*W]

    best = numerator(0)
    best_count_sq = (counts[:, 0:1] * counts[:, 0:1]).expand_as(best)
    assignment = torch.zeros_like(best)
    for k in range(1, counts.shape[1]):
        dist = numerator(k)
        count_sq = counts[:, k : k + 1] * counts[:, k : k + 1]
        closer = (dist * best_count_sq < best * count_sq) & exists[:, k : k + 1]
        best = torch.where(closer, dist, best)
        best_count_sq = torch.where(closer, count_sq, best_count_sq)
        assignment = torch.where(closer, k, assignment)
    return assignment


def generate_pseudo_prompts(
    score_maps: torch.Tensor,
    *,
    image_size: int,
    config: PseudoPromptConfig = _DEFAULT_CONFIG,
) -> PseudoPrompts:
    """Pseudo point prompts and pseudo masks of ESC-Net's PPG, for all maps at once.

    Args:
        score_maps: ``[N, H, W]`` float, one correlation map per (image, class) pair (e.g.
            ``N = B * T``, ``H = W = 24``); ``[B, T, H, W]`` is also accepted and the outputs then
            keep the leading ``[B, T]`` (``points`` ``[B, T, K, 2]``, ``mask`` ``[B, T, H, W]``...).
            Every floating dtype is computed in float64 (the points are rounded to float32 last).
        image_size: side of the square image, in pixels, whose frame the points are given in
            (384 for ViT-B/16: stride 16 over a 24-cell grid). For ``H != W`` the row stride is
            ``image_size / H`` and the column stride ``image_size / W``.
        config: threshold (None -> ``1 / (H * W)``), number of clusters ``K`` and K-means iterations.

    Returns:
        :class:`PseudoPrompts` on the input's device: ``points`` ``[N, K, 2]`` float32 ``(x, y)``,
        ``labels`` ``[N, K]`` int64 (1 / -1), ``mask`` ``[N, H, W]`` float32, ``cluster_ids``
        ``[N, H, W]`` int64 (-1 for background).

    Raises:
        ValueError: ``score_maps`` is not rank 3 or 4, not floating, empty, or holds NaN or inf;
            ``image_size`` is not a positive int; the config has no cluster or negative iterations.
    """
    _validate(score_maps, image_size, config)
    lead = tuple(score_maps.shape[:-2])
    height, width = score_maps.shape[-2:]
    cells = height * width
    num_clusters = config.num_clusters
    device = score_maps.device
    dtype = torch.float64  # see the module docstring: the same bits on every device and in numpy

    # a. softmax over the cells of each map.
    logits = score_maps.reshape(-1, cells).to(dtype)
    num_maps = logits.shape[0]
    prob = _softmax(logits)  # [N, H*W]

    # b. foreground: above the threshold, or the most probable cell(s).
    threshold = config.threshold if config.threshold is not None else 1.0 / cells
    foreground = (prob > threshold) | (prob == prob.amax(dim=-1, keepdim=True))  # [N, H*W]
    num_foreground = foreground.sum(dim=-1)  # [N]

    flat = torch.arange(cells, device=device)
    rows = torch.div(flat, width, rounding_mode="floor")  # [H*W] int64
    cols = flat % width

    # c. K-means in exact integers: a centre is (row sum, col sum) / count of its cells. Initial
    # centres: the K most probable foreground cells, ties to the lower flat index.
    cluster_index = torch.arange(num_clusters, device=device)
    exists = cluster_index[None, :] < num_foreground[:, None]  # [N, K]
    key = torch.where(foreground, prob, -1.0)  # background below any probability
    initial = []
    for _ in range(num_clusters):
        pick = _first_argmax(key)  # [N]
        initial.append(pick)
        key = torch.where(flat[None, :] == pick[:, None], -2.0, key)
    seeds = torch.stack(initial, dim=1)  # [N, K]
    row_sums, col_sums = rows[seeds], cols[seeds]  # [N, K]
    counts = torch.ones_like(seeds)

    # Per-cluster integer sums by scatter-add (exact, so in any order), background into slot K.
    rows_n, cols_n = rows.expand(num_maps, cells), cols.expand(num_maps, cells)
    ones_n = torch.ones_like(rows_n)
    for _ in range(config.kmeans_iterations):
        assignment = _assign(rows, cols, row_sums, col_sums, counts, exists)  # [N, H*W]
        slot = torch.where(foreground, assignment, num_clusters)
        sums = torch.zeros(3, num_maps, num_clusters + 1, dtype=torch.int64, device=device)
        sums[0].scatter_add_(1, slot, ones_n)
        sums[1].scatter_add_(1, slot, rows_n)
        sums[2].scatter_add_(1, slot, cols_n)
        new_counts, new_row_sums, new_col_sums = sums[:, :, :num_clusters]  # [N, K] each
        keep = new_counts == 0  # an emptied cluster keeps its centre
        row_sums = torch.where(keep, row_sums, new_row_sums)
        col_sums = torch.where(keep, col_sums, new_col_sums)
        counts = torch.where(keep, counts, new_counts)
    assignment = _assign(rows, cols, row_sums, col_sums, counts, exists)
    cluster_ids = torch.where(foreground, assignment, -1)  # [N, H*W]
    in_cluster = cluster_ids[:, None, :] == cluster_index[:, None]  # [N, K, H*W]
    labels_valid = in_cluster.any(dim=-1)  # [N, K]: exists and not empty at the end

    # d. per cluster, the most probable cell inside it (eq. 1), ties to the lower flat index.
    cluster_prob = torch.where(in_cluster, prob[:, None, :], -1.0)
    best = _first_argmax(cluster_prob)  # [N, K]
    best_row = torch.div(best, width, rounding_mode="floor")
    best_col = best % width

    # e. linear sampling over the clipped 3x3 neighbourhood: the (w * p)-weighted centroid. Each
    # row (column) of the neighbourhood is summed in a fixed order and the centroid offset is
    # (sum at +1 - sum at -1) / total, so a symmetric neighbourhood gives exactly the cell itself.
    def weight_at(d_row: int, d_col: int, w: float) -> torch.Tensor:
        n_row = best_row + d_row
        n_col = best_col + d_col
        inside = (n_row >= 0) & (n_row < height) & (n_col >= 0) & (n_col < width)
        neighbour = n_row.clamp(0, height - 1) * width + n_col.clamp(0, width - 1)
        p_neighbour = torch.gather(prob, 1, neighbour)  # [N, K]
        # w is a Python float: no tensor is made for it, on whatever device the maps are.
        return torch.where(inside, w * p_neighbour, 0.0)

    zeros = torch.zeros(num_maps, num_clusters, dtype=dtype, device=device)
    row_offset, col_offset = centroid_offsets(weight_at, zeros, height, width, torch.where)
    row_c = best_row.to(dtype) + row_offset
    col_c = best_col.to(dtype) + col_offset

    # f. cell centres in the pixel frame, less the +0.5 SAM's prompt encoder adds.
    x, y = pixel_points(row_c, col_c, image_size, height, width)
    points = torch.stack([x, y], dim=-1)
    points = torch.where(labels_valid[:, :, None], points, 0.0).to(torch.float32)
    labels = torch.where(labels_valid, 1, -1).to(torch.int64)

    return PseudoPrompts(
        points=points.reshape(*lead, num_clusters, 2),
        labels=labels.reshape(*lead, num_clusters),
        mask=foreground.to(torch.float32).reshape(*lead, height, width),
        cluster_ids=cluster_ids.to(torch.int64).reshape(*lead, height, width),
    )
