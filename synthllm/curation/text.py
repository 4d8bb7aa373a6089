"""Normalised tokens and token n-gram hashes, vectorised over many texts at once.

Dedup and decontamination must see a question the same way, so both go through here:
NFKC, lower case, Unicode minus and fraction slash unified with ``-`` and ``/``, then tokens:
LaTeX commands (``\\frac``), numbers with their decimal point (``2.5``), runs of letters, and
each operator or relation (``+ - × * / ÷ ^ = < > ≤ ≥ ≠``) on its own. So "x + 3 = 7" and
"x − 3 = 7" differ, while spacing, case and other punctuation do not count.
Tokens are hashed with blake2b (stable across Python / Polars versions, so a rerun on the
same questions makes the same decisions); n-grams combine their tokens' hashes in numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

TOKEN_PATTERN = r"\\[a-z]+|\d+(?:\.\d+)?|[^\W\d_]+|[-+×*/÷^=<>≤≥≠]"
# the tokens that carry the mathematics: LaTeX commands, numbers, operators and relations
MATHS_TOKEN = r"^(?:\\|\d|[-+×*/÷^=<>≤≥≠])"
# characters NFKC leaves alone that mean an operator the pattern knows
_UNIFIED = {"\u2212": "-", "\u2044": "/"}
# Odd 64-bit multiplier for the polynomial that combines token hashes into an n-gram hash.
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def _as_series(texts: pl.Series | Sequence[str]) -> pl.Series:
    return texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)


def word_lists(texts: pl.Series | Sequence[str]) -> pl.Series:
    """Each text as its list of normalised tokens (a ``list[str]`` Series)."""
    series = _as_series(texts)
    # NFKC is the slowest step and changes nothing in ASCII text: apply it where it can matter
    non_ascii = np.flatnonzero((series.str.len_bytes() != series.str.len_chars()).fill_null(False).to_numpy())
    if len(non_ascii):
        series = series.scatter(non_ascii, series.gather(non_ascii).str.normalize("NFKC"))
    series = series.str.replace_many(list(_UNIFIED), list(_UNIFIED.values()))
    return series.str.to_lowercase().str.extract_all(TOKEN_PATTERN)


def normalized_texts(texts: pl.Series | Sequence[str]) -> pl.Series:
    """The exact-match key: normalised tokens joined by single spaces."""
    return word_lists(texts).list.join(" ")


def mix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads polynomial sums over all bits."""
    shift, m1, m2 = _FMIX64
    values = values ^ (values >> shift)
    values = values * m1
    values = values ^ (values >> shift)
    values = values * m2
    return values ^ (values >> shift)


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    """Cached: batches share most of their vocabulary, and blake2b costs ~0.5 µs a token."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class WordBatch:
    """Token hashes of many texts, flat, with each text's start and length."""

    hashes: np.ndarray  # uint64, every token of every text in order
    starts: np.ndarray  # int64, index of each text's first token in ``hashes``
    lengths: np.ndarray  # int64, tokens per text (0 for a text without tokens)
    maths: np.ndarray | None  # bool, per token: a LaTeX command, number, operator or relation

    @classmethod
    def from_texts(cls, texts: pl.Series | Sequence[str], maths: bool = True) -> WordBatch:
        """``maths=False`` skips the per-token maths flags (only ``text_hashes(only_maths=True)`` reads them)."""
        words = word_lists(texts)
        lengths = words.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = words.explode().drop_nulls()  # an empty list explodes to one null
        vocabulary = flat.unique()
        vocabulary_hashes = pl.Series([_word_hash(w) for w in vocabulary.to_list()], dtype=pl.UInt64)
        hashes = flat.replace_strict(vocabulary, vocabulary_hashes, return_dtype=pl.UInt64).to_numpy()
        maths_flags = flat.str.contains(MATHS_TOKEN).to_numpy() if maths else None
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(np.ascontiguousarray(hashes, dtype=np.uint64), starts, lengths, maths_flags)

    def __len__(self) -> int:
        return len(self.lengths)

    def text_hashes(self, only_maths: bool = False) -> np.ndarray:
        """One order-sensitive 64-bit hash per text (the exact-duplicate key; 0 for no tokens).
        ``only_maths``: of the text's maths tokens alone (numbers, operators, relations, LaTeX)."""
        hashes, owners = self.hashes, self.owners()
        if only_maths:
            if self.maths is None:
                raise ValueError("this WordBatch was built with maths=False")
            hashes, owners = hashes[self.maths], owners[self.maths]
        lengths = np.bincount(owners, minlength=len(self.lengths))
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        position = (np.arange(len(hashes), dtype=np.int64) - starts[owners]).astype(np.uint64)
        terms = mix64(hashes ^ mix64(position + np.uint64(1)))
        sums = np.zeros(len(lengths), dtype=np.uint64)
        non_empty = lengths > 0
        if non_empty.any():
            sums[non_empty] = np.add.reduceat(terms, starts[non_empty])
        return np.where(non_empty, mix64(sums ^ lengths.astype(np.uint64)), np.uint64(0))

    def ngram_hashes(self, n: int, short_texts: bool = True, mix: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every window of ``n`` consecutive tokens, and the text each belongs to.

        With ``short_texts`` a text of fewer than ``n`` (but at least one) tokens gives one
        window of all its tokens, so short texts are still represented; without it they give none.
        Windows are in text order, so each text's windows are contiguous. ``mix=False`` leaves the
        raw polynomial values (their high bits are uniform; the low bits are not).
        """
        return self.ngram_hashes_by_size([n], short_texts, mix)[n]

    def windows(self, max_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(size, raw window hashes, tokens left)`` for sizes 1..max_size, one entry per token
        position: the window of ``size`` tokens starting there is real where tokens left >= size.
        The window of n+1 tokens extends the window of n by one token: array slices, no masks.
        The hash array is reused from one size to the next."""
        total = len(self.hashes)
        tokens_left = (self.starts + self.lengths)[self.owners()] - np.arange(total, dtype=np.int64)
        padded = np.concatenate([self.hashes, np.zeros(max_size, dtype=np.uint64)])
        combined = self.hashes.copy()
        for size in range(1, max_size + 1):
            if size > 1:
                combined *= _NGRAM_MULTIPLIER
                combined += padded[size - 1 : size - 1 + total]
            yield size, combined, tokens_left

    def owners(self) -> np.ndarray:
        """The text of each token position."""
        return np.repeat(np.arange(len(self.lengths), dtype=np.int64), self.lengths)

    def ngram_hashes_by_size(
        self, sizes: Sequence[int], short_texts: bool = False, mix: bool = True
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`ngram_hashes` for several sizes in one pass over :meth:`windows`."""
        if not sizes or min(sizes) < 1:
            raise ValueError(f"n-gram sizes must be >= 1, got {list(sizes)}")
        wanted = set(sizes)
        text_of_word = self.owners()
        whole = np.zeros(len(self.lengths), dtype=np.uint64)  # a short text's window of all its tokens
        result: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for size, combined, tokens_left in self.windows(max(wanted)):
            of_this_length = self.lengths == size
            whole[of_this_length] = combined[self.starts[of_this_length]]
            if size not in wanted:
                continue
            keep = tokens_left >= size
            windows = combined
            if short_texts:
                short = (self.lengths > 0) & (self.lengths < size)
                windows = combined.copy()
                windows[self.starts[short]] = whole[short]
                keep[self.starts[short]] = True
            hashes = windows[keep]
            result[size] = (mix64(hashes) if mix else hashes, text_of_word[keep])
        return result
