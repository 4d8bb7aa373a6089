"""Exact and near-duplicate questions, within and across levels and runs.

Questions are visited in a stable order (level, created_at, question_id): the first of a set of
duplicates is kept and every later one is dropped, naming the kept question it matched.

* ``exact_dup``: same normalised text (see :mod:`synthllm.curation.text`).
* ``near_dup``: MinHash over word shingles, candidates from datasketch's ``MinHashLSH``, then
  the exact Jaccard similarity of the two shingle sets must reach the threshold.

Signatures are datasketch's "affine32" MinHash (same permutations, same values as
``MinHash(hashfunc=...).update_batch``), computed for thousands of questions per numpy call:
per-question ``MinHash.bulk`` takes 56 CPU s per million questions, tokenising and signing
vectorised ~19 CPU s (bench/dedup.py, docs/curation.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
from datasketch import LeanMinHash, MinHash, MinHashLSH

from synthllm.curation.text import WordBatch, normalized_texts
from synthllm.settings import CurationSettings

MINHASH_SCHEME = "affine32"
MINHASH_SEED = 1
DEDUP_ORDER = ["level", "created_at", "question_id"]
# datasketch LSH band weights (false positive, false negative): candidates are verified exactly,
# so favour recall. At threshold 0.8 / 128 permutations: 14 bands of 9 rows, a pair with
# Jaccard 0.8 becomes a candidate with probability 0.87, 0.85 -> 0.975 (default weights: 0.40, 0.69).
LSH_WEIGHTS = (0.1, 0.9)
CURATION_COLUMNS = ["question_id", "check_name", "kept", "matched_id", "score", "detail"]
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, the pre-mix datasketch applies before its permutations."""
    s1, m1, s2, m2 = _FMIX32
    values = values ^ (values >> s1)
    values = values * m1
    values = values ^ (values >> s2)
    values = values * m2
    return values ^ (values >> s1)


@dataclass(frozen=True)
class MinHasher:
    """datasketch MinHash parameters, applied to many questions at once."""

    num_perm: int = 128
    shingle: int = 5
    seed: int = MINHASH_SEED

    @property
    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=MINHASH_SCHEME).permutations
        return a.astype(np.uint32), b.astype(np.uint32)

    def shingle_hashes(self, batch: WordBatch) -> tuple[np.ndarray, np.ndarray]:
        """32-bit shingle hashes (the values datasketch's ``hashfunc`` would return) and owners."""
        hashes, owners = batch.ngram_hashes(self.shingle, short_texts=True)
        return (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32), owners

    def signatures(self, batch: WordBatch, chunk_shingles: int = 131_072) -> np.ndarray:
        """``(len(batch), num_perm)`` uint32 signatures; rows of texts without words stay at the max value."""
        hashes, owners = self.shingle_hashes(batch)
        return self.signatures_of(hashes, owners, len(batch), chunk_shingles)

    def signatures_of(
        self, hashes: np.ndarray, owners: np.ndarray, rows: int, chunk_shingles: int = 131_072
    ) -> np.ndarray:
        """Signatures from 32-bit shingle hashes and their (sorted) owning row numbers."""
        a, b = self.permutations
        signatures = np.full((rows, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        mixed = _fmix32(hashes)
        for start in range(0, len(mixed), chunk_shingles):
            part = mixed[start : start + chunk_shingles]
            part_owners = owners[start : start + chunk_shingles]
            # (num_perm, shingles): reducing along the contiguous axis is ~7x faster than along axis 0
            permuted = a[:, None] * part[None, :]
            permuted += b[:, None]
            # owners are sorted, so each owner's shingles are one contiguous run
            firsts = np.flatnonzero(np.r_[True, part_owners[1:] != part_owners[:-1]])
            minima = np.minimum.reduceat(permuted, firsts, axis=1).T
            owner_rows = part_owners[firsts]
            signatures[owner_rows] = np.minimum(signatures[owner_rows], minima)
        return signatures


def shingle_sets(hashes: np.ndarray, owners: np.ndarray, rows: int) -> list[np.ndarray]:
    """Each row's distinct shingle hashes, sorted (for exact Jaccard of LSH candidates)."""
    order = np.lexsort((hashes, owners))
    hashes, owners = hashes[order], owners[order]
    distinct = np.r_[True, (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])]
    hashes, owners = hashes[distinct], owners[distinct]
    return np.split(hashes, np.searchsorted(owners, np.arange(1, rows)))


def jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """Jaccard similarity of two sorted arrays of distinct values."""
    shared = np.intersect1d(first, second, assume_unique=True).size
    return shared / (first.size + second.size - shared)


def _batches(frame: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for offset in range(0, frame.height, size):
        yield frame.slice(offset, size)


def order_questions(questions: pl.DataFrame) -> pl.DataFrame:
    """The stable order that decides which duplicate is kept."""
    return questions.select("question_id", "level", "created_at", "question").sort(DEDUP_ORDER, nulls_last=True)


def exact_duplicates(ordered: pl.DataFrame) -> pl.DataFrame:
    """``exact_dup`` rows for every question: dropped when an earlier question has the same normalised text."""
    keyed = ordered.with_columns(normalized_texts(ordered["question"]).alias("_normalized"))
    keyed = keyed.with_columns(
        pl.col("question_id").first().over("_normalized").alias("_first_id"),
        pl.col("level").first().over("_normalized").alias("_first_level"),
    )
    duplicate = pl.col("question_id") != pl.col("_first_id")
    return keyed.select(
        "question_id",
        pl.lit("exact_dup").alias("check_name"),
        (~duplicate).alias("kept"),
        pl.when(duplicate).then(pl.col("_first_id")).alias("matched_id"),
        pl.when(duplicate).then(pl.lit(1.0)).alias("score"),
        pl.when(duplicate).then(_level_detail(pl.col("level"), pl.col("_first_level"))).alias("detail"),
    )


def _level_detail(level: pl.Expr, matched_level: pl.Expr) -> pl.Expr:
    return pl.format("level {} duplicates level {}", level, matched_level)


def near_duplicates(ordered: pl.DataFrame, settings: CurationSettings, batch_size: int = 50_000) -> pl.DataFrame:
    """``near_dup`` rows for the given questions (in order): dropped when an earlier *kept* question
    has a word-shingle Jaccard similarity >= ``minhash_threshold``.

    MinHash LSH only proposes candidates; the score is the exact Jaccard of the two shingle sets,
    so decisions near the threshold do not depend on MinHash's estimation noise. The LSH bands are
    tuned to miss few pairs at the threshold (datasketch weights: false negatives 0.9), since
    extra candidates only cost one set intersection each.
    """
    hasher = MinHasher(num_perm=settings.minhash_num_perm, shingle=settings.minhash_shingle)
    lsh = MinHashLSH(
        threshold=settings.minhash_threshold, num_perm=settings.minhash_num_perm, weights=LSH_WEIGHTS
    )
    question_ids = ordered["question_id"].to_list()
    levels = ordered["level"].to_list()
    total = len(question_ids)
    kept = np.ones(total, dtype=bool)
    matched: list[str | None] = [None] * total
    scores: list[float | None] = [None] * total
    details: list[str | None] = [None] * total
    sets: list[np.ndarray] = []
    row = 0
    for batch in _batches(ordered, batch_size):
        words = WordBatch.from_texts(batch["question"])
        hashes, owners = hasher.shingle_hashes(words)
        signatures = hasher.signatures_of(hashes, owners, len(words))
        sets.extend(shingle_sets(hashes, owners, len(words)))
        for offset, has_words in enumerate(words.lengths > 0):
            if not has_words:
                details[row] = "no words after normalisation"
                row += 1
                continue
            minhash = LeanMinHash(seed=hasher.seed, hashvalues=signatures[offset], scheme=MINHASH_SCHEME)
            best_row, best_score = -1, -1.0
            for candidate in sorted(lsh.query(minhash)):  # ascending: ties go to the earliest question
                score = jaccard(sets[row], sets[candidate])
                if score > best_score:
                    best_row, best_score = candidate, score
            if best_score >= settings.minhash_threshold:
                kept[row] = False
                matched[row] = question_ids[best_row]
                scores[row] = best_score
                details[row] = f"level {levels[row]} near-duplicates level {levels[best_row]}"
            else:
                lsh.insert(row, minhash, check_duplication=False)
            row += 1
    return pl.DataFrame(
        {
            "question_id": question_ids,
            "check_name": ["near_dup"] * total,
            "kept": kept,
            "matched_id": pl.Series(matched, dtype=pl.String),
            "score": pl.Series(scores, dtype=pl.Float64),
            "detail": pl.Series(details, dtype=pl.String),
        }
    )


def dedup(questions: pl.DataFrame, settings: CurationSettings) -> pl.DataFrame:
    """Curation rows for all questions: ``exact_dup`` for each, ``near_dup`` for those that are
    not exact duplicates (an exact duplicate is already dropped; near-dup would only repeat it)."""
    ordered = order_questions(questions)
    exact = exact_duplicates(ordered)
    survivors = ordered.filter(exact["kept"])
    near = near_duplicates(survivors, settings)
    return pl.concat([exact, near], how="vertical_relaxed").select(CURATION_COLUMNS)
