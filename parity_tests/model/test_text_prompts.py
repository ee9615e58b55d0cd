"""Class names -> prompts -> folded class embeddings (escnet/text_prompts.py), on hand-made vectors."""

from __future__ import annotations

import re

import pytest
import torch

from escnet.text_prompts import (
    MAX_CLASS_NAME_BYTES,
    SINGLE_TEMPLATE,
    build_prompts,
    class_text_embeddings,
    fold_prompt_embeddings,
    split_synonyms,
    validate_class_names,
)


@pytest.mark.parametrize(
    ("name", "synonyms"),
    [
        ("person", ["person"]),
        ("sofa, couch", ["sofa", "couch"]),
        ("sofa,couch", ["sofa", "couch"]),
        ("  sofa ,  couch , ", ["sofa", "couch"]),
        ("sofa,, ,couch", ["sofa", "couch"]),
        ("traffic light", ["traffic light"]),
        ("  padded  ", ["padded"]),
    ],
)
def test_average_rule_splits_on_every_comma_blanks_stripped(name: str, synonyms: list[str]) -> None:
    assert split_synonyms(name, "average") == synonyms


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("person", ["person"]),
        ("sofa, couch", ["sofa"]),  # CAT-Seg's get_text_embeds: the part before the first ", "
        ("bag, handbag, pocketbook, purse", ["bag"]),
        ("sofa,couch", ["sofa,couch"]),  # no ", ": the whole name, comma included
        ("cat, ", ["cat"]),
        ("  padded  ", ["  padded  "]),  # as CAT-Seg formats it; CLIP's tokenizer strips blanks
    ],
)
def test_first_rule_keeps_what_catseg_encodes(name: str, encoded: list[str]) -> None:
    assert split_synonyms(name, "first") == encoded
    assert split_synonyms(name) == encoded  # the default rule is the official one


@pytest.mark.parametrize("name", [", cat", " , cat", "", ",,", " , , "])
def test_first_rule_refuses_a_blank_first_synonym(name: str) -> None:
    with pytest.raises(ValueError, match="is empty"):
        split_synonyms(name, "first")


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="synonym rule must be"):
        split_synonyms("cat", "all")


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ([], "class list is empty"),
        ((), "class list is empty"),
        ("person", "got one string"),
        (["person", ""], "'' is empty"),
        (["   "], "'   ' is empty"),
        (["person", " , ,"], "' , ,' is empty"),
        (["person", 3], "3 is not a string"),
        ([None], "None is not a string"),
        ([b"person"], "b'person' is not a string"),
        (["x" * (MAX_CLASS_NAME_BYTES + 1)], f"longer than {MAX_CLASS_NAME_BYTES} bytes"),
    ],
    ids=[
        "empty-list",
        "empty-tuple",
        "one-string",
        "empty",
        "blank",
        "commas",
        "int",
        "none",
        "bytes",
        "long",
    ],
)
def test_bad_class_names_refused_naming_the_problem(names: object, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as failure:
        validate_class_names(names)  # type: ignore[arg-type]
    assert problem in str(failure.value)
    with pytest.raises(ValueError):
        build_prompts(names)  # type: ignore[arg-type]


def test_longest_allowed_name_accepted() -> None:
    assert validate_class_names(["x" * MAX_CLASS_NAME_BYTES]) == ["x" * MAX_CLASS_NAME_BYTES]


def test_prompt_order_class_then_template_then_synonym() -> None:
    prompts = build_prompts(["sofa, couch", "cat"], templates=("a {}", "b {}"), rule="average")
    assert prompts.texts == ["a sofa", "a couch", "b sofa", "b couch", "a cat", "b cat"]
    assert prompts.class_index.tolist() == [0, 0, 0, 0, 1, 1]
    assert prompts.template_index.tolist() == [0, 0, 1, 1, 0, 1]
    assert (prompts.num_classes, prompts.num_templates) == (2, 2)


def test_single_template_is_catsegs() -> None:
    assert build_prompts(["dog"]).texts == ["A photo of a dog in the scene"]
    assert SINGLE_TEMPLATE == ("A photo of a {} in the scene",)


def test_folding_is_normalised_mean_of_normalised_synonyms() -> None:
    prompts = build_prompts(["sofa, couch", "cat", "a, b, c"], templates=("t1 {}", "t2 {}"), rule="average")
    # texts: t1 sofa, t1 couch, t2 sofa, t2 couch, t1 cat, t2 cat, t1 a, t1 b, t1 c, t2 a, t2 b, t2 c
    s = 2**-0.5
    embeddings = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # t1 sofa
            [0.0, 1.0, 0.0],  # t1 couch  -> mean (.5, .5, 0) -> (s, s, 0)
            [0.0, 0.0, 1.0],  # t2 sofa
            [0.0, 0.0, 1.0],  # t2 couch  -> (0, 0, 1)
            [0.6, 0.8, 0.0],  # t1 cat    -> itself
            [0.0, 0.6, 0.8],  # t2 cat    -> itself
            [1.0, 0.0, 0.0],  # t1 a
            [1.0, 0.0, 0.0],  # t1 b
            [0.0, 1.0, 0.0],  # t1 c      -> mean (2/3, 1/3, 0) -> (2, 1, 0) / sqrt(5)
            [s, s, 0.0],  # t2 a
            [-s, s, 0.0],  # t2 b
            [0.0, 0.0, 1.0],  # t2 c      -> mean (0, 2s/3, 1/3) -> (0, 2s, 1) / sqrt(3)
        ]
    )
    folded = fold_prompt_embeddings(prompts, embeddings)
    assert folded.shape == (3, 2, 3)  # [T, P, C]
    r5, r3 = 5**-0.5, 3**-0.5
    expected = torch.tensor(
        [
            [[s, s, 0.0], [0.0, 0.0, 1.0]],
            [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]],
            [[2 * r5, r5, 0.0], [0.0, 2 * s * r3, r3]],
        ]
    )
    torch.testing.assert_close(folded, expected)


def test_class_text_embeddings_folds_what_the_encoder_returns() -> None:
    """The whole path (average rule) with a fake tokenizer (text -> its index) and a normalised
    fake encoder."""
    names = ["road, street", "tree"]
    texts_seen: list[str] = []
    table = torch.tensor([[3.0, 4.0], [4.0, 3.0], [0.0, 2.0]])

    def tokenize(texts: list[str]) -> torch.Tensor:
        texts_seen.extend(texts)
        return torch.arange(len(texts))

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(table[tokens], dim=-1)

    out = class_text_embeddings(names, tokenize, encode, rule="average")
    assert texts_seen == [
        "A photo of a road in the scene",
        "A photo of a street in the scene",
        "A photo of a tree in the scene",
    ]
    s = 2**-0.5
    # road (0.6, 0.8) + street (0.8, 0.6) -> (s, s); tree (0, 1).
    torch.testing.assert_close(out, torch.tensor([[[s, s]], [[0.0, 1.0]]]))


def test_first_rule_returns_the_encoders_embeddings_untouched() -> None:
    """One text per class: CAT-Seg normalises once; the embeddings come back bit for bit."""
    texts_seen: list[str] = []
    table = torch.nn.functional.normalize(
        torch.randn(2, 5, generator=torch.Generator().manual_seed(0)), dim=-1
    )

    def tokenize(texts: list[str]) -> torch.Tensor:
        texts_seen.extend(texts)
        return torch.arange(len(texts))

    out = class_text_embeddings(["road, street", "tree"], tokenize, lambda tokens: table[tokens])
    assert texts_seen == ["A photo of a road in the scene", "A photo of a tree in the scene"]
    assert torch.equal(out, table.unsqueeze(1))
