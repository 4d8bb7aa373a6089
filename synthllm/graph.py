"""Level 3: the concept graph and weighted random walks over it (grounding: synthllm.grounding).

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
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import polars as pl
import pyarrow as pa
from scipy import sparse
from scipy.sparse import csgraph

from synthllm.settings import GraphSettings

TOPIC_TOPIC, TOPIC_KC, KC_KC = "topic-topic", "topic-kc", "kc-kc"
EDGE_KINDS = (TOPIC_TOPIC, TOPIC_KC, KC_KC)
LINK_COLUMNS = ("doc_id", "topic_id", "kc_id")


# --------------------------------------------------------------------------- input
def check_links(links: pl.DataFrame, source: str = "concept links") -> pl.DataFrame:
    """The (doc_id, topic_id, kc_id) columns of a ``document_concepts``-like frame, validated;
    ``source`` names it in errors (the shard file it was read from)."""
    missing = [name for name in LINK_COLUMNS if name not in links.columns]
    if missing:
        raise ValueError(f"{source}: concept links need columns {LINK_COLUMNS}; missing {missing}")
    links = links.select(pl.col(name).cast(pl.String) for name in LINK_COLUMNS)
    for name in ("doc_id", "topic_id"):
        nulls = links[name].null_count()
        if nulls:
            raise ValueError(f"{source}: {nulls} rows have no {name}")
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
    """``links`` with a ``subset`` column (see :func:`document_subsets`)."""
    return links.join(document_subsets(links["doc_id"].unique(), subset_size), on="doc_id", how="left",
                      maintain_order="left")


def document_subsets(doc_ids: pl.Series, subset_size: int) -> pl.DataFrame:
    """(doc_id, subset) of distinct ``doc_ids``: ceil(documents / subset_size) subsets, by doc_id hash.

    A hash (not the row order) makes each subset a random sample of the corpus and keeps a
    document's subset the same on every run and machine.
    """
    if subset_size < 1:
        raise ValueError(f"subset_size must be >= 1, got {subset_size}")
    n_subsets = max(1, math.ceil(doc_ids.len() / subset_size))
    if n_subsets == 1:
        buckets = [0] * doc_ids.len()
    else:
        buckets = [
            int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little") % n_subsets
            for doc_id in doc_ids.to_list()
        ]
    return pl.DataFrame({"doc_id": doc_ids, "subset": pl.Series(buckets, dtype=pl.Int32)})


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
        positions = sorted_search(self.key, rows + uniforms)
        # row + u can round up to row + 1 when u is within 1 ulp of 1: stay inside the row.
        positions = np.minimum(positions, self.indptr[rows + 1] - 1)
        return self.indices[positions]

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, epsilon: float,
                 temperature: float) -> Transitions:
        """Step probabilities from co-occurrence counts in CSR form (indices sorted within rows).

        ``counts`` (float64) becomes the sampling key: at paper scale each array is hundreds of
        MB, so the weights are computed in place, two such arrays alive at a time instead of ten."""
        if indices.size == 0:
            return cls(indptr, indices, np.zeros(0))
        row_sizes = np.diff(indptr)
        starts, lengths = indptr[:-1][row_sizes > 0], row_sizes[row_sizes > 0]
        # (count + eps) ** (1/T), computed in log space relative to the row's largest weight
        # so that small temperatures cannot overflow.
        weight = counts
        weight += epsilon
        np.log(weight, out=weight)
        weight /= temperature
        weight -= np.repeat(np.maximum.reduceat(weight, starts), lengths)
        np.exp(weight, out=weight)
        weight /= np.repeat(np.add.reduceat(weight, starts), lengths)  # now each entry's probability
        first = weight[starts]
        key = np.cumsum(weight, out=weight)
        key -= np.repeat(key[starts] - first, lengths)  # cumulative within the row
        key[starts + lengths - 1] = 1.0
        np.minimum(key, 1.0, out=key)
        key += np.repeat(np.arange(row_sizes.size, dtype=np.float64), row_sizes)
        return cls(indptr, indices, key)


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

    def connectivity(self) -> tuple[int, float]:
        """Connected components and density of the whole graph, as networkx counts them on
        ``to_networkx()``, from the edge arrays (no Python object per edge)."""
        n = self.n_topics + self.kcs.len()
        if n == 0:
            return 0, 0.0
        ends = [(arrays.src + (self.n_topics if kind == KC_KC else 0),
                 arrays.dst + (0 if kind == TOPIC_TOPIC else self.n_topics)) for kind, arrays in self.edges.items()]
        src = np.concatenate([s for s, _ in ends]).astype(np.int64) if ends else np.zeros(0, np.int64)
        dst = np.concatenate([d for _, d in ends]).astype(np.int64) if ends else np.zeros(0, np.int64)
        adjacency = sparse.coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
        components = int(csgraph.connected_components(adjacency, directed=False)[0])
        edges = len(src)  # each edge is stored once (EdgeArrays), and the kinds join disjoint node ranges
        return components, (2 * edges / (n * (n - 1)) if n > 1 else 0.0)

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
        n_rows = self.kcs.len() if kind == KC_KC else self.n_topics
        n_cols = self.n_topics if kind == TOPIC_TOPIC else self.kcs.len()
        counts = sparse.csr_array((arrays.count.astype(np.float64), (arrays.src, arrays.dst)), shape=(n_rows, n_cols))
        if kind != TOPIC_KC:
            counts = counts + counts.T  # undirected, stored once (src < dst): each edge is walked both ways
        counts.sort_indices()
        indptr, indices, data = counts.indptr.astype(np.int64), counts.indices.astype(np.int64), counts.data
        del counts  # its int32 index arrays
        return Transitions.from_csr(indptr, indices, data, epsilon, temperature)


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


def sorted_search(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``searchsorted(side="right")`` with the needles sorted first: ordered binary searches
    touch the same cache lines and run many times faster on large haystacks."""
    order = np.argsort(needles, kind="stable")
    found = np.empty(needles.size, dtype=np.int64)
    found[order] = np.searchsorted(haystack, needles[order], side="right")
    return found


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
    alive = np.flatnonzero(topic_kc.degree[current] > 0)  # a walk that reaches no KC is no combination
    current[alive] = topic_kc.step(current[alive], uniforms[alive])
    walk[alive, kc_column] = current[alive] + n
    kc_steps = rng.integers(min_kc_steps, max_kc_steps + 1, size=n)
    for step in range(max_kc_steps):
        uniforms = rng.random(n)
        # Only live walkers stand on a KC (the others still hold a topic index, which is no row
        # of the KC subgraph); a KC with no KC neighbour ends the walk.
        moving = alive[(step < kc_steps[alive]) & (kc_kc.degree[current[alive]] > 0)]
        current[moving] = kc_kc.step(current[moving], uniforms[moving])
        walk[moving, kc_column + 1 + step] = current[moving] + n
    return walk[alive]


def _list_column(values: pl.Series, mask: np.ndarray, matrix: np.ndarray) -> pa.Array:
    """Arrow list<string> with one list per matrix row: the names of its entries under mask."""
    offsets = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    names = values.gather(matrix[mask]).to_arrow()
    return pa.LargeListArray.from_arrays(pa.array(offsets), names)


@dataclass(frozen=True)
class KcTopics:
    """What picks the topic each KC of a combination is paired with: topic-KC counts looked up
    by key ``topic * n_kcs + kc`` (sorted), and each KC's most strongly linked topic."""

    keys: np.ndarray
    count: np.ndarray
    home: np.ndarray  # per KC: the topic with the largest count (ties: the first topic)

    @classmethod
    def of(cls, graph: ConceptGraph) -> KcTopics:
        edges, n_kcs = graph.edges[TOPIC_KC], graph.kcs.len()
        best = np.zeros(n_kcs, dtype=np.int64)
        np.maximum.at(best, edges.dst, edges.count)
        strongest = edges.count == best[edges.dst]
        home = np.full(n_kcs, graph.n_topics, dtype=np.int64)
        np.minimum.at(home, edges.dst[strongest], edges.src[strongest])
        orphans = graph.kcs.filter(pl.Series(home == graph.n_topics))
        if orphans.len():
            # Graphs built from links cannot have these (a KC is always linked under a topic).
            raise ValueError(f"concept graph subset {graph.subset}: KCs without a topic-kc edge, "
                             f"so no topic to pair them with: {orphans.head(5).to_list()}")
        # Edges are sorted by (topic, KC), so the keys are too.
        return cls(edges.src * n_kcs + edges.dst, edges.count, home)

    def pick(self, graph: ConceptGraph, topic_choices: np.ndarray, kc: np.ndarray) -> np.ndarray:
        """For each KC, the topic among its row of ``topic_choices`` (-1: none) that shares the
        most documents with it, the first on a tie; the KC's home topic when none does."""
        count = np.zeros(topic_choices.shape, dtype=np.int64)
        valid = topic_choices >= 0
        needles = topic_choices[valid] * graph.kcs.len() + np.broadcast_to(kc[:, None], topic_choices.shape)[valid]
        position = sorted_search(self.keys, needles) - 1
        found = (position >= 0) & (self.keys[np.maximum(position, 0)] == needles)
        count[valid] = np.where(found, self.count[np.maximum(position, 0)], 0)
        best = np.argmax(count, axis=1)
        linked = count[np.arange(kc.size), best] > 0
        return np.where(linked, topic_choices[np.arange(kc.size), best], self.home[kc])


def _combination_frame(graph: ConceptGraph, kc_topics: KcTopics, epoch: int, walk: np.ndarray,
                       seed: int) -> pl.DataFrame:
    visited = walk >= 0
    repeated = np.zeros_like(visited)
    for column in range(1, walk.shape[1]):
        repeated[:, column] = (walk[:, :column] == walk[:, [column]]).any(axis=1)
    first_visit = visited & ~repeated
    is_topic = walk < graph.n_topics
    is_kc = first_visit & ~is_topic
    # Topics come first in a walk: the columns before the first KC hold every topic it visited.
    holds_kc = (walk >= graph.n_topics).any(axis=0)
    topic_columns = int(np.argmax(holds_kc)) if holds_kc.any() else walk.shape[1]
    topic_choices = np.where(visited & is_topic, walk, -1)[:, :topic_columns]
    kc_row, kc_column = np.nonzero(is_kc)
    paired = np.full_like(walk, -1)
    paired[kc_row, kc_column] = kc_topics.pick(graph, topic_choices[kc_row], walk[kc_row, kc_column] - graph.n_topics)
    names = graph.node_names
    frame = pl.from_arrow(pa.table({
        "walk": _list_column(names, visited, walk),
        "topics": _list_column(names, first_visit & is_topic, walk),
        "kcs": _list_column(names, is_kc, walk),
        "kc_topics": _list_column(names, is_kc, paired),
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


COMBINATION_COLUMNS = ("combo_id", "subset", "epoch", "start_topic", "walk", "topics", "kcs", "kc_topics", "seed")


def sample_combinations(graph: ConceptGraph, settings: GraphSettings, max_combinations: int | None = None) -> pl.DataFrame:
    """Concept combinations from weighted random walks (columns ``COMBINATION_COLUMNS``).

    Each epoch starts one walker at every topic: 1-2 topic->topic steps (``topic_steps``), one
    topic->KC step, 3-4 KC->KC steps (``kc_steps``); a walker's own step counts are drawn
    uniformly. Visited topics and KCs, in first-visit order, form the combination; ``kc_topics``
    pairs each KC with the combination's topic that shares the most documents with it (else the
    KC's most strongly linked topic), for prompts that ask for KCs from different topics. The random
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
    kc_topics = KcTopics.of(graph)
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
        frames.append(_combination_frame(graph, kc_topics, epoch, walk, settings.seed))
    if not frames:
        return _combination_frame(graph, kc_topics, 0, np.zeros((0, 1), dtype=np.int64), settings.seed)
    return pl.concat(frames)


def split_budget(total: int, weights: list[int]) -> list[int]:
    """``total`` split over parts in proportion to ``weights`` (largest remainders), so that a
    budget shared by several subsets draws from each by its size instead of from the first."""
    if total < 0 or not weights or min(weights) < 0 or sum(weights) == 0:
        raise ValueError(f"cannot split {total} over weights {weights}")
    raw = np.array(weights, dtype=float) / sum(weights) * total
    share = np.floor(raw).astype(np.int64)
    share[np.argsort(share - raw, kind="stable")[: total - int(share.sum())]] += 1
    return share.tolist()
