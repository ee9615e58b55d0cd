"""The edge checks of the ensembles (escnet_export.runtime.request_checks) on their own, without a server.

The served test of every case is parity_tests/export/triton_serving/test_served_ensemble.py;
these pin the rules (what is refused, what passes) and that the limits travel through the model
config parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import DEFAULT_VARIANTS, REQUEST_LIMITS, RequestLimits
from escnet_export.runtime.request_checks import (
    REFUSAL_REASONS,
    RequestError,
    check_image,
    check_prompt_tokens,
    check_score_budget,
    decode_class_names,
)

TOKEN_LENGTH = MODEL_CONFIGS[DEFAULT_VARIANTS["escnet"]].clip.context_length  # CLIP's context
LIMITS = RequestLimits(min_side=8, max_pixels=100 * 100, max_score_elements=3 * 50 * 50, max_classes=4)


def names(*items: str | bytes) -> np.ndarray:
    return np.array([i.encode() if isinstance(i, str) else i for i in items], dtype=np.object_)


def test_limits_round_trip_through_config_parameters() -> None:
    assert RequestLimits.from_parameters(REQUEST_LIMITS.parameters()) == REQUEST_LIMITS
    changed = RequestLimits.from_parameters({"max_classes": "7", "variant": "escnet_vitb16_384"})
    assert changed.max_classes == 7 and changed.max_pixels == REQUEST_LIMITS.max_pixels


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((20, 20, 3), np.float32), "uint8"),
        (np.zeros((20, 20), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((20, 20, 4), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((0, 20, 3), np.uint8), "image is empty"),
        (np.zeros((7, 20, 3), np.uint8), "too small: each side must be at least 8"),
        (np.zeros((101, 100, 3), np.uint8), "10100 pixels exceeds the limit of 10000"),
    ],
)
def test_bad_images_are_refused(image: np.ndarray, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        check_image(image, LIMITS)


def test_images_at_the_limits_pass() -> None:
    check_image(np.zeros((8, 8, 3), np.uint8), LIMITS)
    check_image(np.zeros((100, 100, 3), np.uint8), LIMITS)


def test_score_budget() -> None:
    check_score_budget(50, 50, 3, LIMITS)
    with pytest.raises(RequestError, match="4 classes on a 50x50 image need 10000 score values"):
        check_score_budget(50, 50, 4, LIMITS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (names(), "class list is empty"),
        (names("a", "b", "c", "d", "e"), "5 classes requested, more than the maximum of 4"),
        (names("cat", ""), r"class name 1 \(''\) is empty or blank"),
        (names("cat", "   \t"), "is empty or blank"),
        (names(" , ,"), "is empty or blank"),
        (names("cat", b"\xff\xfe"), "class name 1 is not valid UTF-8"),
        (names("x" * 201), "is 201 bytes long, more than the limit of 200 bytes"),
        (names("\u00e9" * 101), "is 202 bytes long"),  # 101 characters, 202 UTF-8 bytes
        (names("cat", "dog", "Cat "), "class names 0 and 2 .* are the same class"),
        (names("sofa, couch", "Sofa,  Couch"), "class names 0 and 1"),
        (names(", cat"), "nothing before its first ', '"),
        (np.array([[b"cat"]], dtype=np.object_), "1-D list"),
    ],
)
def test_bad_class_lists_are_refused(raw: np.ndarray, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        decode_class_names(raw, LIMITS)


def test_average_rule_refuses_the_same_synonyms_written_twice() -> None:
    with pytest.raises(RequestError, match="class names 0 and 1"):
        decode_class_names(names("sofa, couch", "sofa,couch"), LIMITS, "average")
    with pytest.raises(RequestError, match="is empty or blank"):
        decode_class_names(names(" , ,"), LIMITS, "average")


def test_first_rule_allows_names_that_share_their_first_synonym() -> None:
    # ADE-847 lists "bag" and "bag, handbag, pocketbook, purse": CAT-Seg's evaluation encodes both
    # as "bag", and the first wins every tie. Such lists must pass; "sofa,couch" is its own name.
    listed = ["bag", "bag, handbag, pocketbook, purse", "sofa, couch", "sofa,couch"]
    assert decode_class_names(names(*listed), RequestLimits(), "first") == listed


def test_messages_quote_at_most_a_piece_of_a_name() -> None:
    with pytest.raises(RequestError) as error:
        decode_class_names(names("y" * 500), LIMITS)
    assert "y" * 41 not in str(error.value)


def test_good_class_lists_pass_unchanged() -> None:
    good = ["cat", "sofa, couch", "couch", "x" * 200, "caf\u00e9"]
    assert decode_class_names(names(*good), RequestLimits()) == good


def test_prompts_over_clip_context_are_refused() -> None:
    def count(text: str) -> int:  # one token per word, plus start and end
        return len(text.split()) + 2

    check_prompt_tokens(["a cat"], ["A photo of a {}"], count, TOKEN_LENGTH)
    with pytest.raises(RequestError, match="makes a prompt of 82 tokens; CLIP reads at most 77"):
        check_prompt_tokens(["ok", "w " * 76], ["A photo of a {}"], count, TOKEN_LENGTH)
    # Only what the rule encodes is counted: a long second synonym is no prompt under "first".
    long_second = "cat, " + "w " * 76
    check_prompt_tokens([long_second], ["A photo of a {}"], count, TOKEN_LENGTH, "first")
    with pytest.raises(RequestError, match="makes a prompt of"):
        check_prompt_tokens([long_second], ["A photo of a {}"], count, TOKEN_LENGTH, "average")


def test_a_refusal_names_a_known_reason() -> None:
    """The reason is the label of the refusal metric: only the listed ones exist."""
    assert RequestError("no image").reason == "bad_request"
    assert RequestError("empty image", "image_format").reason == "image_format"
    with pytest.raises(ValueError, match="unknown refusal reason 'typo'"):
        RequestError("x", "typo")
    assert len(set(REFUSAL_REASONS)) == len(REFUSAL_REASONS)
