"""Exact and near-duplicate questions, within and across levels and runs.

Questions are visited in an order fixed by their content: (level, hash of the normalised text,
question_id). The first of a set of duplicates is kept and every later one is dropped, naming the
kept question it matched; the choice does not depend on when or where a question was written.

* ``exact_dup``: same normalised text (see :mod:`synthllm.curation.text`), compared by a 64-bit
  hash of the token sequence.
* ``near_dup``: banded MinHash LSH over token shingles, without an index: every question's band
  keys are columns of one numpy array, each band is sorted once and equal keys give candidate
  pairs; a pair is a near-duplicate when both have the same maths tokens in the same order
  (numbers, operators, relations, LaTeX commands: "x + 3 = 7" and "x - 3 = 7" are two problems
  however long the shared wording) and the exact Jaccard similarity of the two shingle sets
  reaches the threshold.

At 10M questions the band keys take ``10M x bands x 8`` bytes (1.1 GB at 14 bands) and nothing
else grows with the corpus but the questions themselves (bench/dedup.py, docs/curation.md).
Signatures are datasketch's "affine32" MinHash (same permutations, same values as
``MinHash(hashfunc=...).update_batch``), computed for thousands of questions per numpy call.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
from synthllm.curation.text import WordBatch, mix64
from synthllm.settings import CurationSettings

MINHASH_SCHEME = "affine32"
MINHASH_SEED = 1
# LSH band weights (false positive, false negative), as datasketch's MinHashLSH takes them:
# candidates are verified exactly, so favour recall. At threshold 0.8 / 128 permutations: 14 bands
# of 9 rows; a pair with Jaccard 0.8 becomes a candidate with probability 0.87, 0.85 -> 0.975.
LSH_WEIGHTS = (0.1, 0.9)
# A band group of many questions pairs each member with the group's first and this many before it
# (all pairs of a group of thousands would be quadratic; near-duplicates sit next to each other).
BAND_NEIGHBOURS = 4
CURATION_COLUMNS = ["question_id", "check_name", "kept", "matched_id", "score", "detail"]
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_BAND_MULTIPLIER = np.uint64(0xC2B2AE3D27D4EB4F)


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, the pre-mix datasketch applies before its permutations."""
    s1, m1, s2, m2 = _FMIX32
    values = values ^ (values >> s1)
    values = values * m1
    values = values ^ (values >> s2)
    values = values * m2
    return values ^ (values >> s1)


@lru_cache(maxsize=16)
def lsh_bands(threshold: float, num_perm: int, weights: tuple[float, float] = LSH_WEIGHTS) -> tuple[int, int]:
    """(bands, rows per band) minimising the weighted false positive + false negative areas
    (datasketch's ``MinHashLSH`` parameter choice, so the two agree)."""

    below, above = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    best, best_error = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            false_positive = np.trapezoid(1 - (1 - below**r) ** b, below)
            false_negative = np.trapezoid((1 - above**r) ** b, above)
            error = weights[0] * false_positive + weights[1] * false_negative
            if error < best_error:
                best, best_error = (b, r), error
    return best


@dataclass(frozen=True)
class MinHasher:
    """datasketch MinHash parameters, applied to many questions at once."""

    num_perm: int = 128
    shingle: int = 5
    seed: int = MINHASH_SEED

    @property
    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        from datasketch import MinHash  # imported here: it pulls in scipy (~100 MB) for its LSH

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


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(len(signatures), bands)`` uint64: one hash of each band's ``rows`` signature values."""
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        key = keys[:, band]
        for column in signatures[:, band * rows : (band + 1) * rows].T:
            key *= _BAND_MULTIPLIER
            key += column
        keys[:, band] = mix64(key)
    return keys


@dataclass(frozen=True)
class Fingerprints:
    """What dedup needs of each question, in input order: exact key, whether it has tokens, band keys."""

    text_hashes: np.ndarray  # uint64
    maths_hashes: np.ndarray  # uint64, of the maths tokens alone
    has_words: np.ndarray  # bool
    bands: np.ndarray  # (questions, bands) uint64


def fingerprints(
    texts: pl.Series, settings: CurationSettings, batch_size: int = 50_000, workers: int = 2
) -> Fingerprints:
    """Tokenise, sign and band every text, ``batch_size`` at a time on ``workers`` threads
    (polars and numpy release the GIL for the heavy steps)."""
    hasher = MinHasher(num_perm=settings.minhash_num_perm, shingle=settings.minhash_shingle)
    bands, rows = lsh_bands(settings.minhash_threshold, settings.minhash_num_perm)

    count = len(texts)
    prints = Fingerprints(
        np.zeros(count, np.uint64), np.zeros(count, np.uint64), np.zeros(count, bool),
        np.zeros((count, bands), np.uint64),
    )

    def one(start: int) -> None:  # fills its rows of the preallocated arrays (no second copy)
        words = WordBatch.from_texts(texts.slice(start, batch_size))
        end = start + len(words)
        prints.text_hashes[start:end] = words.text_hashes()
        prints.maths_hashes[start:end] = words.text_hashes(only_maths=True)
        prints.has_words[start:end] = words.lengths > 0
        prints.bands[start:end] = band_keys(hasher.signatures(words), bands, rows)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(0, count, batch_size)))
    return prints


def content_order(questions: pl.DataFrame, text_hashes: np.ndarray) -> np.ndarray:
    """Row numbers in keep-first order: (level, text hash, question_id), whatever the input order."""
    keyed = pl.DataFrame(
        {"level": questions["level"], "text_hash": text_hashes, "question_id": questions["question_id"]}
    ).with_row_index("row")
    return keyed.sort(["level", "text_hash", "question_id"], nulls_last=True)["row"].to_numpy()


def first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For rows in keep-first order: the position of the first row with the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    first = order[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    result = np.empty(len(keys), dtype=np.int64)
    result[order] = first
    return result


def candidate_pairs(
    bands: np.ndarray, rows: np.ndarray | None = None, neighbours: int = BAND_NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) positions in ``rows`` (rows of ``bands`` in keep-first order; default all)
    sharing a band key, distinct. One band column is gathered at a time, so memory stays small."""
    found = []
    rows = np.arange(len(bands)) if rows is None else rows
    count = len(rows)
    for band in range(bands.shape[1]):
        column = bands[rows, band]
        order = np.argsort(column, kind="stable")  # equal keys stay in keep-first order
        keys = column[order]
        starts = np.r_[True, keys[1:] != keys[:-1]]
        group_first = np.maximum.accumulate(np.where(starts, np.arange(count), 0))
        for distance in range(1, neighbours + 1):
            later = np.flatnonzero(keys[distance:] == keys[:-distance]) + distance
            found.append(order[later - distance] * count + order[later])
        later = np.flatnonzero(np.arange(count) - group_first > neighbours)
        found.append(order[group_first[later]] * count + order[later])
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    return pairs // max(count, 1), pairs % max(count, 1)


def exact_jaccard(
    texts: pl.Series, earlier: np.ndarray, later: np.ndarray, hasher: MinHasher, chunk: int = 50_000
) -> np.ndarray:
    """Jaccard similarity of the shingle sets of ``texts[earlier[i]]`` and ``texts[later[i]]``
    (only the texts of these rows are tokenised again, ``chunk`` pairs at a time)."""
    parts = [
        _pair_jaccard(texts, earlier[start : start + chunk], later[start : start + chunk], hasher)
        for start in range(0, len(earlier), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def _pair_jaccard(texts: pl.Series, earlier: np.ndarray, later: np.ndarray, hasher: MinHasher) -> np.ndarray:
    rows = np.unique(np.concatenate([earlier, later]))
    words = WordBatch.from_texts(texts.gather(rows))
    hashes, owners = hasher.shingle_hashes(words)
    shingles = pl.DataFrame({"row": rows[owners], "shingle": hashes}).unique()
    sizes = shingles.group_by("row").len("size")
    pairs = pl.DataFrame({"a": earlier, "b": later}).with_row_index("pair")
    shared = (
        pairs.join(shingles, left_on="a", right_on="row")
        .join(shingles, left_on=["b", "shingle"], right_on=["row", "shingle"])
        .group_by("pair")
        .len("shared")
    )
    scored = (
        pairs.join(shared, on="pair", how="left")
        .join(sizes.rename({"row": "a", "size": "size_a"}), on="a", how="left")
        .join(sizes.rename({"row": "b", "size": "size_b"}), on="b", how="left")
        .sort("pair")
        .select(
            pl.col("shared").fill_null(0)
            / (pl.col("size_a") + pl.col("size_b") - pl.col("shared").fill_null(0))
        )
    )
    return scored.to_series().to_numpy()


def keep_first(
    count: int, earlier: np.ndarray, later: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy keep-first over verified pairs: a row is dropped when an earlier *kept* row is
    similar enough. Returns kept, the matched row (-1) and its score (NaN), per row."""
    kept = np.ones(count, dtype=bool)
    matched = np.full(count, -1, dtype=np.int64)
    best = np.full(count, np.nan)
    similar = scores >= threshold
    # by later row, then best score first, then earliest: the first kept partner is the match
    order = np.lexsort((earlier[similar], -scores[similar], later[similar]))
    for a, b, score in zip(earlier[similar][order], later[similar][order], scores[similar][order], strict=True):
        if kept[b] and kept[a]:
            kept[b], matched[b], best[b] = False, a, score
    return kept, matched, best


def _level_detail(verb: str) -> pl.Expr:
    matched_level = pl.col("level").gather(pl.col("_match").clip(0))
    return pl.format("level {} {} level {}", pl.col("level"), pl.lit(verb), matched_level)


def _check_rows(ordered: pl.DataFrame, check: str, matched: np.ndarray, scores: np.ndarray, verb: str) -> pl.DataFrame:
    """Curation rows for ``ordered`` questions; ``matched``: position of the kept question (-1: kept)."""
    dropped = pl.col("_match") >= 0
    return ordered.with_columns(pl.Series("_match", matched), pl.Series("_score", scores)).select(
        "question_id",
        pl.lit(check).alias("check_name"),
        (~dropped).alias("kept"),
        pl.when(dropped).then(pl.col("question_id").gather(pl.col("_match").clip(0))).alias("matched_id"),
        pl.when(dropped).then(pl.col("_score")).alias("score"),
        pl.when(dropped).then(_level_detail(verb))
        .when(~pl.col("_has_words")).then(pl.lit("no words after normalisation"))
        .alias("detail"),
    )


def dedup(questions: pl.DataFrame, settings: CurationSettings, batch_size: int = 50_000) -> pl.DataFrame:
    """Curation rows for all questions, in keep-first order: ``exact_dup`` for each, ``near_dup``
    for those that are not exact duplicates (an exact duplicate is already dropped)."""
    prints = fingerprints(questions["question"], settings, batch_size)
    order = content_order(questions, prints.text_hashes)
    ordered = questions.select("question_id", "level").gather(order).with_columns(
        pl.Series("_has_words", prints.has_words[order])
    )
    positions = np.arange(len(order))
    first = first_of_equal(prints.text_hashes[order])
    exact_match = np.where(first < positions, first, -1)
    exact = _check_rows(ordered, "exact_dup", exact_match, np.ones(len(order)), "duplicates")

    survivors = np.flatnonzero((exact_match < 0) & prints.has_words[order])
    survivor_rows = order[survivors]  # input row of each survivor, in keep-first order
    earlier, later = candidate_pairs(prints.bands, survivor_rows)
    # different numbers, operators or LaTeX make a different problem, however alike the words
    maths = prints.maths_hashes[survivor_rows]
    same_maths = maths[earlier] == maths[later]
    earlier, later = earlier[same_maths], later[same_maths]
    hasher = MinHasher(num_perm=settings.minhash_num_perm, shingle=settings.minhash_shingle)
    scores = exact_jaccard(questions["question"], survivor_rows[earlier], survivor_rows[later], hasher)
    _, matched, best = keep_first(len(survivors), earlier, later, scores, settings.minhash_threshold)
    near_match = np.full(len(order), -1, dtype=np.int64)
    near_score = np.full(len(order), np.nan)
    near_match[survivors] = np.where(matched >= 0, survivors[matched.clip(0)], -1)
    near_score[survivors] = best
    not_exact = exact_match < 0
    near = _check_rows(ordered, "near_dup", near_match, near_score, "near-duplicates").filter(pl.Series(not_exact))
    return pl.concat([exact.select(CURATION_COLUMNS), near.select(CURATION_COLUMNS)], rechunk=False)
