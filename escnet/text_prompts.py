"""Class names -> prompt texts -> class text embeddings.

A class name with commas ("sofa, couch") is several synonyms: each synonym is put into every
template, encoded, L2-normalised; the synonyms of one template are averaged and normalised again
(CAT-Seg's rule). The result for T classes and P templates is [T, P, C].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SINGLE_TEMPLATE: tuple[str, ...] = ("A photo of a {} in the scene",)
MAX_CLASS_NAME_CHARS = 200  # CLIP reads 77 tokens; a longer name is refused, not silently cut


def split_synonyms(class_name: str) -> list[str]:
    """ "sofa, couch" -> ["sofa", "couch"]; blanks around names are dropped."""
    synonyms = [part.strip() for part in class_name.split(",")]
    synonyms = [part for part in synonyms if part]
    if not synonyms:
        raise ValueError(f"class name {class_name!r} is empty")
    return synonyms


def validate_class_names(class_names: Sequence[str]) -> list[str]:
    """Check a request's class list: non-empty, each a non-blank string of bounded length."""
    if isinstance(class_names, str):
        raise ValueError("class names must be a list of strings, got one string")
    names = list(class_names)
    if not names:
        raise ValueError("the class list is empty: give at least one class name")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"class name {name!r} is not a string")
        if len(name) > MAX_CLASS_NAME_CHARS:
            raise ValueError(f"class name {name[:40]!r}... is longer than {MAX_CLASS_NAME_CHARS} characters")
        split_synonyms(name)
    return names


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


def build_prompts(class_names: Sequence[str], templates: Sequence[str] = SINGLE_TEMPLATE) -> PromptBatch:
    names = validate_class_names(class_names)
    texts: list[str] = []
    class_index: list[int] = []
    template_index: list[int] = []
    for c, name in enumerate(names):
        for p, template in enumerate(templates):
            for synonym in split_synonyms(name):
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

    embeddings: [N, C] L2-normalised, one per prompt text -> [T, P, C] L2-normalised
    """
    slot = prompts.class_index * prompts.num_templates + prompts.template_index  # [N]
    slots = prompts.num_classes * prompts.num_templates
    summed = torch.zeros(slots, embeddings.shape[-1], dtype=embeddings.dtype, device=embeddings.device)
    summed.index_add_(0, slot.to(embeddings.device), embeddings)
    folded = F.normalize(summed, dim=-1)  # the mean's direction equals the sum's
    return folded.reshape(prompts.num_classes, prompts.num_templates, -1)  # [T, P, C]


def class_text_embeddings(
    class_names: Sequence[str],
    tokenize: Callable[[list[str]], torch.Tensor],
    encode_tokens: Callable[[torch.Tensor], torch.Tensor],
    templates: Sequence[str] = SINGLE_TEMPLATE,
) -> torch.Tensor:
    """Class names -> [T, P, C] embeddings, given a tokenizer and a normalised text encoder."""
    prompts = build_prompts(class_names, templates)
    embeddings = encode_tokens(tokenize(prompts.texts))  # [N, C]
    return fold_prompt_embeddings(prompts, embeddings)
