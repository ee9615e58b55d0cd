"""Pictures of a result: a colour per class index, an overlay with a legend, a label-index PNG.

The palette is deterministic: class index i always gets the same colour, whatever the image or the
class list (hues spaced by the golden angle, brightness alternating, so neighbours differ).
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from escnet_client.images import ImageInput, load_image
from escnet_client.result import SegmentationResult

_GOLDEN = 0.618033988749895
LEGEND_MAX_ENTRIES = 40  # a longer legend ends with "... and N more"
_PAD = 8  # pixels around and between legend entries
_SWATCH = 14  # side of a legend's colour square, pixels
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def class_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index`` (deterministic, the same in every picture)."""
    hue = (0.02 + index * _GOLDEN) % 1.0
    saturation = (0.85, 0.6, 0.95)[index % 3]
    value = (0.95, 0.75)[(index // 3) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def palette(num_classes: int) -> np.ndarray:
    """[T, 3] uint8: the colour of each class index 0..T-1."""
    return np.array([class_color(i) for i in range(num_classes)], dtype=np.uint8).reshape(num_classes, 3)


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """labels [H, W] int -> [H, W, 3] uint8 colours of the palette."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels hold indices outside 0..{num_classes - 1}")
    return palette(num_classes)[labels]  # [H, W, 3]


def render_overlay(image: ImageInput, result: SegmentationResult, alpha: float = 0.5) -> Image.Image:
    """The image with the class colours blended over it, and a legend on its right.

    image:  the image that was segmented (any form ``segment`` takes), [H, W] as result.labels
    alpha:  weight of the class colour (0: the image only, 1: colours only)
    Returns an RGB PIL image [H', W + legend width] with H' = max(H, legend height): the legend
    lists the classes present (colour swatch, name, pixel share), largest share first.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pixels = load_image(image)  # [H, W, 3]
    if pixels.shape[:2] != result.labels.shape:
        raise ValueError(
            f"image of size {list(pixels.shape[:2])} does not match "
            f"labels of size {list(result.labels.shape)}"
        )
    colours = colorize(result.labels, len(result.class_names)).astype(np.float32)  # [H, W, 3]
    blended = (1.0 - alpha) * pixels.astype(np.float32) + alpha * colours  # [H, W, 3]
    overlay = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))  # RGB
    legend = render_legend(result)
    canvas = Image.new("RGB", (overlay.width + legend.width, max(overlay.height, legend.height)), _BACKGROUND)
    canvas.paste(overlay, (0, 0))
    canvas.paste(legend, (overlay.width, 0))
    return canvas


def render_legend(result: SegmentationResult) -> Image.Image:
    """The legend alone: one row (swatch, name, share) per class present, largest share first."""
    font = ImageFont.load_default()
    entries = [(index, f"{name}  {share * 100:.1f}%") for index, name, share in result.present_classes()]
    hidden = len(entries) - LEGEND_MAX_ENTRIES
    rows: list[tuple[int | None, str]] = list(entries[:LEGEND_MAX_ENTRIES])
    if hidden > 0:
        rows.append((None, f"... and {hidden} more"))
    if not rows:
        rows.append((None, "(no class)"))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # (left, top, right, bottom) of each text, whole pixels
    boxes = [tuple(round(v) for v in measure.textbbox((0, 0), text, font=font)) for _, text in rows]
    row_height = max(_SWATCH, *(box[3] - box[1] for box in boxes)) + _PAD // 2
    text_width = max(box[2] - box[0] for box in boxes)
    width = _PAD + _SWATCH + _PAD + text_width + _PAD
    height = _PAD + len(rows) * row_height + _PAD
    legend = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(legend)
    for row, ((index, text), box) in enumerate(zip(rows, boxes, strict=True)):
        top = _PAD + row * row_height
        if index is not None:
            draw.rectangle(
                (_PAD, top, _PAD + _SWATCH - 1, top + _SWATCH - 1), fill=class_color(index), outline=_TEXT
            )
        text_top = top + (_SWATCH - (box[3] - box[1])) // 2 - box[1]
        draw.text((_PAD + _SWATCH + _PAD, text_top), text, fill=_TEXT, font=font)
    return legend


def labels_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """labels [H, W] -> a PNG-ready image whose pixel values are the class indices.

    Up to 256 classes: mode "P" (8-bit indices; the palette shows the class colours in a viewer).
    More: mode "I;16" (16-bit grey, the index as the value).
    """
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels hold indices outside 0..{num_classes - 1}")
    if num_classes <= 256:
        indexed = Image.fromarray(labels.astype(np.uint8))  # mode "L", values = indices
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[:num_classes] = palette(num_classes)
        indexed.putpalette(colours.ravel().tolist())  # "L" -> "P", values kept
        return indexed
    return Image.fromarray(labels.astype(np.uint16))  # mode "I;16"
