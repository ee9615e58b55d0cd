"""Image-text cost volume and the choice of classes that class attention sees."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cost_volume(image_features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel feature with every class prompt embedding.

    image_features:  [B, C, H, W]
    text_embeddings: [T, P, C]
    returns          [B, P, T, H, W]
    """
    image = F.normalize(image_features, dim=1)
    text = F.normalize(text_embeddings, dim=-1)
    batch, channels, height, width = image.shape
    classes, templates = text.shape[0], text.shape[1]
    flat_text = text.reshape(classes * templates, channels)  # [T*P, C]
    flat_image = image.reshape(batch, channels, height * width)  # [B, C, H*W]
    corr = torch.matmul(flat_text, flat_image)  # [B, T*P, H*W]
    corr = corr.reshape(batch, classes, templates, height, width)  # [B, T, P, H, W]
    return corr.transpose(1, 2)  # [B, P, T, H, W]


def class_keep_mask(corr: torch.Tensor, max_classes: int) -> torch.Tensor:
    """Which classes class attention sees: all when T <= max_classes, else the max_classes with the
    highest peak correlation (CAT-Seg's top-k on the max over templates and pixels).

    Written without branches or data-dependent shapes so that it exports as one graph: a class is
    kept when fewer than max_classes classes beat it (ties go to the lower index).

    corr: [B, P, T, H, W] -> [B, T] float32 in {0, 1}
    """
    if max_classes <= 0:
        return torch.ones(corr.shape[0], corr.shape[2], dtype=torch.float32, device=corr.device)
    peak = corr.transpose(1, 2).flatten(2).amax(dim=-1)  # [B, T]
    # Class indices as a cumulative sum, not arange(T): ONNX shape inference keeps the axis T.
    index = torch.ones_like(peak).cumsum(dim=1)  # [B, T]: 1..T
    higher = peak.unsqueeze(1) > peak.unsqueeze(2)  # [B, T(self), T(other)]: other beats self
    tied_before = (peak.unsqueeze(1) == peak.unsqueeze(2)) & (index.unsqueeze(1) < index.unsqueeze(2))
    rank = (higher | tied_before).to(torch.float32).sum(dim=-1)  # [B, T]
    return (rank < max_classes).to(torch.float32)


def mean_over_templates(corr: torch.Tensor) -> torch.Tensor:
    """The one-channel class score map S_1 that prompts the first ESC block.

    corr: [B, P, T, H, W] -> [B, T, H, W]
    """
    return corr.mean(dim=1)
