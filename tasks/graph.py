"""The concept-graph task: Prefect around :func:`synthllm.stages.graph.build_concept_graph`."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from synthllm.stages import graph as graph_stage
from tasks.common import open_payload


@task(name="build-concept-graph")
def build_concept_graph(settings_payload: dict[str, Any], run_id: str, link_shards: list[str]) -> dict[str, Any]:
    """Build the graph of every subset, sample walks, ground them; cached on the input shards."""
    settings, store = open_payload(settings_payload)
    result = graph_stage.build_concept_graph(store, settings, run_id, link_shards)
    if result["subsets"]:
        create_table_artifact(key="concept-graph", table=result["subsets"],
                              description=f"Concept graph {result['graph_key']}: nodes, edges, combinations")
    get_run_logger().info("concept graph %s: %s", result["graph_key"], result["subsets"])
    return result
