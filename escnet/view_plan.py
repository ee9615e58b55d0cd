"""The view plan of one image: its shortest-edge resize and how it is cut into views.

Numpy and PIL only (no torch), so the served pre-processing can plan and resize without the model's
dependencies; escnet/image_views.py cuts and merges the views.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np
from PIL import Image

from escnet.config import InferenceProtocol


@dataclass(frozen=True)
class ViewPlan:
    """How one image is cut into views, and where their probabilities go back to.

    height, width:                 the original image (the output's size)
    resized_height, resized_width: after the shortest-edge resize (the views are cut from this)
    sliding:                       sliding window (crops + global view) or one padded view
    window_size, crop_size, stride: the sliding window's square, crop side and stride
    pad_divisor:                   the single view pads the resized image to a multiple of it
    """

    height: int
    width: int
    resized_height: int
    resized_width: int
    sliding: bool
    window_size: int
    crop_size: int
    stride: int
    pad_divisor: int

    @property
    def crops_per_side(self) -> int:
        return (self.window_size - self.crop_size) // self.stride + 1

    @property
    def num_views(self) -> int:
        return self.crops_per_side**2 + 1 if self.sliding else 1

    def encode(self) -> np.ndarray:
        """The plan as the VIEW_PLAN tensor that travels from preprocess to postprocess: [9] int32."""
        return np.array([int(value) for value in astuple(self)], dtype=np.int32)

    @classmethod
    def decode(cls, encoded: np.ndarray) -> ViewPlan:
        values = [int(v) for v in np.asarray(encoded).reshape(-1)]
        if len(values) != len(fields(cls)):
            raise ValueError(f"VIEW_PLAN must have {len(fields(cls))} values, got {len(values)}")
        return cls(*values[:4], bool(values[4]), *values[5:])  # type: ignore[arg-type]


def shortest_edge_size(height: int, width: int, protocol: InferenceProtocol) -> tuple[int, int]:
    """(height, width) after the shortest-edge resize: detectron2's ResizeShortestEdge arithmetic."""
    size = float(protocol.shortest_edge)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > protocol.max_size:
        scale = protocol.max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_shortest_edge(pixels: np.ndarray, protocol: InferenceProtocol) -> np.ndarray:
    """[H, W, 3] uint8 -> [h, w, 3] uint8, PIL's bilinear filter (a copy when the size holds)."""
    new_h, new_w = shortest_edge_size(pixels.shape[0], pixels.shape[1], protocol)
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.array(resized)  # writable, for torch.from_numpy


def plan_views(height: int, width: int, protocol: InferenceProtocol) -> ViewPlan:
    """The view plan of an original image of height x width pixels under the protocol."""
    resized_height, resized_width = shortest_edge_size(height, width, protocol)
    return ViewPlan(
        height=height,
        width=width,
        resized_height=resized_height,
        resized_width=resized_width,
        sliding=protocol.sliding_window,
        window_size=protocol.window_size,
        crop_size=protocol.crop_size,
        stride=protocol.stride,
        pad_divisor=protocol.pad_divisor,
    )
