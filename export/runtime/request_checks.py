"""The checks at the ensembles' edge: what a request may ask, refused with a message naming the problem.

The preprocess step checks the image, the text embedder the class names, and postprocess T x H x W
against the score budget before it makes the full-size scores; each reads its limits
(:class:`~escnet_export.contract.RequestLimits`) from its model config. Triton itself refuses a
wrong IMAGE dtype, rank or channel count before any of this runs (the configs declare UINT8
[-1, -1, 3]); the image checks repeat it for direct callers.

Messages quote at most :data:`QUOTED_CHARS` characters of a name: a log line never carries a whole
input. Only numpy here (and the synonym rule of escnet.text_prompts): the checks are unit-tested
without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from escnet.class_names import split_synonyms
from escnet_export.contract import RequestLimits
from escnet_export.runtime.memory_model import GIB, MemoryEstimate

QUOTED_CHARS = 40  # of a class name, in a message


class RequestError(ValueError):
    """A problem with the request itself (bad input), reported to the client as it is.

    ``reason``: which rule refused it, one of REFUSAL_REASONS (the label of the steps' refusal
    metric, step_models/metrics.py).
    """

    def __init__(self, message: str, reason: str = "bad_request") -> None:
        super().__init__(message)
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}: one of {REFUSAL_REASONS}")
        self.reason = reason


# Every rule a request can break, as the refusal metric labels it.
REFUSAL_REASONS = (
    "bad_request",  # a rule without a label of its own
    "missing_input",
    "image_format",  # dtype, rank, channels, empty
    "image_size",  # under min_side or over max_pixels
    "score_budget",  # classes x pixels over max_score_elements
    "memory_budget",  # the estimated peak over the server's per-request budget
    "class_list",  # not 1-D, empty, over max_classes
    "class_name",  # over max_name_bytes, not UTF-8, blank
    "duplicate_class",
    "prompt_tokens",  # a prompt over CLIP's context
)


class RequestCancelled(Exception):
    """The client gave up on the request (timeout, disconnect, cancel); stop working on it."""


def quoted(name: str) -> str:
    """A class name as a message shows it: repr, cut to QUOTED_CHARS characters."""
    return repr(name[:QUOTED_CHARS]) + ("..." if len(name) > QUOTED_CHARS else "")


def check_image_format(image: np.ndarray) -> None:
    """IMAGE [H, W, 3] uint8 RGB and not empty, else RequestError naming what is wrong with it."""
    if image.dtype != np.uint8:
        raise RequestError(f"IMAGE must be uint8 RGB, got dtype {image.dtype}", "image_format")
    if image.ndim != 3 or image.shape[2] != 3:
        raise RequestError(f"IMAGE must have shape [H, W, 3] (RGB), got {list(image.shape)}", "image_format")
    height, width = int(image.shape[0]), int(image.shape[1])
    if height == 0 or width == 0:
        raise RequestError(f"image is empty: shape {list(image.shape)}", "image_format")


def check_image(image: np.ndarray, limits: RequestLimits) -> None:
    """IMAGE [H, W, 3] uint8 within min_side and max_pixels, else RequestError."""
    check_image_format(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    if min(height, width) < limits.min_side:
        raise RequestError(
            f"image of {height}x{width} pixels is too small: each side must be at least {limits.min_side}",
            "image_size",
        )
    if height * width > limits.max_pixels:
        raise RequestError(
            f"image of {height}x{width} = {height * width} pixels exceeds the limit of {limits.max_pixels}",
            "image_size",
        )


def check_score_budget(height: int, width: int, num_classes: int, limits: RequestLimits) -> None:
    """T x H x W within max_score_elements (the full-size per-class scores), else RequestError."""
    elements = num_classes * height * width
    if elements > limits.max_score_elements:
        raise RequestError(
            f"{num_classes} classes on a {height}x{width} image need {elements} score values, more than "
            f"the limit of {limits.max_score_elements} (classes x pixels): send fewer classes or a "
            "smaller image",
            "score_budget",
        )


def check_memory_budget(
    estimate: MemoryEstimate, budget: float, classes: int, height: int, width: int
) -> None:
    """The request's estimated peak memory within the budget, else RequestError saying what to change."""
    if estimate.peak > budget:
        raise RequestError(
            f"{classes} classes on a {height}x{width} image need an estimated {estimate.describe()} of "
            f"memory, more than this server's budget of {budget / GIB:.1f} GiB per request: send fewer "
            "classes (the estimate grows with them) or a smaller image, or raise the budget "
            "(memory_budget_gib in the preprocess config)",
            "memory_budget",
        )


def check_memory_available(estimate: MemoryEstimate, available: float) -> None:
    """The request's estimated peak within the memory the machine has free now, else MemoryError
    (answered UNAVAILABLE: the server's condition, worth a retry, not the client's fault). Within
    the budget but not free now means other requests, or regions a large request left behind,
    hold it; the step watchdog gives idle steps' regions back within seconds when memory is short."""
    if estimate.peak > available:
        raise MemoryError(
            f"this request needs an estimated {estimate.peak / GIB:.1f} GiB and the machine has "
            f"{available / GIB:.1f} GiB available now"
        )


def synonym_key(name: str, rule: str = "first") -> tuple[str, ...]:
    """The identity of a class name for the duplicate check, lower-cased, blanks collapsed.

    "average": its synonyms (split on every comma), which are what CLIP encodes of it.
    "first": the whole name. CLIP encodes only the part before ", ", so "bag" and "bag, handbag"
    get the same scores; CAT-Seg's evaluation runs such lists (ADE-847 has 9 such pairs) and the
    first of them wins every tie, so they are allowed; only the same name twice is refused.
    Empty when nothing of the name would be encoded.
    """
    try:
        synonyms = split_synonyms(name, rule)
    except ValueError:
        return ()
    parts = synonyms if rule == "average" else [name]
    normalised = (" ".join(part.lower().split()) for part in parts)
    return tuple(part for part in normalised if part)


def decode_class_names(raw: np.ndarray, limits: RequestLimits, rule: str = "first") -> list[str]:
    """CLASS_NAMES BYTES [T] -> str names, or a RequestError naming the problem.

    Refused: not 1-D; no class; more than max_classes; a name over max_name_bytes (UTF-8), not
    UTF-8, blank or with nothing to encode under the synonym rule (", cat" under "first", commas
    only); the same class twice (see :func:`synonym_key`: identical scores, an ambiguous label).
    """
    if raw.ndim != 1:
        raise RequestError(
            f"CLASS_NAMES must be a 1-D list of strings, got shape {list(raw.shape)}", "class_list"
        )
    if raw.shape[0] == 0:
        raise RequestError("the class list is empty: give at least one class name", "class_list")
    if raw.shape[0] > limits.max_classes:
        raise RequestError(
            f"{raw.shape[0]} classes requested, more than the maximum of {limits.max_classes}", "class_list"
        )
    names: list[str] = []
    seen: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(raw):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        if len(data) > limits.max_name_bytes:
            shown = quoted(data[: QUOTED_CHARS * 4].decode("utf-8", errors="replace"))
            raise RequestError(
                f"class name {index} ({shown}) is {len(data)} bytes long, more than the limit of "
                f"{limits.max_name_bytes} bytes (names are refused, never truncated)",
                "class_name",
            )
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(
                f"class name {index} is not valid UTF-8 (byte {error.start}: {error.reason})", "class_name"
            ) from None
        key = synonym_key(name, rule)
        if not key:
            raise RequestError(
                f"class name {index} ({quoted(name)}) is empty or blank, or has nothing before its "
                "first ', ' (the part CLIP encodes)",
                "class_name",
            )
        if key in seen:
            raise RequestError(
                f"class names {seen[key]} and {index} ({quoted(name)}) are the same class: duplicates "
                "get identical scores and make the label ambiguous; send each class once",
                "duplicate_class",
            )
        seen[key] = index
        names.append(name)
    return names


def check_prompt_tokens(
    names: Sequence[str],
    templates: Sequence[str],
    count_tokens: Callable[[str], int],
    token_length: int,
    rule: str = "first",
) -> None:
    """Every prompt text (template x synonym) fits CLIP's context, else RequestError.

    count_tokens: text -> its tokens including the start and end tokens. CLIP's tokenizer would cut
    a longer prompt silently; we refuse it instead.
    """
    for index, name in enumerate(names):
        for synonym in split_synonyms(name, rule):
            for template in templates:
                tokens = count_tokens(template.format(synonym))
                if tokens > token_length:
                    raise RequestError(
                        f"class name {index} ({quoted(name)}) makes a prompt of {tokens} tokens; CLIP "
                        f"reads at most {token_length} (names are refused, never truncated)",
                        "prompt_tokens",
                    )
