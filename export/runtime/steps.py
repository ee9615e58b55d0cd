"""The Python steps between graphs, as plain functions on numpy arrays keyed by contract names.

The Triton Python models and the in-process ORT chain both call these, so the served chain and the
direct chain run the same code between graphs. They import no torch: numpy, Pillow and the CLIP
tokenizer only (each served step is its own process, and torch costs ~1 GiB in each). The model
package's PyTorch functions stay the reference they are held to (parity_tests/export/):

- views and their merge: escnet_export.runtime.numpy_views (reference escnet/image_views.py), after the
  torch-free shortest-edge resize and view plan of escnet/view_plan.py;
- pseudo points: escnet_export.runtime.numpy_pseudo_points (reference escnet/pseudo_prompts.py, to the bit);
- text: escnet_export.runtime.clip_tokenizer (open_clip's tokenizer, to the token), the synonym rule of
  escnet/class_names.py, and the fold of escnet/text_prompts.py in numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from escnet.class_names import split_synonyms, validate_class_names
from escnet.config import ModelConfig
from escnet.view_plan import ViewPlan, plan_views, resize_shortest_edge
from escnet_export.runtime import numpy_pseudo_points, numpy_views
from escnet_export.runtime.clip_tokenizer import ClipTokenizer
from escnet_export.runtime.request_checks import check_image_format


def preprocess(image: np.ndarray, config: ModelConfig) -> dict[str, np.ndarray]:
    """IMAGE [H, W, 3] uint8 -> IMAGES [V, 3, S, S] float32, VIEW_PLAN [9] int32 (config.protocol)."""
    pixels = np.asarray(image)
    check_image_format(pixels)  # the request's edge (preprocess) has checked it against the limits too
    plan = plan_views(pixels.shape[0], pixels.shape[1], config.protocol)
    views = numpy_views.make_views(resize_shortest_edge(pixels, config.protocol), plan, config)
    return {"IMAGES": views, "VIEW_PLAN": plan.encode()}


def view_count(config: ModelConfig) -> int:
    """Views per image under the config's protocol (5 for the sliding window, else 1)."""
    return plan_views(config.clip.image_size, config.clip.image_size, config.protocol).num_views


def postprocess(logits: np.ndarray, view_plan: np.ndarray) -> dict[str, np.ndarray]:
    """LOGITS [V, T, h, w], VIEW_PLAN [9] -> LABELS [H, W] int32, SCORES [T, H, W] float32."""
    probabilities = numpy_views.merge_views(np.asarray(logits, dtype=np.float32), ViewPlan.decode(view_plan))
    return {"LABELS": numpy_views.class_labels(probabilities), "SCORES": probabilities}


def pseudo_points(score: np.ndarray, config: ModelConfig) -> dict[str, np.ndarray]:
    """SCORE [B, T, G, G] -> POINTS [B, T, K, 2], POINT_LABELS [B, T, K], PSEUDO_MASK [B, T, G, G]."""
    return numpy_pseudo_points.pseudo_points(np.asarray(score), config.clip.image_size, config.pseudo_prompts)


def clip_tokenizer(config: ModelConfig) -> ClipTokenizer:
    """The variant's CLIP tokenizer: texts -> TOKENS [N, 77] int32; ``.encode(text)`` -> BPE ids."""
    return ClipTokenizer(context_length=config.clip.context_length)


def text_embeddings(
    class_names: Sequence[str],
    tokenize: Callable[[list[str]], np.ndarray],
    encode: Callable[[np.ndarray], np.ndarray],
    templates: Sequence[str],
    rule: str,
) -> np.ndarray:
    """CLASS_NAMES -> TEXT_EMBEDDINGS [T, P, C]: prompt texts (class, then template, then synonym)
    as TOKENS [N, 77] int32 through the text encoder (``encode``: -> TEXT_FEATURES [N, C],
    L2-normalised), then per (class, template) the synonyms' normalised mean; with one text per
    slot (the "first" rule) the features as they are, as CAT-Seg takes them."""
    names = validate_class_names(class_names, rule)
    texts, slots = [], []
    for c, name in enumerate(names):
        for p, template in enumerate(templates):
            for synonym in split_synonyms(name, rule):
                texts.append(template.format(synonym))
                slots.append(c * len(templates) + p)
    features = np.asarray(encode(np.asarray(tokenize(texts), dtype=np.int32)), dtype=np.float32)  # [N, C]
    count = len(names) * len(templates)
    if features.shape[0] == count:
        return features.reshape(len(names), len(templates), -1)
    summed = np.zeros((count, features.shape[1]), dtype=np.float32)
    np.add.at(summed, np.asarray(slots), features)
    norms = np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)  # F.normalize's eps
    return (summed / norms).reshape(len(names), len(templates), -1)
