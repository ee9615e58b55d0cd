"""From an image of any size to the model's square views, and from view logits back to the image.

This is the pre- and post-processing of the inference protocol (``escnet.config.InferenceProtocol``):

1. ``resize_shortest_edge`` (escnet/view_plan.py, with the plan): the uint8 image's shorter side
   to 640 (longer side at most 2560) with PIL's bilinear filter, as detectron2's
   ResizeShortestEdge does in CAT-Seg's test mapper.
2. :func:`make_views`: the sliding window (the resized image resized again to 640 x 640, four 384
   crops with stride 256, plus the whole image at 384 x 384) or one view (the image padded to a
   multiple of 32 and resized to the CLIP input), CLIP-normalised.
3. :func:`merge_views`: per-class sigmoid probabilities of the views, folded back into the window
   (overlaps averaged, then averaged with the global view) or taken from the one view, and resized
   to the original image.

The same functions run in the reference model and in the served pre/post-processing, so both see
identical pixels. Every resize after the first is torch's bilinear (align_corners=False), in the
order CAT-Seg's code runs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from escnet.config import ModelConfig
from escnet.view_plan import ViewPlan, plan_views, resize_shortest_edge

__all__ = [
    "ViewPlan",
    "make_views",
    "merge_views",
    "plan_views",
    "resize_shortest_edge",
    "segment_probabilities",
]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=False; the same size is returned as it is (which is exact)."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def make_views(resized: torch.Tensor, plan: ViewPlan, config: ModelConfig) -> torch.Tensor:
    """resized: [h, w, 3] uint8 RGB (resize_shortest_edge's output) -> [V, 3, S, S] float32 views."""
    image = resized.permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, h, w]
    mean = torch.tensor(config.clip.pixel_mean, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(config.clip.pixel_std, device=image.device).view(1, 3, 1, 1)
    size = (config.clip.image_size, config.clip.image_size)
    if not plan.sliding:
        normalised = (image - mean) / std
        pad_h = -plan.resized_height % plan.pad_divisor
        pad_w = -plan.resized_width % plan.pad_divisor
        return _resize(F.pad(normalised, (0, pad_w, 0, pad_h), value=0.0), size)  # [1, 3, S, S]
    crop = plan.crop_size
    window = _resize(image, (plan.window_size, plan.window_size))  # [1, 3, 640, 640]
    crops = F.unfold(window, kernel_size=crop, stride=plan.stride)  # [1, 3*384*384, L]
    crops = crops.squeeze(0).T.reshape(-1, 3, crop, crop)  # [L, 3, 384, 384]
    views = torch.cat([crops, _resize(image, (crop, crop))], dim=0)  # [L+1, 3, 384, 384]
    return _resize((views - mean) / std, size)


def merge_views(logits: torch.Tensor, plan: ViewPlan) -> torch.Tensor:
    """logits: [V, T, h, w] of the views -> per-class probabilities [T, H, W] of the original image."""
    if not plan.sliding:
        probs = logits.sigmoid()[:, :, : plan.resized_height, : plan.resized_width]  # CAT-Seg's crop
        return _resize(probs, (plan.height, plan.width))[0]
    crop = plan.crop_size
    probs = _resize(logits, (crop, crop)).sigmoid()  # [V, T, 384, 384]
    out = (plan.window_size, plan.window_size)
    crops, global_view = probs[:-1], probs[-1:]
    folded = F.fold(crops.flatten(1).T.unsqueeze(0), out, kernel_size=crop, stride=plan.stride)
    ones = torch.ones(1, 1, *out, device=logits.device)
    counts = F.fold(
        F.unfold(ones, kernel_size=crop, stride=plan.stride), out, kernel_size=crop, stride=plan.stride
    )
    merged = (folded / counts + _resize(global_view, out)) / 2  # [1, T, 640, 640]
    return _resize(merged, (plan.height, plan.width))[0]


def segment_probabilities(
    model: torch.nn.Module, pixels: torch.Tensor, text_embeddings: torch.Tensor
) -> torch.Tensor:
    """Reference inference of one image: [H, W, 3] uint8 and [T, P, C] -> probabilities [T, H, W].

    The views go through the network one at a time: no operation of the network spans the batch,
    so each view's logits are what a batch of all views would give, and the working memory is one
    view's, not five views' (README, Memory).
    """
    config: ModelConfig = model.config
    plan = plan_views(pixels.shape[0], pixels.shape[1], config.protocol)
    device = next(model.parameters()).device
    resized = torch.from_numpy(resize_shortest_edge(pixels.cpu().numpy(), config.protocol))
    views = make_views(resized.to(device), plan, config)  # [V, 3, S, S]
    logits = torch.cat([model(views[v : v + 1], text_embeddings) for v in range(views.shape[0])])
    return merge_views(logits, plan)
