"""The served pre- and post-processing of escnet/image_views.py in numpy (float32), without torch.

escnet/image_views.py stays the reference; this module computes the same views and probabilities
for the Triton Python steps, which must not import torch (about 1 GiB per process):

- :func:`resize_bilinear`: torch's ``F.interpolate(mode="bilinear", align_corners=False)`` (no
  antialias) on [..., H, W] float32, with torch's CPU arithmetic (see below).
- :func:`make_views`: the shortest-edge-resized uint8 image -> the CLIP-normalised views of the
  plan (sliding window: four crops of the 640 window + the global view; or one padded view).
- :func:`merge_views`: view logits -> per-class probabilities of the original image, in chunks of
  classes so that only the [T, H, W] result is held at full size.
- :func:`class_labels`: per-pixel argmax over the classes, the first class on ties.

Torch's arithmetic, reproduced by :func:`resize_bilinear`: per axis the scale is
``float32(in) / float32(out)``, the source coordinate ``fma(scale, dst + 0.5, -0.5)`` clamped at 0,
``i0 = min(floor(src), in - 1)``, ``i1 = i0 + (i0 < in - 1)``, ``l1 = clamp(src - i0, 0, 1)``,
``l0 = 1 - l1`` (float32); an axis of equal sizes is copied. Torch's generic kernel (the one used
for channels-first tensors, and for the 3-channel image when it runs more than one thread) blends
the columns first, then the rows, each as ``t0 * w0 + t1 * w1`` which its AVX2 / AVX512 builds
contract to ``fma(t0, w0, t1 * w1)`` (a build without fma would round twice: an ulp apart).
Here the product ``t0 * w0`` is exact in float64 and the sum is rounded to float32 (float64 first,
then float32: unlike a single rounding only when the float64 sum lands exactly halfway between two
float32 values, at most of the order of one sum in 2**29; none was seen in the tests). Torch takes
another kernel (four weights ``h * w``, summed in another order) when ``out_h + out_w <= 128`` or,
single-threaded, for 3 channels; it agrees to a few float32 ulps.

Every step but the sigmoid is then bit-identical to torch's CPU result (views included); torch's
sigmoid evaluates ``exp`` with SLEEF's vector routine, so the probabilities may differ by an ulp
(about 1e-7).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from escnet.config import ModelConfig
from escnet.view_plan import ViewPlan, plan_views, resize_shortest_edge

__all__ = [
    "ViewPlan",
    "class_labels",
    "make_views",
    "merge_views",
    "plan_views",
    "resize_bilinear",
    "resize_shortest_edge",
    "sigmoid",
]

# Elements of one float32 temporary of a resize pass: 2**18 (1 MiB) keeps a pass's operands in the
# L2 cache, which is faster than whole planes and bounds the temporaries at a few MiB.
BLOCK_ELEMENTS = 1 << 18
# Planes (classes) of the merge processed together: the temporaries of one chunk (the views'
# probabilities at 384, the folded window and the resized global view) stay around 50 MiB.
MERGE_CHUNK_ELEMENTS = 1 << 22


@lru_cache(maxsize=256)
def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Torch's source indices and weights of one axis: i0, i1 [out] int64, l0, l1 [out] float32.

    Returned read-only (they are cached).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centre = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # fma(scale, centre, -0.5): the float32 product is exact in float64, the difference too.
    source = (np.float64(scale) * centre.astype(np.float64) - 0.5).astype(np.float32)
    np.maximum(source, np.float32(0.0), out=source)
    i0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    l1 = np.clip(source - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    l0 = np.float32(1.0) - l1
    i1 = i0 + (i0 < in_size - 1)
    arrays = (i0, i1, l0, l1)
    for array in arrays:
        array.flags.writeable = False
    return arrays


class _Scratch:
    """Reused temporaries of one resize, so that each block's passes stay in cache: two float32
    buffers and one float64 buffer of BLOCK_ELEMENTS (plus the elements of one row, when longer)."""

    def __init__(self, row: int) -> None:
        size = max(BLOCK_ELEMENTS, row)
        self.first = np.empty(size, dtype=np.float32)
        self.second = np.empty(size, dtype=np.float32)
        self.wide = np.empty(size, dtype=np.float64)

    def views(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = int(np.prod(shape))
        return (
            self.first[:count].reshape(shape),
            self.second[:count].reshape(shape),
            self.wide[:count].reshape(shape),
        )


def _blend(
    first: np.ndarray, w0: np.ndarray, second: np.ndarray, w1: np.ndarray, wide: np.ndarray, out: np.ndarray
) -> None:
    """out = fma(first, w0, second * w1) rounded to float32: torch's contracted t0 * w0 + t1 * w1.

    first, second: float32 of out's shape (second is overwritten); w0 (float64), w1 (float32)
    broadcast to it; wide: a float64 temporary of out's shape.
    """
    np.multiply(second, w1, out=second)  # float32, rounded as torch rounds t1 * w1
    np.multiply(first, w0, out=wide)  # exact: 24-bit x 24-bit significands
    np.add(wide, second, out=out, casting="same_kind")  # in float64, then the fma's one rounding


def _resize_columns(planes: np.ndarray, out_width: int, out: np.ndarray, scratch: _Scratch) -> None:
    """planes [P, H, W] float32 -> out [P, H, out_width] float32 (contiguous): the width pass.

    Every row is independent here, so the P * H rows go in blocks of about BLOCK_ELEMENTS outputs.
    """
    width = planes.shape[-1]
    i0, i1, l0, l1 = _axis_weights(width, out_width)
    w0 = l0.astype(np.float64)
    rows_in, rows_out = planes.reshape(-1, width), out.reshape(-1, out_width)
    step = max(1, BLOCK_ELEMENTS // out_width)
    for r in range(0, rows_in.shape[0], step):
        block = rows_in[r : r + step]
        first, second, wide = scratch.views((block.shape[0], out_width))
        np.take(block, i0, axis=1, out=first, mode="clip")  # indices are in range: no check
        np.take(block, i1, axis=1, out=second, mode="clip")
        _blend(first, w0, second, l1, wide, rows_out[r : r + step])


def _resize_rows(
    planes: np.ndarray, row_index: tuple[np.ndarray, ...], out: np.ndarray, scratch: _Scratch
) -> None:
    """planes [P, h, W] float32 -> out [P, oh, W] float32 (contiguous): the height pass, with the
    source rows i0, i1 [oh] (indices into planes' h rows) and their weights l0, l1 [oh]; in blocks
    of whole planes, or of rows of one plane, of about BLOCK_ELEMENTS outputs."""
    i0, i1, l0, l1 = row_index
    w0 = l0.astype(np.float64)[:, None]
    w1 = l1[:, None]
    count, _, width = planes.shape
    group = max(1, BLOCK_ELEMENTS // (len(i0) * width))  # planes per block; > 1 only for whole planes
    step = len(i0) if group > 1 else max(1, BLOCK_ELEMENTS // width)  # output rows per block
    for p in range(0, count, group):
        block = planes[p : p + group]
        for r in range(0, len(i0), step):
            cut = slice(r, r + step)
            rows = len(i0[cut])
            first, second, wide = scratch.views((block.shape[0], rows, width))
            np.take(block, i0[cut], axis=1, out=first, mode="clip")
            np.take(block, i1[cut], axis=1, out=second, mode="clip")
            _blend(first, w0[cut], second, w1[cut], wide, out[p : p + group, cut])


def resize_bilinear(x: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """[..., H, W] float32 -> [..., h, w] float32, torch's bilinear resize (align_corners=False).

    Separable, as torch's generic CPU kernel computes it: the columns of every needed input row,
    then the rows; in blocks of about BLOCK_ELEMENTS outputs with reused temporaries, so the memory
    beyond the result stays a few MiB whatever the number of planes. ``out`` (C-contiguous
    float32 [..., h, w]) receives the result when given; otherwise the same size is returned as it
    is.
    """
    x = np.asarray(x, dtype=np.float32)
    height, width = x.shape[-2:]
    out_height, out_width = int(size[0]), int(size[1])
    lead = x.shape[:-2]
    if out is None:
        if (height, width) == (out_height, out_width):
            return x
        out = np.empty((*lead, out_height, out_width), dtype=np.float32)
    shape = (*lead, out_height, out_width)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 {shape}, got {out.dtype} {out.shape}")
    if (height, width) == (out_height, out_width):
        np.copyto(out, x)
        return out
    planes = np.ascontiguousarray(x).reshape(-1, height, width)
    result = out.reshape(-1, out_height, out_width)
    scratch = _Scratch(max(width, out_width))
    if height == out_height:
        _resize_columns(planes, out_width, result, scratch)
        return out
    i0, i1, l0, l1 = _axis_weights(height, out_height)
    if width == out_width:
        _resize_rows(planes, (i0, i1, l0, l1), result, scratch)
        return out
    # Only the input rows the height pass reads get a width pass (fewer when shrinking a lot).
    needed = np.union1d(i0, i1)
    row_index = (np.searchsorted(needed, i0), np.searchsorted(needed, i1), l0, l1)
    step = max(1, 4 * BLOCK_ELEMENTS // (len(needed) * out_width))  # planes per width-pass buffer
    columns = np.empty((min(step, planes.shape[0]), len(needed), out_width), dtype=np.float32)
    for p in range(0, planes.shape[0], step):
        chunk = planes[p : p + step]
        if len(needed) < height:
            chunk = chunk[:, needed]
        buffer = columns[: chunk.shape[0]]
        _resize_columns(chunk, out_width, buffer, scratch)
        _resize_rows(buffer, row_index, result[p : p + step], scratch)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """[...] float32 -> [...] float32: 1 / (1 + exp(-x)), composed as torch's kernel composes it.

    exp is taken in float64 and rounded to float32 (correctly rounded almost always, as SLEEF's
    float32 exp that torch uses nearly is), in blocks, so the float64 temporaries stay small.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    with np.errstate(over="ignore"):  # exp(-x) is inf in float32 below x = -88.7: 1 / inf = 0, as torch
        for start in range(0, flat_in.size, BLOCK_ELEMENTS):
            cut = slice(start, start + BLOCK_ELEMENTS)
            wide = np.negative(flat_in[cut], dtype=np.float64)
            np.exp(wide, out=wide)
            e = flat_out[cut]
            np.copyto(e, wide, casting="same_kind")
            e += np.float32(1.0)
            np.divide(np.float32(1.0), e, out=e)
    return out


def make_views(resized: np.ndarray, plan: ViewPlan, config: ModelConfig) -> np.ndarray:
    """resized: [h, w, 3] uint8 RGB (resize_shortest_edge's output) -> [V, 3, S, S] float32 views."""
    image = np.asarray(resized).transpose(2, 0, 1)[None].astype(np.float32)  # [1, 3, h, w]
    mean = np.asarray(config.clip.pixel_mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config.clip.pixel_std, dtype=np.float32).reshape(1, 3, 1, 1)
    size = (config.clip.image_size, config.clip.image_size)
    if not plan.sliding:
        padded_height = plan.resized_height + (-plan.resized_height % plan.pad_divisor)
        padded_width = plan.resized_width + (-plan.resized_width % plan.pad_divisor)
        padded = np.zeros((1, 3, padded_height, padded_width), dtype=np.float32)
        padded[:, :, : image.shape[2], : image.shape[3]] = (image - mean) / std
        return resize_bilinear(padded, size)  # [1, 3, S, S]
    crop, stride, per_side = plan.crop_size, plan.stride, plan.crops_per_side
    window = resize_bilinear(image, (plan.window_size, plan.window_size))[0]  # [3, 640, 640]
    views = np.empty((per_side * per_side + 1, 3, crop, crop), dtype=np.float32)
    for index in range(per_side * per_side):  # unfold's order: crop rows, then columns
        top, left = (index // per_side) * stride, (index % per_side) * stride
        views[index] = window[:, top : top + crop, left : left + crop]
    views[-1] = resize_bilinear(image, (crop, crop))[0]  # the global view
    return resize_bilinear((views - mean) / std, size)  # [L + 1, 3, S, S]


def _fold_probabilities(logits: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """Sliding window, a chunk of classes: logits [V, t, h, w] -> merged window [t, 640, 640]."""
    crop, stride, per_side, size = plan.crop_size, plan.stride, plan.crops_per_side, plan.window_size
    probs = sigmoid(resize_bilinear(logits, (crop, crop)))  # [V, t, 384, 384]
    folded = np.zeros((logits.shape[1], size, size), dtype=np.float32)
    counts = np.zeros((size, size), dtype=np.float32)
    # F.fold (col2im) adds the crops covering a pixel from the last crop to the first.
    for index in reversed(range(per_side * per_side)):
        top, left = (index // per_side) * stride, (index % per_side) * stride
        folded[:, top : top + crop, left : left + crop] += probs[index]
        counts[top : top + crop, left : left + crop] += np.float32(1.0)
    folded /= counts
    folded += resize_bilinear(probs[-1], (size, size))
    folded /= np.float32(2.0)
    return folded


def merge_views(logits: np.ndarray, plan: ViewPlan, workers: int = 1) -> np.ndarray:
    """logits: [V, T, h, w] of the views -> per-class probabilities [T, H, W] float32 of the original
    image.

    Computed in chunks of classes, so only the result is held at full size (plus about 50 MiB per
    chunk in flight); ``workers`` > 1 runs that many chunks at once in threads (numpy releases the
    GIL in its loops), with the same result.
    """
    logits = np.asarray(logits, dtype=np.float32)
    views, classes, height, width = logits.shape
    out = np.empty((classes, plan.height, plan.width), dtype=np.float32)
    if plan.sliding:
        per_class = max(views * plan.crop_size**2, plan.window_size**2, plan.height * plan.width)
    else:
        per_class = max(views * height * width, plan.height * plan.width)
    chunk = max(1, MERGE_CHUNK_ELEMENTS // per_class)
    if workers > 1:  # at least one chunk per worker
        chunk = max(1, min(chunk, -(-classes // workers)))

    def merge_chunk(start: int) -> None:
        part = logits[:, start : start + chunk]
        if plan.sliding:
            merged = _fold_probabilities(part, plan)  # [t, 640, 640]
        else:
            merged = sigmoid(part[0, :, : plan.resized_height, : plan.resized_width])  # CAT-Seg's crop
        resize_bilinear(merged, (plan.height, plan.width), out=out[start : start + chunk])

    starts = range(0, classes, chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(merge_chunk, starts))
    else:
        for start in starts:
            merge_chunk(start)
    return out


def class_labels(probabilities: np.ndarray) -> np.ndarray:
    """PROBABILITIES [T, H, W] -> [H, W] int32: the argmax over T, the first class on ties (finite
    values): a running maximum over the class planes, each a contiguous H x W sweep."""
    best = np.array(probabilities[0], dtype=np.float32, copy=True)
    labels = np.zeros(best.shape, dtype=np.int32)
    higher = np.empty(best.shape, dtype=bool)
    for index in range(1, probabilities.shape[0]):
        plane = probabilities[index]
        np.greater(plane, best, out=higher)
        np.copyto(labels, np.int32(index), where=higher)
        np.maximum(best, plane, out=best)
    return labels
