"""Prefect plumbing shared by every flow: payload decoding, result storage, task options, runners."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from urllib.parse import urlsplit

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.concurrency.sync import concurrency
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from synthllm.commands.server import default_server_environment
from synthllm.engines.base import EngineAuthError, RunStopped
from synthllm.ingest import IngestError, TransientReadError
from synthllm.runs import freeze_startup_objects
from synthllm.settings import Settings, SettingsError, settings_from_payload
from synthllm.stages.runner import ShardSummary
from synthllm.store import Store, stable_hash
from tasks.prefect_costs import serialize_settings_once, trim_prefect_costs

default_server_environment()
trim_prefect_costs()

# The run id only labels rows; it must not change a task's cache key.
SHARD_CACHE_POLICY = INPUTS - "run_id" + TASK_SOURCE


def open_payload(settings_payload: dict[str, Any] | str) -> tuple[Settings, Store]:
    """The one way a task turns its settings parameter back into settings and a store (the one
    its process's tasks share for those store settings)."""
    freeze_startup_objects()  # a worker process's first task: see synthllm.runs
    settings = settings_from_payload(settings_payload)
    return settings, Store.shared(settings.store)


def engine_slot(settings: Settings):
    """A GPU slot of the Prefect global concurrency limit, when one is configured."""
    limit = settings.orchestration.gpu_concurrency_limit
    return (lambda: concurrency(limit, occupy=1, strict=True)) if limit else nullcontext


def report_shard(logger, settings: Settings, summary: ShardSummary) -> dict[str, Any]:
    """One log line per shard; a warning with the top reasons when too many items failed."""
    logger.info(summary.log_line())
    share = summary.failures / summary.items if summary.items else 0.0
    if share > settings.orchestration.warn_failure_share:
        top = sorted(summary.failure_reasons.items(), key=lambda kv: -kv[1])[:3]
        logger.warning("%s %s: %d of %d items failed (%.0f%%); top reasons: %s", summary.stage, summary.shard_id,
                       summary.failures, summary.items, 100 * share, ", ".join(f"{r} ({n})" for r, n in top))
    return summary.as_dict()


def result_storage(store: Store):
    """A saved storage block under ``<store>/prefect-results`` that every worker can read.

    Prefect requires result storage blocks to be saved server-side; the block name is derived
    from the store URL so several stores live side by side.
    """
    name = f"synthllm-results-{stable_hash(store.url, length=12)}"
    basepath = store.path("prefect-results")
    if store.is_s3:
        block = RemoteFileSystem(basepath=basepath, settings={"client_kwargs": store.settings.client_kwargs()})
    else:
        block = LocalFileSystem(basepath=os.path.abspath(basepath))
    block.save(name, overwrite=True)
    return block


# Errors a retry cannot fix: a refused API key, a stop the user asked for, bad input (an
# IngestError such as an unknown format; a broken file is recorded in failures, not raised).
PERMANENT_ERRORS = (EngineAuthError, RunStopped, SettingsError, IngestError)


def retry_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry everything but the permanent errors."""
    try:
        state.result()
    except TransientReadError:  # an IngestError that may pass next time (a connection error)
        return True
    except PERMANENT_ERRORS:
        return False
    except BaseException:  # noqa: BLE001 - anything else may be transient
        return True
    return True


def task_options(settings: Settings, uses_engine: bool = False) -> dict[str, Any]:
    """Retries (transient errors only) and tags for any task. Tags only with
    ``orchestration.tag_tasks``: a tagged task run looks up tag concurrency limits, a round trip
    to the API, even when none exists."""
    tags = [engine_tag(settings) if uses_engine else "cpu"] if settings.orchestration.tag_tasks else []
    return {"retries": settings.orchestration.task_retries, "retry_delay_seconds": settings.orchestration.retry_delay_s,
            "retry_condition_fn": retry_transient, "tags": tags}


def shard_task_options(store: Store, settings: Settings, cached: bool = True, uses_engine: bool = False
                       ) -> dict[str, Any]:
    """Options for shard tasks: retried and (``cached``) reused across runs by input, with
    results persisted in the store. Shard stages pass ``cached=False``: the flow plans only items
    with no stored output, the store is the record, so no Prefect result is written at all."""
    options: dict[str, Any] = {**task_options(settings, uses_engine), "cache_result_in_memory": False}
    if cached:
        options.update(persist_result=True, result_storage=result_storage(store), cache_policy=SHARD_CACHE_POLICY)
    else:
        options.update(persist_result=False, cache_policy=NO_CACHE)
    return options


def engine_tag(settings: Settings) -> str:
    """What a shard task occupies: a GPU (vLLM), CPU cores (llama.cpp, the stand-in) or a server's capacity (openai)."""
    return {"vllm": "gpu", "llamacpp": "cpu", "standin": "cpu", "openai": "server"}[settings.engine.backend]


def api_url() -> str:
    """The Prefect API this process reports to: the configured one, or the temporary server of a CLI or ad-hoc run."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def worker_environment() -> dict[str, str]:
    """The Prefect API this process reports to, for worker processes it starts.

    Without ``PREFECT_API_URL`` (the ephemeral API) each Dask worker would start a Prefect server of
    its own: one more process per worker, all writing to the same database.
    """
    return {"PREFECT_API_URL": api_url()}


def _is_loopback(address: str) -> bool:
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


@contextmanager
def open_task_runner(settings: Settings) -> Iterator[Any]:
    """The run's task runner, entered: threads by default; Dask or Ray (prefect-dask / prefect-ray)
    to spread shards over processes or machines.

    A running Dask cluster (``dask_address``) is connected to here, so an address where no
    scheduler answers stops the run before any shard. Tasks sent to it carry the flow's Prefect
    settings, the API URL among them. A run on the temporary API has none there: its URL is put in
    for a scheduler on this machine (the workers can reach the temporary server's 127.0.0.1
    port), and refused for another machine's.
    """
    options = settings.orchestration
    address = options.dask_address if options.task_runner == "dask" else None
    temporary_api = bool(address) and PREFECT_API_URL.value() is None
    if temporary_api and not _is_loopback(address):
        raise SettingsError(
            f"orchestration.dask_address={address}: the cluster's workers must report to a Prefect server "
            "they can reach, and this run uses a temporary one on 127.0.0.1; set PREFECT_API_URL "
            "(prefect server start, docs/orchestration.md)")
    with make_task_runner(settings) as runner:
        if address:
            try:
                runner.client  # noqa: B018 - prefect-dask connects on first use
            except OSError as exc:
                raise SettingsError(f"orchestration.dask_address={address}: no Dask scheduler answered ({exc}); "
                                    "start one (dask scheduler) or fix the address") from None
        with temporary_settings({PREFECT_API_URL: api_url()}) if temporary_api else nullcontext():
            yield runner


def make_task_runner(settings: Settings):
    """The task runner ``orchestration.task_runner`` names, not yet entered (see :func:`open_task_runner`)."""
    workers, runner = settings.orchestration.task_workers, settings.orchestration.task_runner
    if runner in ("dask", "ray"):
        try:
            module = importlib.import_module(f"prefect_{runner}")
        except ImportError:
            raise SettingsError(f"orchestration.task_runner={runner} needs prefect-{runner}: "
                                f"pip install 'synthllm[{runner}]' (in the worker image too)") from None
        serialize_settings_once()
    if runner == "dask":
        from tasks.dask_runner import ShardDaskTaskRunner

        if settings.orchestration.dask_address:
            return ShardDaskTaskRunner(address=settings.orchestration.dask_address)
        return ShardDaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                                   "processes": True, "env": worker_environment()})
    if runner == "ray":
        address = settings.orchestration.ray_address
        # a temporary local cluster: its workers report to this API (a cluster's nodes bring their own)
        init_kwargs = {} if address else {"runtime_env": {"env_vars": worker_environment()}}
        return module.RayTaskRunner(address=address, init_kwargs=init_kwargs)
    return ThreadPoolTaskRunner(max_workers=workers)
