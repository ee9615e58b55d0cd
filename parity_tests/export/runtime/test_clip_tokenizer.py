"""The torch-free CLIP tokenizer (export/runtime/clip_tokenizer.py) against open_clip's own tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import open_clip
import pytest
from parity_support import (
    VOCABULARY_FILE,  # noqa: E402
    assert_runs_without_torch,
)

from escnet_export.runtime.clip_tokenizer import ClipTokenizer, bpe_vocabulary_path

TEMPLATE = "A photo of a {} in the scene"
OPEN_CLIP_NAME = "ViT-B-16-quickgelu"

CRAFTED = [
    "",
    " ",
    "\t\n  \r\n",
    "A Photo Of A CAT",
    "MiXeD CaSe NaMeS and UPPER",
    "many    blanks\tand\ttabs\nand\n\nnewlines   ",
    "  leading and trailing blanks  ",
    "fish &amp; chips",
    "double escaped &amp;amp; entity, &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &#x263A;",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m Stra\u00dfe",
    "cafe\u0301 (combining accent)",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "emoji \U0001f600\U0001f408\u200d\u2b1b \U0001f1eb\U0001f1f7 \u2764\ufe0f",
    "digits 0123456789 and 3.14159, 1e-10, 12,345,678",
    "punctuation!? ... --- ;; :: (brackets) [square] {curly} <angle> @#$%^&*_+=|\\/~`",
    "it's they're we've I'm you'll he'd don't",
    "IT'S THEY'RE WE'VE",
    "building, edifice",
    "road, route, street",
    "person, individual, someone, somebody, mortal, soul",
    "mojibake: caf\u00c3\u00a9 \u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d",
    "fullwidth \uff21\uff22\uff23 \uff11\uff12\uff13",
    "ligature \ufb01 and \u2160 roman",
    "control\x00chars\x07here\x1b",
    "soft\u00adhyphen zero\u200bwidth non\u00a0breaking",
    "<start_of_text> special <end_of_text> tokens <START_OF_TEXT>",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 300,
    " ".join(["word"] * 100),  # longer than 77 tokens: cut, the end token last
    ", ".join(f"name{i}" for i in range(60)),
    "\U0001f600" * 40,  # 4 UTF-8 bytes each: many byte tokens
]


@pytest.fixture(scope="module")
def open_clip_tokenizer() -> object:
    return open_clip.get_tokenizer(OPEN_CLIP_NAME)


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def vocabulary_prompts() -> list[str]:
    names = [line.strip() for line in VOCABULARY_FILE.read_text(encoding="utf-8").splitlines()]
    return [TEMPLATE.format(name) for name in names if name]


def test_vocabulary_file_is_open_clips() -> None:
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None and spec.submodule_search_locations
    assert bpe_vocabulary_path().parent == Path(list(spec.submodule_search_locations)[0])


def test_vocabulary_prompts_equal_open_clip(tokenizer: ClipTokenizer, open_clip_tokenizer: object) -> None:
    prompts = vocabulary_prompts()
    assert len(prompts) >= 150
    tokens = tokenizer(prompts)
    expected = open_clip_tokenizer(prompts).numpy()  # type: ignore[operator]
    assert tokens.dtype == np.int32 and tokens.shape == (len(prompts), 77)
    np.testing.assert_array_equal(tokens, expected.astype(np.int32))
    for prompt in prompts:
        assert tokenizer.encode(prompt) == open_clip_tokenizer.encode(prompt)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", CRAFTED, ids=range(len(CRAFTED)))
def test_crafted_texts_equal_open_clip(
    text: str, tokenizer: ClipTokenizer, open_clip_tokenizer: object
) -> None:
    for prompt in (text, TEMPLATE.format(text)):
        np.testing.assert_array_equal(
            tokenizer([prompt]),
            open_clip_tokenizer([prompt]).numpy().astype(np.int32),  # type: ignore[operator]
        )
        ids = tokenizer.encode(prompt)
        expected = open_clip_tokenizer.encode(prompt)  # type: ignore[attr-defined]
        assert len(ids) == len(expected)
        assert ids == expected


def test_batch_of_everything_equals_open_clip(tokenizer: ClipTokenizer, open_clip_tokenizer: object) -> None:
    texts = CRAFTED + vocabulary_prompts()[:20]
    np.testing.assert_array_equal(
        tokenizer(texts),
        open_clip_tokenizer(texts).numpy().astype(np.int32),  # type: ignore[operator]
    )


def test_truncation_keeps_the_end_token(tokenizer: ClipTokenizer) -> None:
    long_text = " ".join(["word"] * 100)
    row = tokenizer([long_text])[0]
    assert len(tokenizer.encode(long_text)) == 100
    assert row[0] == tokenizer.start_id and row[-1] == tokenizer.end_id
    assert (row != 0).all()
    exactly = " ".join(["word"] * 75)  # 75 + start + end = 77: nothing cut
    assert tokenizer([exactly])[0][-1] == tokenizer.end_id
    assert tokenizer([exactly])[0][-2] == tokenizer.encode("word")[0]


@pytest.mark.parametrize("context_length", [8, 16, 77])
def test_other_context_lengths_equal_open_clip(context_length: int, open_clip_tokenizer: object) -> None:
    texts = ["a short one", " ".join(["longer"] * 40), ""]
    expected = open_clip_tokenizer(texts, context_length=context_length)  # type: ignore[operator]
    tokens = ClipTokenizer(context_length=context_length)(texts)
    np.testing.assert_array_equal(tokens, expected.numpy().astype(np.int32))


def test_a_single_string_is_one_row(tokenizer: ClipTokenizer) -> None:
    np.testing.assert_array_equal(tokenizer("a cat"), tokenizer(["a cat"]))
    assert tokenizer([]).shape == (0, 77)


def test_vocabulary_size(tokenizer: ClipTokenizer, open_clip_tokenizer: object) -> None:
    assert tokenizer.vocab_size == open_clip_tokenizer.vocab_size == 49408  # type: ignore[attr-defined]
    assert (tokenizer.start_id, tokenizer.end_id) == (49406, 49407)


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from escnet_export.runtime.clip_tokenizer import ClipTokenizer\n"
        "tokens = ClipTokenizer()(['A photo of a cat in the scene'])\n"
        "assert tokens.shape == (1, 77) and tokens[0, 0] == 49406\n"
    )
    assert_runs_without_torch(code)
