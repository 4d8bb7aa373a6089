"""Prefect plumbing shared by every flow: cached shard tasks, result storage, task runners."""

from __future__ import annotations

import os
from typing import Any

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.task_runners import ThreadPoolTaskRunner

from synthllm.settings import Settings
from synthllm.store import Store, stable_hash

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# The run id only labels rows; it must not change a task's cache key.
SHARD_CACHE_POLICY = INPUTS - "run_id" + TASK_SOURCE


def result_storage(store: Store):
    """A saved storage block under ``<store>/prefect-results`` that every worker can read.

    Prefect requires result storage blocks to be saved server-side; the block name is derived
    from the store URL so several stores live side by side.
    """
    name = f"synthllm-results-{stable_hash(store.url, length=12)}"
    basepath = store.path("prefect-results")
    if store.is_s3:
        client_kwargs = {}
        if store.settings.s3_endpoint_url:
            client_kwargs["endpoint_url"] = store.settings.s3_endpoint_url
        block = RemoteFileSystem(basepath=basepath, settings={"client_kwargs": client_kwargs})
    else:
        block = LocalFileSystem(basepath=os.path.abspath(basepath))
    block.save(name, overwrite=True)
    return block


def shard_task_options(store: Store, settings: Settings, cached: bool = True) -> dict[str, Any]:
    """Options for shard tasks: results persisted in the store, retried, not kept in memory, and
    (``cached``) reused across runs by input. Generation shards pass ``cached=False``: the flow
    plans only items with no stored output, so a planned shard always has work to do, and a
    Prefect cache hit could only hide output someone deleted."""
    return {
        "persist_result": True,
        "result_storage": result_storage(store),
        "cache_policy": SHARD_CACHE_POLICY if cached else NO_CACHE,
        "cache_result_in_memory": False,
        "retries": settings.orchestration.task_retries,
        "retry_delay_seconds": settings.orchestration.retry_delay_s,
    }


def make_task_runner(settings: Settings):
    """Thread pool by default; Dask or Ray (prefect-dask / prefect-ray) to spread shards over machines."""
    workers = settings.orchestration.task_workers
    if settings.orchestration.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    if settings.orchestration.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=settings.orchestration.ray_address)
    return ThreadPoolTaskRunner(max_workers=workers)
