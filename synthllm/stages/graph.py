"""The concept-graph stage: concepts table, co-occurrence edges, walks and grounding (level 3 input).

Not an LLM stage: it reads ``document_concepts`` and writes ``concepts``, ``concept_edges`` and
``concept_combinations``, one edges and one combinations shard per subset of documents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from synthllm.graph import (
    LINK_COLUMNS,
    ConceptGraph,
    check_links,
    document_subsets,
    sample_combinations,
    split_budget,
)
from synthllm.grounding import InvertedIndex, ground
from synthllm.resources import read_sql
from synthllm.settings import Settings
from synthllm.store import Store, stable_hash

# Part of the graph key: bump it when the same inputs and settings give other combinations,
# so that shards written by the older code are rebuilt instead of skipped.
# 2: kc_topics, the combination budget split over subsets, seeded grounding ties.
GRAPH_VERSION = 2
READ_AHEAD = 4  # link shards read at once by the graph task


def graph_key(link_shards: list[str], settings: Settings) -> str:
    """A graph version: the concept links it was built from and the graph settings."""
    return stable_hash(GRAPH_VERSION, sorted(link_shards), settings.graph.model_dump(mode="json"),
                       settings.generation.max_combinations)


def build_concept_graph(store: Store, settings: Settings, run_id: str, link_shards: list[str]) -> dict[str, Any]:
    """Build every subset's graph, sample its walks and ground them; a subset whose combinations
    shard exists is skipped. ``generation.max_combinations`` is the budget of the whole run,
    split over the subsets in proportion to their documents."""
    total = settings.generation.max_combinations
    if total is not None and total < 0:
        raise ValueError(f"generation.max_combinations must be >= 0 (or unset), got {total}")
    key = graph_key(link_shards, settings)
    concepts = store.query(read_sql("concepts_table.sql"), tables=["document_concepts"], own_database=True)
    store.write_shard("concepts", "all", concepts, constants={"shard_id": "all", "run_id": run_id})
    subsets = LinkSubsets(store, link_shards, settings.graph.subset_size)
    if not subsets.documents:
        return {"graph_key": key, "subsets": [], "combinations": 0}
    budgets = (split_budget(total, list(subsets.documents.values())) if total is not None
               else [None] * len(subsets.documents))
    stats = []
    for (subset, part), budget in zip(subsets.links(), budgets, strict=True):
        graph = ConceptGraph.from_links(part, subset)
        edges_shard, combos_shard = f"edges-{key}-{subset}", f"combos-{key}-{subset}"
        graph_stats = {**_graph_summary(graph), "budget": budget}
        if store.has_shard("concept_combinations", combos_shard):
            stats.append({**graph_stats, "combinations": None, "skipped": True})
            continue
        store.write_shard("concept_edges", edges_shard, graph.edges_frame(),
                          constants={"shard_id": edges_shard, "run_id": run_id})
        combos = sample_combinations(graph, settings.graph, budget)
        grounded = ground(combos, InvertedIndex.from_links(part), settings.graph.references, seed=settings.graph.seed)
        rows = store.write_shard("concept_combinations", combos_shard,
                                 grounded.with_columns(shard_id=pl.lit(combos_shard), run_id=pl.lit(run_id)))
        stats.append({**graph_stats, "combinations": rows, "skipped": False})
    return {"graph_key": key, "subsets": stats,
            "combinations": sum(s["combinations"] or 0 for s in stats)}


def _graph_summary(graph: ConceptGraph) -> dict[str, Any]:
    """Node and edge counts, connected components and density (as networkx counts them on the
    graph's ``to_networkx()`` view, computed on the arrays: building the view cost seconds)."""
    components, density = graph.connectivity()
    return {**graph.stats(), "components": components, "density": round(density, 6)}


class LinkSubsets:
    """The graph's input, ``document_concepts``' (doc_id, topic_id, kc_id), one subset of documents
    (``graph.subset_size``) at a time: the task's memory follows a subset, not the corpus.

    Read whole, the corpus's links stayed in memory beside every subset's graph (at 1M documents
    1.4 GB of links, and as much again split by subset, where one subset's graph needs about 1 GB).
    The shards are read a few at a time (:data:`READ_AHEAD`): a first pass checks them and lists
    each one's documents, and keeps the links while they fit one subset (then no shard is read
    twice); past that, each subset reads the shards again and keeps the rows of its documents."""

    def __init__(self, store: Store, link_shards: list[str], subset_size: int) -> None:
        self.store = store
        self.paths = [store.shard_path("document_concepts", shard) for shard in link_shards]
        listed = [pl.DataFrame(schema={"file": pl.Int32, "doc_id": pl.String})]
        kept: list[pl.DataFrame] | None = []
        kept_documents = 0
        for index, links in enumerate(self._read_each(range(len(self.paths)), lambda _, links: links)):
            documents = links["doc_id"].unique()
            listed.append(pl.DataFrame({"file": index, "doc_id": documents}, schema=listed[0].schema))
            if kept is not None:
                kept.append(links)
                kept_documents += documents.len()
                kept = kept if kept_documents <= subset_size else None
        files = pl.concat(listed)
        subsets = document_subsets(files["doc_id"].unique(), subset_size)
        self.documents: dict[int, int] = dict(sorted(subsets.group_by("subset").len().iter_rows()))
        self._kept = pl.concat(kept) if kept and len(self.documents) == 1 else None
        # subset -> shard file index -> the documents of that subset the file holds
        self._wanted = {} if self._kept is not None else {
            subset: {file: part["doc_id"] for (file,), part in by_file.partition_by("file", as_dict=True).items()}
            for (subset,), by_file in files.join(subsets, on="doc_id").partition_by("subset", as_dict=True).items()
        }

    def _read_each(self, files: Iterable[int], keep: Callable[[int, pl.DataFrame], pl.DataFrame]
                   ) -> Iterator[pl.DataFrame]:
        """``keep(file, links)`` of each file, in order, read :data:`READ_AHEAD` at a time (an S3
        read waits tens of milliseconds; decoding releases the GIL); at most that many in memory."""
        files = list(files)
        with ThreadPoolExecutor(READ_AHEAD) as pool:
            for start in range(0, len(files), READ_AHEAD):
                yield from pool.map(lambda file: keep(file, check_links(pl.from_arrow(
                    self.store.read_parquet_file(self.paths[file], LINK_COLUMNS)), self.paths[file])),
                    files[start:start + READ_AHEAD])

    def links(self) -> Iterator[tuple[int, pl.DataFrame]]:
        """(subset, its links) in subset order, rows in shard and file order."""
        if self._kept is not None:
            yield 0, self._kept
            return
        for subset in self.documents:
            wanted = self._wanted[subset]
            yield subset, pl.concat(self._read_each(
                sorted(wanted), lambda file, links: links.filter(pl.col("doc_id").is_in(wanted[file].implode()))))
