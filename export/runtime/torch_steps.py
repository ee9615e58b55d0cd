"""The Python steps that follow a graph, on torch tensors on whatever device they arrive on.

On a GPU the graphs' outputs are GPU tensors. A step that reads them as numpy pays a copy to the
host at every step boundary, and another back for the next graph. These functions take the
tensors as they come (the step models read them through DLPack: triton_serving.step_models.base)
and compute on their device with the model package's own torch code, the reference that the numpy steps of
``escnet_export.runtime.steps`` are held to:

- pseudo_points: ``escnet.pseudo_prompts.generate_pseudo_prompts`` (float64, like the numpy port);
- postprocess: ``escnet.image_views.merge_views`` and the argmax over classes (the first class on
  ties, as ``numpy_views.class_labels``).

The inputs and outputs are the numpy steps' (same contract names, shapes and dtypes). On a CPU
deployment the numpy steps stay in use: each step is its own process, and torch costs ~1 GiB in
each (README, Memory); the served repository picks per runtime (escnet_export.triton_serving).
"""

from __future__ import annotations

import torch

from escnet.config import ModelConfig
from escnet.image_views import merge_views
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet.view_plan import ViewPlan

__all__ = ["postprocess", "pseudo_points"]


def pseudo_points(score: torch.Tensor, config: ModelConfig) -> dict[str, torch.Tensor]:
    """SCORE [B, T, G, G] -> POINTS [B, T, K, 2], POINT_LABELS [B, T, K], PSEUDO_MASK [B, T, G, G].

    All float32 on ``score``'s device; POINT_LABELS is 1 for a point and -1 for padding.
    """
    prompts = generate_pseudo_prompts(score, image_size=config.clip.image_size, config=config.pseudo_prompts)
    return {
        "POINTS": prompts.points.contiguous(),
        "POINT_LABELS": prompts.labels.to(torch.float32),
        "PSEUDO_MASK": prompts.mask.contiguous(),
    }


def postprocess(logits: torch.Tensor, view_plan: torch.Tensor) -> dict[str, torch.Tensor]:
    """LOGITS [V, T, h, w], VIEW_PLAN [9] int32 -> LABELS [H, W] int32, SCORES [T, H, W] float32.

    VIEW_PLAN is read on the host (nine integers); LOGITS stay on their device.
    """
    plan = ViewPlan.decode(view_plan.cpu().numpy())
    probabilities = merge_views(logits.to(torch.float32), plan)  # [T, H, W]
    labels = probabilities.argmax(dim=0).to(torch.int32)  # the first class on ties
    return {"LABELS": labels, "SCORES": probabilities.contiguous()}
