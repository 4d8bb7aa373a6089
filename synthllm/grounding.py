"""Grounding of level-3 combinations: the documents whose concept sets are most like each one.

For each combination the ``references`` documents with the highest Jaccard similarity between
its concepts (topics + KCs) and theirs, exactly, from an inverted index (see :func:`ground`).
Ties are broken by a seeded hash of (combination, document), so the references of equally good
documents spread over all of them instead of always going to the first doc_id.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from synthllm.graph import encode_links, sorted_search

# Grounding's first pass reads this many smallest documents of each frequent concept.
FREQUENT_PROBE = 32


@dataclass(frozen=True)
class InvertedIndex:
    """Concept -> documents, each posting list sorted by (document size, doc_id).

    Concept indices: topics ``0..T-1`` then KCs; document indices follow sorted doc_id.
    Concepts in more than ``full_expansion_df``
    documents, whose posting lists grounding reads only in part, also get a bit set over the
    documents for constant-time membership tests.
    """

    doc_ids: pl.Series
    topics: pl.Series
    kcs: pl.Series
    doc_size: np.ndarray
    size_stride: int  # > every document size
    postings_indptr: np.ndarray
    postings: np.ndarray
    posting_size_key: np.ndarray  # concept * size_stride + size of each posting's document
    full_expansion_df: int
    frequent_row: np.ndarray  # per concept, then one for "no concept": its row in frequent_bits
    frequent_bits: np.ndarray  # flat (frequent concepts + 1 empty row) x row_bytes packed bits
    row_bytes: int

    @property
    def n_concepts(self) -> int:
        return self.topics.len() + self.kcs.len()

    @property
    def document_frequency(self) -> np.ndarray:
        return np.diff(self.postings_indptr)

    @classmethod
    def from_links(cls, links: pl.DataFrame, full_expansion_df: int = 256) -> InvertedIndex:
        if full_expansion_df < 1:
            raise ValueError(f"full_expansion_df must be >= 1, got {full_expansion_df}")
        encoded = encode_links(links)
        doc_ids, topics, kcs = encoded.doc_ids, encoded.topics, encoded.kcs
        n_topics, n_concepts, n_docs = topics.len(), topics.len() + kcs.len(), doc_ids.len()
        doc = np.concatenate([encoded.topic_pairs["doc"].to_numpy(), encoded.kc_pairs["doc"].to_numpy()])
        concept = np.concatenate([encoded.topic_pairs["topic"].to_numpy(), encoded.kc_pairs["kc"].to_numpy() + n_topics])
        doc_size = np.bincount(doc, minlength=n_docs).astype(np.int64)
        size_stride = int(doc_size.max(initial=0)) + 2
        # Postings ordered by (concept, document size, doc) through one integer sort key.
        posting_key = pl.Series((concept * size_stride + doc_size[doc]) * n_docs + doc).sort().to_numpy()
        postings = posting_key % n_docs
        frequency = np.bincount(concept, minlength=n_concepts)
        indptr = np.zeros(n_concepts + 1, dtype=np.int64)
        np.cumsum(frequency, out=indptr[1:])
        frequent = frequency > full_expansion_df
        n_frequent = int(frequent.sum())
        # Rows of the bit set; concepts that are not frequent, and index -1 ("no concept"),
        # point at a last, empty row, so lookups need no masks.
        frequent_row = np.append(np.where(frequent, np.cumsum(frequent) - 1, n_frequent), n_frequent)
        row_bytes = (n_docs + 7) // 8
        bits = np.zeros((n_frequent + 1) * row_bytes, dtype=np.uint8)
        in_frequent = frequent[concept]
        np.bitwise_or.at(bits, frequent_row[concept[in_frequent]] * row_bytes + (doc[in_frequent] >> 3),
                         (1 << (doc[in_frequent] & 7)).astype(np.uint8))
        return cls(
            doc_ids=doc_ids, topics=topics, kcs=kcs, doc_size=doc_size, size_stride=size_stride,
            postings_indptr=indptr, postings=postings, posting_size_key=posting_key // n_docs,
            full_expansion_df=full_expansion_df, frequent_row=frequent_row, frequent_bits=bits,
            row_bytes=row_bytes,
        )

    def contains_frequent(self, doc: np.ndarray, concept: np.ndarray) -> np.ndarray:
        """1 where the document holds the concept, for frequent concepts; 0 for any other
        concept and for concept -1."""
        byte = self.frequent_bits[self.frequent_row[concept] * self.row_bytes + (doc >> 3)]
        return (byte >> (doc & 7).astype(np.uint8)) & 1

    def concept_indices(self, names: pl.Series, kind: str) -> np.ndarray:
        """Index of each name among this index's concepts of ``kind``, -1 when unknown."""
        vocabulary, offset = (self.topics, 0) if kind == "topic" else (self.kcs, self.topics.len())
        position = vocabulary.search_sorted(names).to_numpy().astype(np.int64)
        inside = position < vocabulary.len()
        found = np.zeros(position.size, dtype=bool)
        found[inside] = (vocabulary.gather(position[inside]) == names.filter(pl.Series(inside))).to_numpy()
        return np.where(found, position + offset, -1)


@dataclass(frozen=True)
class _Terms:
    """The (combination row, concept) pairs of a batch of combinations, sorted by row."""

    row: np.ndarray
    concept: np.ndarray
    start: np.ndarray  # first posting of the concept
    frequency: np.ndarray  # postings of the concept
    n_terms: np.ndarray  # per row: distinct concepts of the combination, known to the index or not


def ground(combinations: pl.DataFrame, index: InvertedIndex | pl.DataFrame, references: int, *,
           seed: int = 0, workers: int = 1, batch_postings: int = 1 << 21) -> pl.DataFrame:
    """``combinations`` with ``ref_doc_ids`` and ``ref_jaccard``: the ``references`` documents
    with the highest Jaccard similarity |K & D| / |K | D| between the combination's concepts K
    (topics + KCs) and the document's D, best first. Exact. Equally similar documents are
    ordered by :func:`tie_order` (seeded by ``seed``), so each combination draws its own among
    them rather than all taking the first doc_id.

    Ground each subset's combinations against an index of the same subset's documents.

    Only posting lists are read, never all documents, and the posting lists of frequent
    concepts only in part (prefix filtering): with J_k the k-th best similarity found so far
    and a combination's c concepts ranked by document frequency, most frequent first, a
    document of size d that shares i concepts can reach J_k only if i >= m(d) =
    ceil(J_k (c + d) / (1 + J_k)); it then holds a concept of rank >= m(d) - 1, so reading the
    concept of rank j only for documents with m(d) <= j + 1 (a prefix, as posting lists are
    sorted by document size) finds every such document. J_k comes from a first pass over the
    rare concepts (document frequency <= ``index.full_expansion_df``) and the
    ``FREQUENT_PROBE`` smallest documents of each frequent one.

    Combinations are processed in batches of about ``batch_postings`` postings (memory: ~100
    bytes per posting per worker), on ``workers`` threads (numpy and polars release the GIL).
    """
    if references < 1 or workers < 1 or batch_postings < 1:
        raise ValueError(f"references, workers and batch_postings must be >= 1, got "
                         f"{references}, {workers}, {batch_postings}")
    if isinstance(index, pl.DataFrame):
        index = InvertedIndex.from_links(index)
    missing = [name for name in ("topics", "kcs") if name not in combinations.columns]
    if missing:
        raise ValueError(f"combinations need list columns topics and kcs; missing {missing}")
    terms = _combination_terms(combinations, index)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        best_doc, best_score = _best_documents(index, terms, combinations.height, references,
                                               _Search(pool, batch_postings, seed))
    found = best_doc >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(found.sum(axis=1))]).astype(np.int64))
    ref_doc_ids = pa.LargeListArray.from_arrays(offsets, index.doc_ids.gather(best_doc[found]).to_arrow())
    ref_jaccard = pa.LargeListArray.from_arrays(offsets, pa.array(best_score[found], type=pa.float64()))
    return combinations.with_columns(
        ref_doc_ids=pl.from_arrow(ref_doc_ids), ref_jaccard=pl.from_arrow(ref_jaccard),
    )


def _combination_terms(combinations: pl.DataFrame, index: InvertedIndex) -> _Terms:
    rows = combinations.select(
        topics=pl.col("topics").list.unique(), kcs=pl.col("kcs").list.unique(),
    ).with_row_index("row")
    n_terms = (rows["topics"].list.len() + rows["kcs"].list.len()).to_numpy().astype(np.int64)
    row_parts, concept_parts = [], []
    for kind, column in (("topic", "topics"), ("kc", "kcs")):
        exploded = rows.select("row", column).explode(column).drop_nulls(column)
        row_parts.append(exploded["row"].to_numpy().astype(np.int64))
        concept_parts.append(index.concept_indices(exploded[column], kind))
    row, concept = np.concatenate(row_parts), np.concatenate(concept_parts)
    known = concept >= 0
    row, concept = row[known], concept[known]
    order = np.lexsort((concept, row))
    row, concept = row[order], concept[order]
    start = index.postings_indptr[concept]
    return _Terms(row, concept, start, index.postings_indptr[concept + 1] - start, n_terms)


@dataclass(frozen=True)
class _Search:
    """How the top-k search runs: its threads, postings per batch, the tie-break seed."""

    pool: ThreadPoolExecutor
    postings: int
    seed: int


def _best_documents(index: InvertedIndex, terms: _Terms, n_rows: int, k: int,
                    search: _Search) -> tuple[np.ndarray, np.ndarray]:
    """(rows x k) best document indices (-1: none) and their similarities."""
    best_doc = np.full((n_rows, k), -1, dtype=np.int64)
    best_score = np.zeros((n_rows, k))
    # Pass 1: rare concepts whole, frequent ones by their smallest documents (at least k, so
    # that every row with a frequent concept gets k scores; a few more raise J_k and save
    # more in pass 2 than they cost: measured ~17% fewer postings read with 16-64).
    probe = max(k, FREQUENT_PROBE)
    first_end = terms.start + np.where(terms.frequency <= index.full_expansion_df, terms.frequency,
                                       np.minimum(probe, terms.frequency))
    _top_k_in_batches(index, terms, np.ones(terms.row.size, dtype=bool), first_end, k, search,
                      best_doc, best_score)
    # Pass 2: the prefixes that prefix filtering says may still hold a better document.
    threshold = best_score[terms.row, k - 1]
    rank = _rank_within_row(terms.row, -terms.frequency)
    with np.errstate(divide="ignore"):
        bound = (rank + 1) * (1 + threshold) / threshold - terms.n_terms[terms.row]
    max_size = np.clip(np.floor(bound + 1e-6), 0, index.size_stride - 1)  # inf (nothing found yet) -> every size
    prefix_end = sorted_search(index.posting_size_key, terms.concept * index.size_stride + max_size.astype(np.int64))
    second_end = np.maximum(first_end, prefix_end)
    grows = np.zeros(n_rows, dtype=bool)
    grows[terms.row[second_end > first_end]] = True
    _top_k_in_batches(index, terms, grows[terms.row], second_end, k, search, best_doc, best_score)
    return best_doc, best_score




def _rank_within_row(row: np.ndarray, sort_key: np.ndarray) -> np.ndarray:
    """0-based rank of each entry among the entries of its row, by ascending sort_key."""
    order = np.lexsort((sort_key, row))
    sorted_row = row[order]
    rank = np.empty(row.size, dtype=np.int64)
    rank[order] = np.arange(row.size) - np.searchsorted(sorted_row, sorted_row, side="left")
    return rank


def _top_k_in_batches(index: InvertedIndex, terms: _Terms, selected: np.ndarray, end: np.ndarray, k: int,
                      search: _Search, best_doc: np.ndarray, best_score: np.ndarray) -> None:
    """Top-k of the selected terms' rows, reading postings [start, end), in batches of whole
    rows of about ``search.postings`` postings; batches write disjoint rows, so they can run
    on several threads."""
    positions = np.flatnonzero(selected)
    if positions.size == 0:
        return
    lengths = end[positions] - terms.start[positions]
    rows = terms.row[positions]
    row_first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    batch_of_row = (np.cumsum(lengths) - lengths)[row_first] // search.postings
    batch_start = row_first[np.flatnonzero(np.r_[True, np.diff(batch_of_row) > 0])]
    jobs = [search.pool.submit(_top_k, index, terms, positions[first:last], end, k, search.seed, best_doc,
                               best_score)
            for first, last in zip(batch_start, np.append(batch_start[1:], positions.size))]
    for job in jobs:
        job.result()


def _top_k(index: InvertedIndex, terms: _Terms, positions: np.ndarray, end: np.ndarray, k: int, seed: int,
           best_doc: np.ndarray, best_score: np.ndarray) -> None:
    """Top-k documents of the rows of ``positions`` among the postings [start, end) read."""
    row, concept, start = terms.row[positions], terms.concept[positions], terms.start[positions]
    lengths = end[positions] - start
    whole = lengths == terms.frequency[positions]
    # Local row numbers, rows with the most partly read concepts first: the candidates that
    # need the j-th membership test are then a prefix of the candidate array.
    first_of_row = np.r_[True, row[1:] != row[:-1]]
    row_number = np.cumsum(first_of_row) - 1
    n_partial = np.bincount(row_number[~whole], minlength=int(first_of_row.sum()))
    row_order = np.lexsort((np.arange(n_partial.size), -n_partial))
    local_of = np.empty(n_partial.size, dtype=np.int64)
    local_of[row_order] = np.arange(n_partial.size)
    local = local_of[row_number]
    rows, n_partial = row[first_of_row][row_order], n_partial[row_order]
    n_docs = index.doc_ids.len()
    # Candidates: every document in the postings read, keyed (local row, doc, flag). A hit from
    # a whole posting list counts directly (flag 0); partly read concepts are tested below.
    posting = np.arange(lengths.sum()) + np.repeat(start - (np.cumsum(lengths) - lengths), lengths)
    keys = index.postings[posting] * 2 + np.repeat(local * (2 * n_docs) + ~whole, lengths)
    if keys.size == 0:
        return
    keys = pl.Series(keys).sort().to_numpy()  # polars sorts on every core
    candidate_keys = keys >> 1
    new_at = np.flatnonzero(np.r_[True, candidate_keys[1:] != candidate_keys[:-1]])
    candidate = candidate_keys[new_at]
    flagged_of = np.searchsorted(new_at, np.flatnonzero(keys & 1), side="right") - 1
    hits = np.diff(np.append(new_at, keys.size)) - np.bincount(flagged_of, minlength=candidate.size)
    cand_local = candidate // n_docs
    cand_doc = candidate - cand_local * n_docs
    partial = np.flatnonzero(~whole)
    if partial.size:
        slot = _rank_within_row(local[partial], concept[partial])
        partial_table = np.full((rows.size, int(slot.max()) + 1), -1, dtype=np.int64)
        partial_table[local[partial], slot] = concept[partial]
        for column in range(partial_table.shape[1]):
            asked = np.searchsorted(cand_local, np.count_nonzero(n_partial > column))
            hits[:asked] += index.contains_frequent(cand_doc[:asked], partial_table[cand_local[:asked], column])
    score = hits / (terms.n_terms[rows][cand_local] + index.doc_size[cand_doc] - hits)
    segment = np.flatnonzero(np.r_[True, cand_local[1:] != cand_local[:-1]])
    segment_length = np.diff(np.append(segment, candidate.size))
    segment_row = rows[cand_local[segment]]
    best_doc[segment_row] = -1
    best_score[segment_row] = 0.0
    segment_of = np.repeat(np.arange(segment.size), segment_length)
    for place in range(k):
        top = np.maximum.reduceat(score, segment)
        # Every segment holds its maximum at least once; among those, the least tie_order wins.
        tied = np.flatnonzero(score == top[segment_of])
        ranked = tied[np.lexsort((tie_order(seed, rows[cand_local[tied]], cand_doc[tied]), segment_of[tied]))]
        first = ranked[np.r_[True, np.diff(segment_of[ranked]) > 0]]
        has = top > 0
        best_doc[segment_row[has], place] = cand_doc[first[has]]
        best_score[segment_row[has], place] = top[has]
        score[first[has]] = -1.0


def tie_order(seed: int, row: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """The order of equally similar documents: a seeded hash (splitmix64) of each (combination
    row, document index) pair, smallest first. Depending on the row as well as the document
    spreads ties over all tied documents, where a per-document order would favour the same few."""
    salt = _splitmix64(np.array([seed], dtype=np.int64).view(np.uint64))
    return _splitmix64(_splitmix64(row.astype(np.uint64) ^ salt) ^ doc.astype(np.uint64))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
