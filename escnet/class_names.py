"""Class names and the synonym rule: what of a name goes into the prompt template.

No torch here, so the served text embedder and the request checks share the rule with the model
without importing it.

- ``"first"`` (CAT-Seg's official forward, get_text_embeds): only the part before the first ", "
  (comma and blank) is encoded; a name without ", " is encoded whole, commas included.
- ``"average"`` (ours): the name is split on every comma; each synonym is encoded, and the
  normalised embeddings are averaged (escnet/text_prompts.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from escnet.config import MAX_CLASS_NAME_BYTES, SINGLE_TEMPLATE

__all__ = ["MAX_CLASS_NAME_BYTES", "SINGLE_TEMPLATE", "split_synonyms", "validate_class_names"]


def split_synonyms(class_name: str, rule: str = "first") -> list[str]:
    """The texts of one class name that go into the templates, by the synonym rule.

    "first":   "sofa, couch" -> ["sofa"]; "sofa,couch" -> ["sofa,couch"] (CAT-Seg splits on ", ")
    "average": "sofa, couch" -> ["sofa", "couch"]; blanks around synonyms dropped
    A name with nothing left to encode is a ValueError.
    """
    if rule == "first":
        synonyms = [class_name.split(", ")[0]]  # as CAT-Seg formats it; CLIP's tokenizer strips
    elif rule == "average":
        synonyms = [part.strip() for part in class_name.split(",")]
    else:
        raise ValueError(f"synonym rule must be 'first' or 'average', got {rule!r}")
    synonyms = [part for part in synonyms if part.replace(",", " ").strip()]  # not blanks and commas only
    if not synonyms:
        raise ValueError(f"class name {class_name!r} is empty")
    return synonyms


def validate_class_names(class_names: Sequence[str], rule: str = "first") -> list[str]:
    """Check a request's class list: non-empty, each a non-blank string of bounded length."""
    if isinstance(class_names, str):
        raise ValueError("class names must be a list of strings, got one string")
    names = list(class_names)
    if not names:
        raise ValueError("the class list is empty: give at least one class name")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"class name {name!r} is not a string")
        if len(name.encode()) > MAX_CLASS_NAME_BYTES:
            raise ValueError(f"class name {name[:40]!r}... is longer than {MAX_CLASS_NAME_BYTES} bytes")
        split_synonyms(name, rule)
    return names
