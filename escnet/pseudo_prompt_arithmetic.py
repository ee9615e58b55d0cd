"""The arithmetic of pseudo prompt generation that no array library decides, written once.

escnet/pseudo_prompts.py (torch, the reference) and export/runtime/numpy_pseudo_points.py (numpy,
the served step) both call these functions, so their float64 operations are the same ones in the
same order by construction. The functions use only Python operators and slicing on the arrays they
are given, plus the few library calls handed in (``floor``, ``pad``, ``where``, ``weight_at``); this
module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from escnet.config import PseudoPromptConfig, check_pseudo_prompt_grid

# exp(x) for x <= 0 in float64 (see escnet/pseudo_prompts.py). ln 2 split in a high part with 21
# trailing zero bits (k * LN2_HI is exact for |k| < 2**21) and the rest, as in fdlibm; the Taylor
# coefficients 1/n! of exp on |r| <= ln(2)/2, whose degree-13 remainder is below 1e-17.
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
EXP_COEFFICIENTS = tuple(1.0 / math.factorial(n) for n in range(14))
# Below this exp is taken as 0: e^-650 ~ 5e-283 keeps every probability, and every weight of the
# linear sampling, a normal float64 even over a 73 x 73 grid (no subnormal arithmetic anywhere).
EXP_FLOOR = -650.0

# The 3x3 neighbourhood offsets of the linear sampling, in a fixed order.
OFFSETS = (-1, 0, 1)


def check_score_maps(
    name: str,
    shape: tuple[int, ...],
    dtype: object,
    *,
    floating: bool,
    has_nan: Callable[[], bool],
    has_inf: Callable[[], bool],
    image_size: int,
    config: PseudoPromptConfig,
) -> None:
    """The checks of the score maps after their type and rank: a floating dtype, non-empty, no NaN
    or inf (asked only once the earlier checks pass), then the grid, image size and config."""
    if not floating:
        raise ValueError(f"{name} must have a floating dtype, got {dtype}")
    if math.prod(shape) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {shape}")
    if has_nan():
        raise ValueError(f"{name} must be finite, found NaN")
    if has_inf():
        raise ValueError(f"{name} must be finite, found inf")
    check_pseudo_prompt_grid(int(shape[-2]), int(shape[-1]), image_size, config)


def exp_reduction(clamped: Any, floor: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``clamped = k ln 2 + r`` with ``k = floor(clamped / ln 2 + 1/2)`` (float64, any shape, all
    ``>= EXP_FLOOR``): returns ``k`` (integral floats) and ``exp(r)`` by Horner's rule. The caller
    multiplies by ``2**k`` built from its exponent bits."""
    k = floor(clamped * INV_LN2 + 0.5)
    r = (clamped - k * LN2_HI) - k * LN2_LO
    poly = EXP_COEFFICIENTS[13] * r + EXP_COEFFICIENTS[12]
    for coefficient in EXP_COEFFICIENTS[11::-1]:
        poly = poly * r + coefficient
    return k, poly


def pairwise_sum(values: Any, pad: Callable[[Any, int], Any]) -> Any:
    """Sum over the last axis in a fixed pairwise order: ``[N, L]`` -> ``[N, 1]``.

    Zero-padded to a power of two (``pad(values, extra)`` appends ``extra`` zero columns) and
    folded in halves (``v[:, :h] + v[:, h:]``), so the rounding does not depend on the library's
    reduction kernel.
    """
    length = values.shape[-1]
    width = 1 << (length - 1).bit_length()
    if width > length:
        values = pad(values, width - length)
    while width > 1:
        width //= 2
        values = values[:, :width] + values[:, width:]
    return values


def centroid_offsets(
    weight_at: Callable[[int, int, float], Any],
    zeros: Any,
    height: int,
    width: int,
    where: Callable[[Any, Any, Any], Any],
) -> tuple[Any, Any]:
    """The linear sampling's (w * p)-weighted centroid of each 3x3 neighbourhood, as offsets
    ``(rows, cols)`` from its centre cell.

    ``weight_at(d_row, d_col, w)`` is ``w * p`` of the neighbour at that offset (0 outside the
    grid), ``w = max(0, 1 - distance)`` in the cell frame. Each row (column) of the neighbourhood is
    summed in a fixed order and the offset is ``(sum at +1 - sum at -1) / total``, so a symmetric
    neighbourhood gives exactly the cell itself; a zero total gives offset 0.
    """
    row_sums = dict.fromkeys(OFFSETS, zeros)  # accumulated out of place: sharing is safe
    col_sums = dict.fromkeys(OFFSETS, zeros)
    for d_row in OFFSETS:
        for d_col in OFFSETS:
            # x - j/W with x = j*/W is (j* - j)/W, written with the exact integer difference.
            dx = -d_col / width
            dy = -d_row / height
            weight = weight_at(d_row, d_col, max(0.0, 1.0 - math.sqrt(dx * dx + dy * dy)))
            row_sums[d_row] = row_sums[d_row] + weight
            col_sums[d_col] = col_sums[d_col] + weight
    total = row_sums[-1] + row_sums[0] + row_sums[1]
    positive = total > 0
    safe_total = where(positive, total, 1.0)
    row_offset = where(positive, (row_sums[1] - row_sums[-1]) / safe_total, 0.0)
    col_offset = where(positive, (col_sums[1] - col_sums[-1]) / safe_total, 0.0)
    return row_offset, col_offset


def pixel_points(row_c: Any, col_c: Any, image_size: int, height: int, width: int) -> tuple[Any, Any]:
    """Sub-cell coordinates -> ``(x, y)`` in the pixel frame of the ``image_size`` square: cell
    centres, less the +0.5 SAM's prompt encoder adds."""
    stride_x = image_size / width
    stride_y = image_size / height
    return stride_x * col_c + (stride_x / 2 - 0.5), stride_y * row_c + (stride_y / 2 - 0.5)
