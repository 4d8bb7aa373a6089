"""The Prefect task of every shard stage: one task = one shard of thousands of items.

The work is :func:`synthllm.stages.runner.run_shard`; this module adds Prefect's retries, the
optional GPU concurrency slot and one log line per shard.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from synthllm.stages.registry import stage as registered_stage
from synthllm.stages.runner import run_shard
from tasks.common import engine_slot, open_payload, report_shard


@task(name="generate-shard", task_run_name="{stage}:{shard_id}")
def generate_shard(stage: str, shard_id: str, settings_payload: dict[str, Any] | str, run_id: str) -> dict[str, Any]:
    """Run one shard of one stage (concepts, level 1/2/3, the question gate, the judge, answers).

    With ``orchestration.gpu_concurrency_limit`` set, a Prefect global concurrency limit
    (``prefect gcl create gpu --limit <GPUs>``) keeps engine shards from outnumbering the GPUs.
    """
    settings, store = open_payload(settings_payload)
    summary = run_shard(store, settings, run_id, registered_stage(stage), shard_id, engine_slot(settings))
    return report_shard(get_run_logger(), settings, summary)
