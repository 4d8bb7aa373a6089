"""Level 3: the concept graph, weighted random walks over it, and grounding of each walk.

Nodes are the distinct topics and key concepts (KCs) of the documents; two nodes are linked
when they occur in the same document, with the number of such documents as the edge count.
The graph has three subgraphs (topic-topic, topic-KC, KC-KC) because each walk phase moves
inside one of them. A step from u goes to neighbour v with probability proportional to
exp(log(count + epsilon) / temperature) = (count + epsilon) ** (1 / temperature).

Scale decides the data structures. A 200k-document subset has ~13M distinct edges; a networkx
graph costs ~370 bytes and ~6 us per edge (measured: 2M edges, 12 s, 740 MB), so counts are
built vectorised (numpy pair explosion) into integer edge arrays, walks run on CSR arrays, and
networkx is a view built on request (:meth:`ConceptGraph.to_networkx`) for analysis and small
corpora. Large corpora are split into subsets of ``GraphSettings.subset_size`` documents, one
graph each (the paper does the same).

Grounding finds, for each combination, the documents whose concept sets have the highest
Jaccard similarity with it, exactly, from an inverted index (see :func:`ground`).
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import networkx as nx
import numpy as np
import polars as pl
import pyarrow as pa
from scipy import sparse

from synthllm.settings import GraphSettings

TOPIC_TOPIC, TOPIC_KC, KC_KC = "topic-topic", "topic-kc", "kc-kc"
EDGE_KINDS = (TOPIC_TOPIC, TOPIC_KC, KC_KC)
LINK_COLUMNS = ("doc_id", "topic_id", "kc_id")
# Grounding's first pass reads this many smallest documents of each frequent concept.
FREQUENT_PROBE = 32


# --------------------------------------------------------------------------- input
def check_links(links: pl.DataFrame) -> pl.DataFrame:
    """The (doc_id, topic_id, kc_id) columns of a ``document_concepts``-like frame, validated."""
    missing = [name for name in LINK_COLUMNS if name not in links.columns]
    if missing:
        raise ValueError(f"concept links need columns {LINK_COLUMNS}; missing {missing}")
    links = links.select(pl.col(name).cast(pl.String) for name in LINK_COLUMNS)
    for name in ("doc_id", "topic_id"):
        nulls = links[name].null_count()
        if nulls:
            raise ValueError(f"concept links: {nulls} rows have no {name}")
    return links


@dataclass(frozen=True)
class EncodedLinks:
    """Links as integer pairs: documents, topics and KCs numbered in sorted-name order."""

    doc_ids: pl.Series
    topics: pl.Series
    kcs: pl.Series
    topic_pairs: pl.DataFrame  # distinct (doc, topic)
    kc_pairs: pl.DataFrame  # distinct (doc, kc)


def encode_links(links: pl.DataFrame) -> EncodedLinks:
    links = check_links(links)
    doc_ids = links["doc_id"].unique().sort()
    topics = links["topic_id"].unique().sort()
    kcs = links["kc_id"].drop_nulls().unique().sort()

    def numbered(names: pl.Series, column: str, number: str) -> pl.DataFrame:
        return pl.DataFrame({column: names, number: np.arange(names.len(), dtype=np.int64)})

    codes = (links.join(numbered(doc_ids, "doc_id", "doc"), on="doc_id")
             .join(numbered(topics, "topic_id", "topic"), on="topic_id")
             .join(numbered(kcs, "kc_id", "kc"), on="kc_id", how="left"))
    return EncodedLinks(
        doc_ids, topics, kcs,
        topic_pairs=codes.select("doc", "topic").unique(),
        kc_pairs=codes.drop_nulls("kc").select("doc", "kc").unique(),
    )


def assign_subsets(links: pl.DataFrame, subset_size: int) -> pl.DataFrame:
    """``links`` with a ``subset`` column: ceil(documents / subset_size) subsets, by doc_id hash.

    A hash (not the row order) makes each subset a random sample of the corpus and keeps a
    document's subset the same on every run and machine.
    """
    if subset_size < 1:
        raise ValueError(f"subset_size must be >= 1, got {subset_size}")
    doc_ids = links["doc_id"].unique()
    n_subsets = max(1, math.ceil(doc_ids.len() / subset_size))
    if n_subsets == 1:
        return links.with_columns(subset=pl.lit(0, pl.Int32))
    buckets = [
        int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little") % n_subsets
        for doc_id in doc_ids.to_list()
    ]
    subsets = pl.DataFrame({"doc_id": doc_ids, "subset": pl.Series(buckets, dtype=pl.Int32)})
    return links.join(subsets, on="doc_id", how="left")


# --------------------------------------------------------------------------- graph
@dataclass(frozen=True)
class EdgeArrays:
    """One subgraph's edges as node indices. Same-kind edges are stored once, src < dst;
    topic-KC edges have src a topic index and dst a KC index."""

    src: np.ndarray
    dst: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class Transitions:
    """Step probabilities of one subgraph in CSR form, laid out for vectorised sampling.

    ``key[j] = row + cumulative probability of entries up to j in that row`` increases over the
    whole array, so one ``searchsorted`` samples a step for every walker at once.
    """

    indptr: np.ndarray
    indices: np.ndarray
    key: np.ndarray

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def probabilities(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of ``row`` and the probability of stepping to each."""
        lo, hi = self.indptr[row], self.indptr[row + 1]
        cumulative = self.key[lo:hi] - row
        return self.indices[lo:hi], np.diff(cumulative, prepend=0.0)

    def step(self, rows: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """One step from each of ``rows`` (all with degree > 0), driven by U[0, 1) draws."""
        positions = _sorted_search(self.key, rows + uniforms)
        # row + u can round up to row + 1 when u is within 1 ulp of 1: stay inside the row.
        positions = np.minimum(positions, self.indptr[rows + 1] - 1)
        return self.indices[positions]

    @classmethod
    def from_counts(cls, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, n_rows: int, n_cols: int,
                    epsilon: float, temperature: float) -> Transitions:
        matrix = sparse.csr_array((counts.astype(np.float64), (rows, cols)), shape=(n_rows, n_cols))
        matrix.sort_indices()
        indptr, indices = matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)
        if indices.size == 0:
            return cls(indptr, indices, np.zeros(0))
        starts = indptr[:-1][np.diff(indptr) > 0]
        lengths = np.diff(np.append(starts, indices.size))
        # (count + eps) ** (1/T), computed in log space relative to the row's largest weight
        # so that small temperatures cannot overflow.
        log_weight = np.log(matrix.data + epsilon) / temperature
        log_weight -= np.repeat(np.maximum.reduceat(log_weight, starts), lengths)
        weight = np.exp(log_weight)
        probability = weight / np.repeat(np.add.reduceat(weight, starts), lengths)
        cumulative = np.cumsum(probability)
        within_row = cumulative - np.repeat(cumulative[starts] - probability[starts], lengths)
        within_row[starts + lengths - 1] = 1.0
        row_of = np.repeat(np.arange(n_rows, dtype=np.float64), np.diff(indptr))
        return cls(indptr, indices, row_of + np.minimum(within_row, 1.0))


@dataclass(frozen=True)
class ConceptGraph:
    """The co-occurrence graph of one subset of documents.

    Nodes: every topic and KC with at least one edge. Node indices: topics ``0..T-1``
    (``topics`` sorted), KCs ``T..T+K-1`` (``kcs`` sorted).
    """

    subset: int
    topics: pl.Series
    kcs: pl.Series
    edges: dict[str, EdgeArrays]

    @property
    def n_topics(self) -> int:
        return self.topics.len()

    @property
    def node_names(self) -> pl.Series:
        return pl.concat([self.topics, self.kcs])

    @classmethod
    def from_links(cls, links: pl.DataFrame, subset: int = 0) -> ConceptGraph:
        """Count co-occurrences in one subset's links (every row's doc is in the subset)."""
        encoded = encode_links(links)
        topics, kcs = encoded.topics, encoded.kcs
        doc_topics = encoded.topic_pairs.rename({"topic": "node"})
        doc_kcs = encoded.kc_pairs.rename({"kc": "node"})
        edges = {
            TOPIC_TOPIC: _count_pairs(*_pairs_within_documents(doc_topics), topics.len()),
            TOPIC_KC: _count_pairs(*_pairs_across(doc_topics, doc_kcs), kcs.len()),
            KC_KC: _count_pairs(*_pairs_within_documents(doc_kcs), kcs.len()),
        }
        # A topic that co-occurs with nothing (the only concept of its documents) starts no
        # combination; leaving it out makes the graph exactly what its edges say, so
        # from_edges(edges_frame()) gives the same graph and the same walks.
        linked = np.zeros(topics.len(), dtype=bool)
        for array in (edges[TOPIC_TOPIC].src, edges[TOPIC_TOPIC].dst, edges[TOPIC_KC].src):
            linked[array] = True
        if not linked.all():
            renumber = np.cumsum(linked) - 1
            topics = topics.filter(pl.Series(linked))
            tt, tk = edges[TOPIC_TOPIC], edges[TOPIC_KC]
            edges[TOPIC_TOPIC] = EdgeArrays(renumber[tt.src], renumber[tt.dst], tt.count)
            edges[TOPIC_KC] = EdgeArrays(renumber[tk.src], tk.dst, tk.count)
        return cls(subset, topics, kcs, edges)

    @classmethod
    def from_edges(cls, edges: pl.DataFrame, subset: int = 0) -> ConceptGraph:
        """Rebuild a graph from its :meth:`edges_frame` (nodes without edges cannot be walked
        from anyway, so nothing a walk needs is lost)."""
        edges = edges.filter(pl.col("subset") == subset) if "subset" in edges.columns else edges
        unknown = set(edges["kind"].unique().to_list()) - set(EDGE_KINDS)
        if unknown:
            raise ValueError(f"unknown edge kinds {sorted(unknown)}; expected {EDGE_KINDS}")
        by_kind = {kind: edges.filter(pl.col("kind") == kind) for kind in EDGE_KINDS}
        topics = pl.concat([by_kind[TOPIC_TOPIC]["src"], by_kind[TOPIC_TOPIC]["dst"],
                            by_kind[TOPIC_KC]["src"]]).unique().sort()
        kcs = pl.concat([by_kind[KC_KC]["src"], by_kind[KC_KC]["dst"], by_kind[TOPIC_KC]["dst"]]).unique().sort()

        def index(names: pl.Series, vocabulary: pl.Series) -> np.ndarray:
            return vocabulary.search_sorted(names).to_numpy().astype(np.int64)

        arrays = {}
        for kind, frame in by_kind.items():
            src_vocab = topics if kind != KC_KC else kcs
            dst_vocab = kcs if kind != TOPIC_TOPIC else topics
            src, dst = index(frame["src"], src_vocab), index(frame["dst"], dst_vocab)
            if kind != TOPIC_KC:
                src, dst = np.minimum(src, dst), np.maximum(src, dst)
            order = np.lexsort((dst, src))
            arrays[kind] = EdgeArrays(src[order], dst[order], frame["count"].to_numpy().astype(np.int64)[order])
        return cls(subset, topics, kcs, arrays)

    def edges_frame(self) -> pl.DataFrame:
        """The edges as rows of the ``concept_edges`` table (without shard_id / run_id)."""
        frames = []
        for kind, arrays in self.edges.items():
            src_names = self.kcs if kind == KC_KC else self.topics
            dst_names = self.topics if kind == TOPIC_TOPIC else self.kcs
            frames.append(pl.DataFrame({
                "src": src_names.gather(arrays.src),
                "dst": dst_names.gather(arrays.dst),
                "count": pl.Series(arrays.count, dtype=pl.Int32),
            }).select(subset=pl.lit(self.subset, pl.Int32), kind=pl.lit(kind, pl.String), src="src", dst="dst",
                      count="count"))
        return pl.concat(frames)

    def stats(self) -> dict[str, int]:
        """Node and edge counts, for run summaries."""
        return {"subset": self.subset, "topics": self.n_topics, "kcs": self.kcs.len(),
                **{f"edges_{kind}": int(arrays.src.size) for kind, arrays in self.edges.items()}}

    def to_networkx(self) -> nx.Graph:
        """The graph as networkx (node attribute ``kind``, edge attributes ``kind``, ``count``).

        Builds Python objects for every edge: meant for analysis and small corpora.
        """
        graph = nx.Graph(subset=self.subset)
        graph.add_nodes_from(self.topics.to_list(), kind="topic")
        graph.add_nodes_from(self.kcs.to_list(), kind="kc")
        names = self.node_names.to_list()
        for kind, arrays in self.edges.items():
            src_offset = self.n_topics if kind == KC_KC else 0
            dst_offset = 0 if kind == TOPIC_TOPIC else self.n_topics
            graph.add_edges_from(
                (names[s + src_offset], names[d + dst_offset], {"kind": kind, "count": c})
                for s, d, c in zip(arrays.src.tolist(), arrays.dst.tolist(), arrays.count.tolist())
            )
        return graph

    def transitions(self, kind: str, epsilon: float, temperature: float) -> Transitions:
        """Step probabilities inside one subgraph. Rows and columns are indices within their
        kind (topic-KC: rows are topics, columns KCs)."""
        arrays = self.edges[kind]
        if kind == TOPIC_KC:
            return Transitions.from_counts(arrays.src, arrays.dst, arrays.count, self.n_topics, self.kcs.len(),
                                           epsilon, temperature)
        n_nodes = self.n_topics if kind == TOPIC_TOPIC else self.kcs.len()
        # Undirected: each edge can be walked both ways.
        return Transitions.from_counts(
            np.concatenate([arrays.src, arrays.dst]), np.concatenate([arrays.dst, arrays.src]),
            np.concatenate([arrays.count, arrays.count]), n_nodes, n_nodes, epsilon, temperature,
        )


def _pairs_within_documents(doc_nodes: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair (a < b) of nodes that share a document, once per document."""
    ordered = doc_nodes.select("doc", "node").sort("doc", "node")
    doc, node = ordered["doc"].to_numpy(), ordered["node"].to_numpy()
    n = node.size
    if n == 0:
        return node, node
    group_start = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    group_size = np.diff(np.append(group_start, n))
    later = np.repeat(group_start + group_size, group_size) - np.arange(n) - 1
    first = np.repeat(np.arange(n), later)
    offset_in_run = np.arange(first.size) - np.repeat(np.cumsum(later) - later, later)
    return node[first], node[first + 1 + offset_in_run]


def _pairs_across(doc_topics: pl.DataFrame, doc_kcs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every (topic, KC) pair that shares a document, once per document."""
    pairs = doc_topics.select("doc", "node").join(doc_kcs.select("doc", "node"), on="doc", suffix="_kc")
    return pairs["node"].to_numpy(), pairs["node_kc"].to_numpy()


def _count_pairs(src: np.ndarray, dst: np.ndarray, n_dst: int) -> EdgeArrays:
    """Distinct (src, dst) pairs and how often each occurs, sorted by (src, dst)."""
    keys = pl.Series(src.astype(np.int64) * n_dst + dst).sort().to_numpy()  # polars sorts on every core
    run_start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)
    distinct = keys[run_start]
    return EdgeArrays(distinct // n_dst, distinct % n_dst, np.diff(np.append(run_start, keys.size)))


def build_graphs(links: pl.DataFrame, settings: GraphSettings) -> list[ConceptGraph]:
    """One :class:`ConceptGraph` per subset of ``settings.subset_size`` documents."""
    links = assign_subsets(check_links(links), settings.subset_size)
    return [
        ConceptGraph.from_links(part.drop("subset"), subset)
        for (subset,), part in sorted(links.partition_by("subset", as_dict=True).items())
    ]


# --------------------------------------------------------------------------- walks
def _walk_epoch(graph: ConceptGraph, steps: dict[str, Transitions], settings: GraphSettings,
                rng: np.random.Generator) -> np.ndarray:
    """One walk from every topic: a (topics x max length) matrix of node indices, -1 where a
    walker took no step; walks that reached no KC are dropped.

    Draws are made for every walker at every step, active or not, so a walk depends only on
    the seed, the subset, the epoch and the graph.
    """
    n = graph.n_topics
    (min_topic_steps, max_topic_steps), (min_kc_steps, max_kc_steps) = settings.topic_steps, settings.kc_steps
    kc_column = 1 + max_topic_steps
    walk = np.full((n, kc_column + 1 + max_kc_steps), -1, dtype=np.int64)
    current = np.arange(n)
    walk[:, 0] = current
    topic_steps = rng.integers(min_topic_steps, max_topic_steps + 1, size=n)
    topic_topic, topic_kc, kc_kc = steps[TOPIC_TOPIC], steps[TOPIC_KC], steps[KC_KC]
    for step in range(max_topic_steps):
        uniforms = rng.random(n)
        # A topic with no topic neighbour stays put and the walk goes on to its KC step.
        moving = np.flatnonzero((step < topic_steps) & (topic_topic.degree[current] > 0))
        current[moving] = topic_topic.step(current[moving], uniforms[moving])
        walk[moving, 1 + step] = current[moving]
    uniforms = rng.random(n)
    alive = topic_kc.degree[current] > 0  # a walk that reaches no KC is no combination
    moving = np.flatnonzero(alive)
    current[moving] = topic_kc.step(current[moving], uniforms[moving])
    walk[moving, kc_column] = current[moving] + n
    kc_steps = rng.integers(min_kc_steps, max_kc_steps + 1, size=n)
    for step in range(max_kc_steps):
        uniforms = rng.random(n)
        # A KC with no KC neighbour ends the walk.
        moving = np.flatnonzero(alive & (step < kc_steps) & (kc_kc.degree[current] > 0))
        current[moving] = kc_kc.step(current[moving], uniforms[moving])
        walk[moving, kc_column + 1 + step] = current[moving] + n
    return walk[alive]


def _list_column(values: pl.Series, mask: np.ndarray, matrix: np.ndarray) -> pa.Array:
    """Arrow list<string> with one list per matrix row: the names of its entries under mask."""
    offsets = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    names = values.gather(matrix[mask]).to_arrow()
    return pa.LargeListArray.from_arrays(pa.array(offsets), names)


def _combination_frame(graph: ConceptGraph, epoch: int, walk: np.ndarray, seed: int) -> pl.DataFrame:
    visited = walk >= 0
    repeated = np.zeros_like(visited)
    for column in range(1, walk.shape[1]):
        repeated[:, column] = (walk[:, :column] == walk[:, [column]]).any(axis=1)
    first_visit = visited & ~repeated
    is_topic = walk < graph.n_topics
    names = graph.node_names
    frame = pl.from_arrow(pa.table({
        "walk": _list_column(names, visited, walk),
        "topics": _list_column(names, first_visit & is_topic, walk),
        "kcs": _list_column(names, first_visit & ~is_topic, walk),
    }))
    frame = frame.with_columns(
        subset=pl.lit(graph.subset, pl.Int32),
        epoch=pl.lit(epoch, pl.Int32),
        start_topic=names.gather(walk[:, 0]),
        seed=pl.lit(seed, pl.Int64),
    )
    prefix = f"{graph.subset}\x1f{epoch}\x1f"
    combo_ids = [hashlib.blake2b((prefix + path).encode("utf-8"), digest_size=8).hexdigest()
                 for path in frame["walk"].list.join("\x1f").to_list()]
    return frame.with_columns(combo_id=pl.Series(combo_ids, dtype=pl.String)).select(COMBINATION_COLUMNS)


COMBINATION_COLUMNS = ("combo_id", "subset", "epoch", "start_topic", "walk", "topics", "kcs", "seed")


def sample_combinations(graph: ConceptGraph, settings: GraphSettings, max_combinations: int | None = None) -> pl.DataFrame:
    """Concept combinations from weighted random walks (columns ``COMBINATION_COLUMNS``).

    Each epoch starts one walker at every topic: 1-2 topic->topic steps (``topic_steps``), one
    topic->KC step, 3-4 KC->KC steps (``kc_steps``); a walker's own step counts are drawn
    uniformly. Visited topics and KCs, in first-visit order, form the combination. The random
    stream is ``numpy.random.default_rng([seed, subset, epoch])``: the same settings give the
    same combinations however the subsets are spread over processes.

    ``max_combinations`` stops after that many walks; the last epoch then keeps a seeded random
    choice of its walks (never the alphabetically first topics), so a smaller budget gives a
    subset of a larger one.
    """
    if settings.seed < 0:
        raise ValueError(f"graph seed must be >= 0, got {settings.seed}")
    for name, (low, high) in (("topic_steps", settings.topic_steps), ("kc_steps", settings.kc_steps)):
        if not 0 <= low <= high:
            raise ValueError(f"graph {name} must be (min, max) with 0 <= min <= max, got {(low, high)}")
    steps = {kind: graph.transitions(kind, settings.epsilon, settings.temperature) for kind in EDGE_KINDS}
    frames = []
    remaining = max_combinations
    for epoch in range(settings.epochs):
        if remaining is not None and remaining <= 0:
            break
        rng = np.random.default_rng([settings.seed, graph.subset, epoch])
        walk = _walk_epoch(graph, steps, settings, rng)
        if remaining is not None and walk.shape[0] > remaining:
            walk = walk[np.sort(rng.permutation(walk.shape[0])[:remaining])]
        if remaining is not None:
            remaining -= walk.shape[0]
        frames.append(_combination_frame(graph, epoch, walk, settings.seed))
    if not frames:
        return _combination_frame(graph, 0, np.zeros((0, 1), dtype=np.int64), settings.seed)
    return pl.concat(frames)


# --------------------------------------------------------------------------- grounding
@dataclass(frozen=True)
class InvertedIndex:
    """Concept -> documents, each posting list sorted by (document size, doc_id).

    Concept indices: topics ``0..T-1`` then KCs; document indices follow sorted doc_id, so the
    smaller index is the doc_id tie-break. Concepts in more than ``full_expansion_df``
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
           workers: int = 1, batch_postings: int = 1 << 21) -> pl.DataFrame:
    """``combinations`` with ``ref_doc_ids`` and ``ref_jaccard``: the ``references`` documents
    with the highest Jaccard similarity |K & D| / |K | D| between the combination's concepts K
    (topics + KCs) and the document's D, best first, ties to the smaller doc_id. Exact.

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
                                               _Batches(pool, batch_postings))
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
class _Batches:
    pool: ThreadPoolExecutor
    postings: int


def _best_documents(index: InvertedIndex, terms: _Terms, n_rows: int, k: int,
                    batches: _Batches) -> tuple[np.ndarray, np.ndarray]:
    """(rows x k) best document indices (-1: none) and their similarities."""
    best_doc = np.full((n_rows, k), -1, dtype=np.int64)
    best_score = np.zeros((n_rows, k))
    # Pass 1: rare concepts whole, frequent ones by their smallest documents (at least k, so
    # that every row with a frequent concept gets k scores; a few more raise J_k and save
    # more in pass 2 than they cost: measured ~17% fewer postings read with 16-64).
    probe = max(k, FREQUENT_PROBE)
    first_end = terms.start + np.where(terms.frequency <= index.full_expansion_df, terms.frequency,
                                       np.minimum(probe, terms.frequency))
    _top_k_in_batches(index, terms, np.ones(terms.row.size, dtype=bool), first_end, k, batches,
                      best_doc, best_score)
    # Pass 2: the prefixes that prefix filtering says may still hold a better document.
    threshold = best_score[terms.row, k - 1]
    rank = _rank_within_row(terms.row, -terms.frequency)
    with np.errstate(divide="ignore"):
        bound = (rank + 1) * (1 + threshold) / threshold - terms.n_terms[terms.row]
    max_size = np.clip(np.floor(bound + 1e-6), 0, index.size_stride - 1)  # inf (nothing found yet) -> every size
    prefix_end = _sorted_search(index.posting_size_key, terms.concept * index.size_stride + max_size.astype(np.int64))
    second_end = np.maximum(first_end, prefix_end)
    grows = np.zeros(n_rows, dtype=bool)
    grows[terms.row[second_end > first_end]] = True
    _top_k_in_batches(index, terms, grows[terms.row], second_end, k, batches, best_doc, best_score)
    return best_doc, best_score


def _sorted_search(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``searchsorted(side="right")`` with the needles sorted first: ordered binary searches
    touch the same cache lines and run many times faster on large haystacks."""
    order = np.argsort(needles, kind="stable")
    found = np.empty(needles.size, dtype=np.int64)
    found[order] = np.searchsorted(haystack, needles[order], side="right")
    return found


def _rank_within_row(row: np.ndarray, sort_key: np.ndarray) -> np.ndarray:
    """0-based rank of each entry among the entries of its row, by ascending sort_key."""
    order = np.lexsort((sort_key, row))
    sorted_row = row[order]
    rank = np.empty(row.size, dtype=np.int64)
    rank[order] = np.arange(row.size) - np.searchsorted(sorted_row, sorted_row, side="left")
    return rank


def _top_k_in_batches(index: InvertedIndex, terms: _Terms, selected: np.ndarray, end: np.ndarray, k: int,
                      batches: _Batches, best_doc: np.ndarray, best_score: np.ndarray) -> None:
    """Top-k of the selected terms' rows, reading postings [start, end), in batches of whole
    rows of about ``batches.postings`` postings; batches write disjoint rows, so they can run
    on several threads."""
    positions = np.flatnonzero(selected)
    if positions.size == 0:
        return
    lengths = end[positions] - terms.start[positions]
    rows = terms.row[positions]
    row_first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    batch_of_row = (np.cumsum(lengths) - lengths)[row_first] // batches.postings
    batch_start = row_first[np.flatnonzero(np.r_[True, np.diff(batch_of_row) > 0])]
    jobs = [batches.pool.submit(_top_k, index, terms, positions[first:last], end, k, best_doc, best_score)
            for first, last in zip(batch_start, np.append(batch_start[1:], positions.size))]
    for job in jobs:
        job.result()


def _top_k(index: InvertedIndex, terms: _Terms, positions: np.ndarray, end: np.ndarray, k: int,
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
    # Candidates are sorted by (row, doc): a row's first maximum is the doc_id tie-break.
    segment = np.flatnonzero(np.r_[True, cand_local[1:] != cand_local[:-1]])
    segment_length = np.diff(np.append(segment, candidate.size))
    segment_row = rows[cand_local[segment]]
    best_doc[segment_row] = -1
    best_score[segment_row] = 0.0
    everywhere = np.arange(candidate.size)
    for place in range(k):
        top = np.maximum.reduceat(score, segment)
        first = np.minimum.reduceat(np.where(score == np.repeat(top, segment_length), everywhere, candidate.size), segment)
        has = top > 0
        best_doc[segment_row[has], place] = cand_doc[first[has]]
        best_score[segment_row[has], place] = top[has]
        score[first[has]] = -1.0
