"""The concept-graph task: concepts table, co-occurrence edges, walks and grounding (level 3 input)."""

from __future__ import annotations

from typing import Any

import networkx as nx
import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from synthllm.graph import InvertedIndex, assign_subsets, build_graphs, check_links, ground, sample_combinations
from synthllm.resources import read_sql
from synthllm.settings import Settings, settings_from_payload
from synthllm.store import Store, stable_hash

# networkx summaries (components, density) are computed for graphs up to this many edges;
# larger ones keep to the vectorised arrays (see synthllm.graph).
NETWORKX_MAX_EDGES = 2_000_000


def graph_key(link_shards: list[str], settings: Settings) -> str:
    """A graph version: the concept links it was built from and the graph settings."""
    return stable_hash(sorted(link_shards), settings.graph.model_dump(mode="json"),
                       settings.generation.max_combinations)


def build_concept_graph_body(settings: Settings, store: Store, run_id: str, link_shards: list[str]) -> dict[str, Any]:
    key = graph_key(link_shards, settings)
    links = store.read_table("document_concepts", link_shards)
    store.write_shard("concepts", "all", store.query(read_sql("concepts_table.sql"), tables=["document_concepts"])
                      .with_columns(shard_id=pl.lit("all"), run_id=pl.lit(run_id)))
    if links.is_empty():
        return {"graph_key": key, "subsets": [], "combinations": 0}
    subset_links = assign_subsets(check_links(links), settings.graph.subset_size)
    stats = []
    for graph in build_graphs(links, settings.graph):
        edges_shard, combos_shard = f"edges-{key}-{graph.subset}", f"combos-{key}-{graph.subset}"
        graph_stats = dict(graph.stats())
        if sum(v for k, v in graph_stats.items() if k.startswith("edges_")) <= NETWORKX_MAX_EDGES:
            view = graph.to_networkx()
            graph_stats["components"] = nx.number_connected_components(view) if view.number_of_nodes() else 0
            graph_stats["density"] = round(nx.density(view), 6) if view.number_of_nodes() > 1 else 0.0
        if store.has_shard("concept_combinations", combos_shard):
            stats.append({**graph_stats, "combinations": None, "skipped": True})
            continue
        store.write_shard("concept_edges", edges_shard,
                          graph.edges_frame().with_columns(shard_id=pl.lit(edges_shard), run_id=pl.lit(run_id)))
        combos = sample_combinations(graph, settings.graph, settings.generation.max_combinations)
        index = InvertedIndex.from_links(subset_links.filter(pl.col("subset") == graph.subset).drop("subset"))
        grounded = ground(combos, index, settings.graph.references)
        rows = store.write_shard("concept_combinations", combos_shard,
                                 grounded.with_columns(shard_id=pl.lit(combos_shard), run_id=pl.lit(run_id)))
        stats.append({**graph_stats, "combinations": rows, "skipped": False})
    return {"graph_key": key, "subsets": stats,
            "combinations": sum(s["combinations"] or 0 for s in stats)}


@task(name="build-concept-graph", tags=["cpu"])
def build_concept_graph(settings_payload: dict[str, Any], run_id: str, link_shards: list[str]) -> dict[str, Any]:
    """Build the graph of every subset, sample walks, ground them; cached on the input shards."""
    settings = settings_from_payload(settings_payload)
    result = build_concept_graph_body(settings, Store(settings.store), run_id, link_shards)
    if result["subsets"]:
        create_table_artifact(key="concept-graph", table=result["subsets"],
                              description=f"Concept graph {result['graph_key']}: nodes, edges, combinations")
    get_run_logger().info("concept graph %s: %s", result["graph_key"], result["subsets"])
    return result
