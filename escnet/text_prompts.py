"""Class names -> prompt texts -> class text embeddings [T, P, C].

A class name with commas ("sofa, couch") may list synonyms. What is encoded of it is the
protocol's synonym rule (``InferenceProtocol.synonyms``):

- ``"first"`` (CAT-Seg's official forward, get_text_embeds): only the part before the first ", "
  (comma and blank) is encoded; a name without ", " is encoded whole, commas included.
- ``"average"`` (ours): the name is split on every comma, each synonym put into every template,
  encoded and L2-normalised; the synonyms of one template are averaged and normalised again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from escnet.class_names import (
    MAX_CLASS_NAME_BYTES,
    SINGLE_TEMPLATE,
    split_synonyms,
    validate_class_names,
)

__all__ = [
    "MAX_CLASS_NAME_BYTES",
    "SINGLE_TEMPLATE",
    "PromptBatch",
    "build_prompts",
    "class_text_embeddings",
    "fold_prompt_embeddings",
    "split_synonyms",
    "validate_class_names",
]


@dataclass(frozen=True)
class PromptBatch:
    """Every prompt text of a class list, flattened, and how to fold the embeddings back.

    texts:       the N prompt strings, class-major, then template, then synonym
    class_index: [N] class of each text;  template_index: [N] template of each text
    """

    texts: list[str]
    class_index: torch.Tensor
    template_index: torch.Tensor
    num_classes: int
    num_templates: int


def build_prompts(
    class_names: Sequence[str], templates: Sequence[str] = SINGLE_TEMPLATE, rule: str = "first"
) -> PromptBatch:
    names = validate_class_names(class_names, rule)
    texts: list[str] = []
    class_index: list[int] = []
    template_index: list[int] = []
    for c, name in enumerate(names):
        for p, template in enumerate(templates):
            for synonym in split_synonyms(name, rule):
                texts.append(template.format(synonym))
                class_index.append(c)
                template_index.append(p)
    return PromptBatch(
        texts=texts,
        class_index=torch.tensor(class_index),
        template_index=torch.tensor(template_index),
        num_classes=len(names),
        num_templates=len(templates),
    )


def fold_prompt_embeddings(prompts: PromptBatch, embeddings: torch.Tensor) -> torch.Tensor:
    """Average the normalised embeddings of synonyms per (class, template) and renormalise.

    embeddings: [N, C] L2-normalised, one per prompt text -> [T, P, C] L2-normalised. With one text
    per (class, template) (the "first" rule) the embeddings are returned as they are: CAT-Seg
    normalises once, and a second normalisation would move the last bit.
    """
    slots = prompts.num_classes * prompts.num_templates
    if embeddings.shape[0] == slots:  # one text per slot, in slot order (build_prompts' order)
        return embeddings.reshape(prompts.num_classes, prompts.num_templates, -1)
    slot = prompts.class_index * prompts.num_templates + prompts.template_index  # [N]
    summed = torch.zeros(slots, embeddings.shape[-1], dtype=embeddings.dtype, device=embeddings.device)
    summed.index_add_(0, slot.to(embeddings.device), embeddings)
    folded = F.normalize(summed, dim=-1)  # the mean's direction equals the sum's
    return folded.reshape(prompts.num_classes, prompts.num_templates, -1)  # [T, P, C]


def class_text_embeddings(
    class_names: Sequence[str],
    tokenize: Callable[[list[str]], torch.Tensor],
    encode_tokens: Callable[[torch.Tensor], torch.Tensor],
    templates: Sequence[str] = SINGLE_TEMPLATE,
    rule: str = "first",
) -> torch.Tensor:
    """Class names -> [T, P, C] embeddings, given a tokenizer and a normalised text encoder."""
    prompts = build_prompts(class_names, templates, rule)
    embeddings = encode_tokens(tokenize(prompts.texts))  # [N, C]
    return fold_prompt_embeddings(prompts, embeddings)
