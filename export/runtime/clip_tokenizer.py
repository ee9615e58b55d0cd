"""CLIP's byte-level BPE tokenizer without torch: the tokens of ``open_clip.get_tokenizer(name)``.

open_clip 3.x's ``SimpleTokenizer`` (the tokenizer of every OpenAI-layout CLIP variant here) returns
torch tensors, and importing open_clip imports torch, about 1 GiB in every Triton Python process
that tokenizes. This module gives the same tokens as a numpy array, from the same vocabulary file
open_clip ships, found without importing the package.

What open_clip's default tokenizer does, and this one with it:

1. Cleaning ("lower"): ``ftfy.fix_text``, HTML entities unescaped twice, blanks stripped, every run
   of whitespace made one space, lower case.
2. Pre-tokenisation by CLIP's pattern: the special tokens, English contractions, runs of letters,
   single digits, runs of other non-blank characters (case-insensitive).
3. Each piece as UTF-8 bytes mapped to printable characters (GPT-2's byte table), merged by the
   ranked BPE merges, the last symbol marked ``</w>``; a piece that spells a special token
   (``<start_of_text>``, ``<end_of_text>``) is that token.
4. ``<start_of_text>`` + ids + ``<end_of_text>``, zero-padded to the context length; a longer
   sequence is cut to the context length and its last id replaced by ``<end_of_text>``.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex  # type: ignore[import-untyped]  # no stubs installed

__all__ = ["ClipTokenizer", "bpe_vocabulary_path"]

VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
# The merges CLIP uses: the file's first line is a header, then 49152 - 256 - 2 merges, which with
# the 256 byte symbols, their 256 word-final forms and the two special tokens give 49408 ids.
NUM_MERGES = 49152 - 256 - 2
START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
WORD_END = "</w>"


def bpe_vocabulary_path() -> Path:
    """The BPE merges file open_clip ships, located without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed: its BPE vocabulary file cannot be found")
    for location in spec.submodule_search_locations:
        path = Path(location) / VOCABULARY_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{VOCABULARY_FILE} not found in {list(spec.submodule_search_locations)}")


def byte_symbols() -> list[tuple[int, str]]:
    """(byte, the printable character standing for it) for all 256 bytes, in vocabulary order.

    GPT-2's reversible byte table: the printable Latin-1 bytes stand for themselves and come first,
    in byte order; the other 68 (controls, blanks, soft hyphen) follow in byte order, taking the
    characters from U+0100 on.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(256) if byte not in set(printable)]
    return [(byte, chr(byte)) for byte in printable] + [
        (byte, chr(256 + index)) for index, byte in enumerate(others)
    ]


def clean_text(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Texts -> CLIP token ids [N, context_length] int32, equal to open_clip's SimpleTokenizer."""

    def __init__(self, context_length: int = 77, vocabulary_path: str | Path | None = None) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must hold the start and end tokens, got {context_length}")
        self.context_length = context_length
        path = Path(vocabulary_path) if vocabulary_path is not None else bpe_vocabulary_path()
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        table = byte_symbols()
        symbols = [symbol for _, symbol in table]
        vocabulary = symbols + [symbol + WORD_END for symbol in symbols]
        vocabulary += ["".join(merge) for merge in merges] + [START_TOKEN, END_TOKEN]
        self.encoder: dict[str, int] = {token: index for index, token in enumerate(vocabulary)}
        self.ranks: dict[tuple[str, str], int] = {
            (merge[0], merge[1]): rank for rank, merge in enumerate(merges)
        }
        self.byte_symbol = [symbol for _, symbol in sorted(table)]  # indexed by the byte
        self.start_id = self.encoder[START_TOKEN]
        self.end_id = self.encoder[END_TOKEN]
        self.specials = {START_TOKEN: self.start_id, END_TOKEN: self.end_id}
        self.pattern = regex.compile(
            f"{START_TOKEN}|{END_TOKEN}"
            r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._piece_ids = lru_cache(maxsize=65536)(self._bpe_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _merge(self, piece: str) -> list[str]:
        """One pre-token (byte symbols) -> its BPE symbols, the last one ending in ``</w>``."""
        word = [*piece[:-1], piece[-1] + WORD_END]
        while len(word) > 1:
            pairs = list(zip(word[:-1], word[1:], strict=True))
            rank, first, second = min((self.ranks.get(pair, NUM_MERGES), *pair) for pair in pairs)
            if rank == NUM_MERGES:  # no pair left that CLIP merges
                break
            merged: list[str] = []
            index = 0
            while index < len(word):  # every non-overlapping (first, second), left to right
                if index + 1 < len(word) and word[index] == first and word[index + 1] == second:
                    merged.append(first + second)
                    index += 2
                else:
                    merged.append(word[index])
                    index += 1
            word = merged
        return word

    def _bpe_ids(self, piece: str) -> tuple[int, ...]:
        if piece in self.specials:
            return (self.specials[piece],)
        encoded = "".join(self.byte_symbol[byte] for byte in piece.encode("utf-8"))
        return tuple(self.encoder[symbol] for symbol in self._merge(encoded))

    def encode(self, text: str) -> list[int]:
        """One text -> its BPE ids, without the start and end tokens (open_clip's ``encode``)."""
        ids: list[int] = []
        for piece in self.pattern.findall(clean_text(text)):
            ids.extend(self._piece_ids(piece))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> [N, context_length] int32: start, ids, end, zeros; cut to fit with the end last."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.end_id
            tokens[row, : len(ids)] = ids
        return tokens
