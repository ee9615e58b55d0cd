"""From an image of any size to the model's square views, and from view logits back to the image.

Small images are one view: resized to S x S. Images whose shorter side reaches the sliding-window
size use CAT-Seg's sliding window: the image resized to 640 x 640 is cut into 384 crops with stride
256 (four crops), plus one global view of the whole image; their per-class probabilities are
averaged. The same functions run in the reference model and in the served pre/post-processing, so
both see identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from escnet.config import ModelConfig

CROP_SIZE = 384  # CAT-Seg's sliding-window kernel, in pixels of the 640 x 640 resized image


@dataclass(frozen=True)
class ViewPlan:
    """How one image is cut: ``sliding`` (4 crops + global) or a single resized view."""

    height: int
    width: int
    sliding: bool
    window_size: int  # side of the square the crops are cut from (sliding only)
    stride: int

    @property
    def num_views(self) -> int:
        if not self.sliding:
            return 1
        per_side = (self.window_size - CROP_SIZE) // self.stride + 1
        return per_side * per_side + 1


def plan_views(height: int, width: int, config: ModelConfig) -> ViewPlan:
    """Choose single-view or sliding-window inference for an image of height x width pixels."""
    size = config.sliding_window_size
    stride = int(CROP_SIZE * (1 - config.sliding_window_overlap))
    return ViewPlan(
        height=height, width=width, sliding=min(height, width) >= size, window_size=size, stride=stride
    )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def make_views(pixels: torch.Tensor, plan: ViewPlan, config: ModelConfig) -> torch.Tensor:
    """pixels: [H, W, 3] uint8 RGB -> [V, 3, S, S] CLIP-normalised float32 views."""
    image = pixels.permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, H, W]
    mean = torch.tensor(config.clip.pixel_mean, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(config.clip.pixel_std, device=image.device).view(1, 3, 1, 1)
    size = config.clip.image_size
    if not plan.sliding:
        views = image
    else:
        window = _resize(image, (plan.window_size, plan.window_size))  # [1, 3, 640, 640]
        crops = F.unfold(window, kernel_size=CROP_SIZE, stride=plan.stride)  # [1, 3*384*384, L]
        crops = crops.squeeze(0).T.reshape(-1, 3, CROP_SIZE, CROP_SIZE)  # [L, 3, 384, 384]
        views = torch.cat([crops, _resize(image, (CROP_SIZE, CROP_SIZE))], dim=0)  # [L+1, 3, 384, 384]
    return _resize((views - mean) / std, (size, size))


def merge_views(logits: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """logits: [V, T, h, w] of the views -> per-class probabilities [T, H, W] of the image."""
    if not plan.sliding:
        return _resize(logits.sigmoid(), (plan.height, plan.width))[0]
    probs = _resize(logits, (CROP_SIZE, CROP_SIZE)).sigmoid()  # [V, T, 384, 384]
    out = (plan.window_size, plan.window_size)
    crops, global_view = probs[:-1], probs[-1:]
    folded = F.fold(crops.flatten(1).T.unsqueeze(0), out, kernel_size=CROP_SIZE, stride=plan.stride)
    ones = torch.ones(1, 1, *out, device=logits.device)
    counts = F.fold(
        F.unfold(ones, kernel_size=CROP_SIZE, stride=plan.stride),
        out,
        kernel_size=CROP_SIZE,
        stride=plan.stride,
    )
    merged = (folded / counts + _resize(global_view, out)) / 2  # [1, T, 640, 640]
    return _resize(merged, (plan.height, plan.width))[0]


def segment_probabilities(
    model: torch.nn.Module, pixels: torch.Tensor, text_embeddings: torch.Tensor
) -> torch.Tensor:
    """Reference inference of one image: [H, W, 3] uint8 and [T, P, C] -> probabilities [T, H, W]."""
    config: ModelConfig = model.config
    plan = plan_views(pixels.shape[0], pixels.shape[1], config)
    device = next(model.parameters()).device
    views = make_views(pixels.to(device), plan, config)
    return merge_views(model(views, text_embeddings), plan)
