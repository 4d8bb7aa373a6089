"""The concept-graph stage: concepts table, co-occurrence edges, walks and grounding (level 3 input).

Not an LLM stage: it reads ``document_concepts`` and writes ``concepts``, ``concept_edges`` and
``concept_combinations``, one edges and one combinations shard per subset of documents.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from synthllm.graph import (
    LINK_COLUMNS,
    ConceptGraph,
    assign_subsets,
    check_links,
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
    links = store.read_table("document_concepts", link_shards, columns=LINK_COLUMNS)
    store.write_shard("concepts", "all", store.query(read_sql("concepts_table.sql"), tables=["document_concepts"])
                      .with_columns(shard_id=pl.lit("all"), run_id=pl.lit(run_id)))
    if links.is_empty():
        return {"graph_key": key, "subsets": [], "combinations": 0}
    parts = sorted(assign_subsets(check_links(links), settings.graph.subset_size)
                   .partition_by("subset", as_dict=True, include_key=False).items())
    budgets = (split_budget(total, [part["doc_id"].n_unique() for _, part in parts]) if total is not None
               else [None] * len(parts))
    stats = []
    for ((subset,), part), budget in zip(parts, budgets):
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
