"""Normalised words and word n-gram hashes, vectorised over many texts at once.

Dedup and decontamination must see a question the same way, so both go through here:
NFKC, lower case, runs of word characters (``\\w+``) as words. Punctuation, LaTeX
backslashes and spacing differences disappear; digits stay (``2.5`` -> ``2 5``).
Words are hashed with blake2b (stable across Python / Polars versions, so a rerun on the
same questions makes the same decisions); n-grams combine their words' hashes in numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

WORD_PATTERN = r"\w+"
# Odd 64-bit multiplier for the polynomial that combines word hashes into an n-gram hash.
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def word_lists(texts: pl.Series | Sequence[str]) -> pl.Series:
    """Each text as its list of normalised words (a ``list[str]`` Series)."""
    series = texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)
    return series.str.normalize("NFKC").str.to_lowercase().str.extract_all(WORD_PATTERN)


def normalized_texts(texts: pl.Series | Sequence[str]) -> pl.Series:
    """The exact-match key: normalised words joined by single spaces."""
    return word_lists(texts).list.join(" ")


def mix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads polynomial sums over all bits."""
    shift, m1, m2 = _FMIX64
    values = values ^ (values >> shift)
    values = values * m1
    values = values ^ (values >> shift)
    values = values * m2
    return values ^ (values >> shift)


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class WordBatch:
    """Word hashes of many texts, flat, with each text's start and length."""

    hashes: np.ndarray  # uint64, every word of every text in order
    starts: np.ndarray  # int64, index of each text's first word in ``hashes``
    lengths: np.ndarray  # int64, words per text (0 for a text without words)

    @classmethod
    def from_texts(cls, texts: pl.Series | Sequence[str]) -> WordBatch:
        words = word_lists(texts)
        lengths = words.list.len().to_numpy().astype(np.int64)
        flat = words.explode().drop_nulls()  # an empty list explodes to one null
        vocabulary = flat.unique()
        vocabulary_hashes = pl.Series([_word_hash(w) for w in vocabulary.to_list()], dtype=pl.UInt64)
        hashes = flat.replace_strict(vocabulary, vocabulary_hashes, return_dtype=pl.UInt64).to_numpy()
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(np.ascontiguousarray(hashes, dtype=np.uint64), starts, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def ngram_hashes(self, n: int, short_texts: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every window of ``n`` consecutive words, and the text each belongs to.

        With ``short_texts`` a text of fewer than ``n`` (but at least one) words gives one
        window of all its words, so short texts are still represented; without it they give none.
        Windows are in text order, so each text's windows are contiguous.
        """
        return self.ngram_hashes_by_size([n], short_texts)[n]

    def ngram_hashes_by_size(
        self, sizes: Sequence[int], short_texts: bool = False
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`ngram_hashes` for several sizes in one pass: a window of n+1 words extends
        the window of n words starting at the same position by one word."""
        if not sizes or min(sizes) < 1:
            raise ValueError(f"n-gram sizes must be >= 1, got {list(sizes)}")
        wanted = set(sizes)
        total = len(self.hashes)
        text_of_word = np.repeat(np.arange(len(self.lengths), dtype=np.int64), self.lengths)
        end_of_word = (self.starts + self.lengths)[text_of_word]
        position = np.arange(total, dtype=np.int64)
        first_of_short = position == self.starts[text_of_word]
        combined = np.zeros(total, dtype=np.uint64)
        result: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for size in range(1, max(wanted) + 1):
            index = position + size - 1
            inside = index < end_of_word
            combined[inside] = combined[inside] * _NGRAM_MULTIPLIER + self.hashes[index[inside]]
            if size in wanted:
                keep = position + size <= end_of_word
                if short_texts:
                    keep |= (self.lengths < size)[text_of_word] & first_of_short
                result[size] = (mix64(combined[keep]), text_of_word[keep])
        return result
