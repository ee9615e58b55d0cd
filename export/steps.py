"""The Python steps between graphs, as plain functions on numpy arrays keyed by contract names.

The Triton Python models and the in-process ORT chain both call these, so the served chain and the
direct chain run the same code between graphs. All heavy lifting is the model package's own
functions (pseudo prompts, view planning, prompt folding); these adapt them to the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from escnet.config import ModelConfig
from escnet.image_views import ViewPlan, make_views, merge_views, plan_views, resize_shortest_edge
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet.segmenter import validate_image
from escnet.text_prompts import build_prompts, fold_prompt_embeddings, validate_class_names


def preprocess(image: np.ndarray, config: ModelConfig) -> dict[str, np.ndarray]:
    """IMAGE [H, W, 3] uint8 -> IMAGES [V, 3, S, S] float32, VIEW_PLAN [9] int32 (config.protocol)."""
    pixels = validate_image(image).numpy()
    plan = plan_views(pixels.shape[0], pixels.shape[1], config.protocol)
    views = make_views(torch.from_numpy(resize_shortest_edge(pixels, config.protocol)), plan, config)
    return {"IMAGES": views.numpy(), "VIEW_PLAN": plan.encode()}


def view_count(config: ModelConfig) -> int:
    """Views per image under the config's protocol (5 for the sliding window, else 1)."""
    return plan_views(config.clip.image_size, config.clip.image_size, config.protocol).num_views


def clip_tokenizer(config: ModelConfig) -> Callable:
    """The variant's CLIP tokenizer: texts -> TOKENS [N, 77]; ``.encode(text)`` -> its BPE ids."""
    import open_clip

    return open_clip.get_tokenizer(config.clip.open_clip_name)


def postprocess(logits: np.ndarray, view_plan: np.ndarray) -> dict[str, np.ndarray]:
    """LOGITS [V, T, h, w], VIEW_PLAN [9] -> LABELS [H, W] int32, SCORES [T, H, W] float32."""
    probabilities = merge_views(torch.from_numpy(logits), ViewPlan.decode(view_plan))
    return {"LABELS": class_labels(probabilities).numpy(), "SCORES": probabilities.numpy()}


def class_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """PROBABILITIES [T, H, W] -> [H, W] int32: ``probabilities.argmax(dim=0)``, the first class
    on ties, for finite values.

    A running maximum over the T class planes, each pass a contiguous H x W sweep: 59 ms instead of
    165 ms for torch's argmax over the outer axis at T=150, 512 x 512 (scripts/benchmark_steps.py,
    2-core CI machine).
    """
    best = probabilities[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.int32)
    for index in range(1, probabilities.shape[0]):
        plane = probabilities[index]
        labels.masked_fill_(plane > best, index)
        torch.maximum(best, plane, out=best)
    return labels


def pseudo_points(score: np.ndarray | torch.Tensor, config: ModelConfig) -> dict[str, np.ndarray]:
    """SCORE [B, T, G, G] -> POINTS [B, T, K, 2], POINT_LABELS [B, T, K], PSEUDO_MASK [B, T, G, G]."""
    maps = torch.as_tensor(score)
    b, t, g = maps.shape[0], maps.shape[1], maps.shape[2]
    prompts = generate_pseudo_prompts(
        maps.reshape(b * t, g, g), image_size=config.clip.image_size, config=config.pseudo_prompts
    )
    k = prompts.points.shape[1]
    return {
        "POINTS": prompts.points.reshape(b, t, k, 2).float().cpu().numpy(),
        "POINT_LABELS": prompts.labels.reshape(b, t, k).float().cpu().numpy(),
        "PSEUDO_MASK": prompts.mask.reshape(b, t, g, g).float().cpu().numpy(),
    }


def text_embeddings(
    class_names: Sequence[str],
    tokenize: Callable[[list[str]], torch.Tensor],
    encode: Callable[[np.ndarray], np.ndarray],
    templates: Sequence[str],
    rule: str,
) -> np.ndarray:
    """CLASS_NAMES -> TEXT_EMBEDDINGS [T, P, C]: prompts, TOKENS [N, 77] int32 through the text
    encoder (``encode``: TOKENS -> TEXT_FEATURES [N, C]), synonyms by ``rule`` (first / average)."""
    prompts = build_prompts(validate_class_names(class_names, rule), templates, rule)
    tokens = tokenize(prompts.texts).to(torch.int32).numpy()
    features = torch.from_numpy(encode(tokens))
    return fold_prompt_embeddings(prompts, features).numpy()
