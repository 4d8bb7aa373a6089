"""Run records and the failures table: what ran, with which parameters, and what it could not do."""

from __future__ import annotations

import gc
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from synthllm.lease import Lease, LeaseRecord, acquire
from synthllm.settings import Settings
from synthllm.store import Store


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_run_id() -> str:
    """The Prefect flow-run id when called inside a flow run, else a fresh uuid."""
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            return str(flow_run.id)
    except Exception:  # noqa: BLE001 - outside Prefect there is simply no flow run
        pass
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Failure:
    """One item a stage could not process, kept whole so nothing is lost."""

    stage: str
    item_id: str | None
    reason: str
    detail: str = ""
    raw: str | None = None
    source: str | None = None  # source URI (ingest) or model id
    prompt_version: str | None = None
    params_json: str | None = None


def failure_rows(failures: list[Failure], shard_id: str, run_id: str) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "stage": f.stage,
            "item_id": f.item_id,
            "reason": f.reason,
            "detail": f.detail,
            "raw": f.raw,
            "source": f.source,
            "prompt_version": f.prompt_version,
            "params_json": f.params_json,
            "shard_id": shard_id,
            "run_id": run_id,
            "created_at": now,
        }
        for f in failures
    ]


def write_failures(store: Store, stage: str, shard_id: str, run_id: str, failures: list[Failure]) -> int:
    """Failures of one shard go to their own shard (replaced on rerun, never duplicated)."""
    failure_shard = f"{stage}-{shard_id}"
    if not failures:
        if store.has_shard("failures", failure_shard):
            store.fs.rm(store.shard_path("failures", failure_shard))
        return 0
    return store.write_shard("failures", failure_shard, failure_rows(failures, failure_shard, run_id))


def public_params(settings: Settings, **flow_params: Any) -> str:
    """Settings and parameters as JSON, with secrets masked (pydantic SecretStr dumps as ***)."""
    return json.dumps(
        {"settings": json.loads(settings.model_dump_json()), "params": flow_params}, sort_keys=True, default=str
    )


def record_run_event(
    store: Store,
    run_id: str,
    flow: str,
    event: str,
    params_json: str | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    store.write_shard(
        "runs",
        f"{run_id}-{flow}-{event}",
        [
            {
                "run_id": run_id,
                "flow": flow,
                "event": event,
                "event_at": utcnow(),
                "params_json": params_json,
                "summary_json": json.dumps(summary, default=str) if summary is not None else None,
            }
        ],
    )


@contextmanager
def recorded_run(store: Store, flow: str, params_json: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Record started / finished (with the summary the body fills in) / failed for one flow run."""
    run_id = new_run_id()
    summary: dict[str, Any] = {}
    record_run_event(store, run_id, flow, "started", params_json)
    try:
        yield run_id, summary
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        record_run_event(store, run_id, flow, "failed", params_json, summary)
        raise
    record_run_event(store, run_id, flow, "finished", params_json, summary)


@dataclass
class RunContext:
    """What a flow's body works with: its settings, its store, its run id and the summary it fills."""

    settings: Settings
    store: Store
    run_id: str
    summary: dict[str, Any]

    def lease(self, name: str, what: str, logger) -> AbstractContextManager[Lease]:
        """The store lease ``name`` for this run: one run at a time does ``what`` on a store; a
        second waits ``orchestration.lease_wait_s`` with a warning naming the holder, then stops."""
        options = self.settings.orchestration

        def waiting(holder: LeaseRecord) -> None:
            logger.warning("%s of %s is being run by %s (since %s): waiting up to %.0f s", what, self.store.url,
                           holder.owner, holder.acquired_at, options.lease_wait_s)

        return acquire(self.store, name, self.run_id, options.lease_ttl_s, options.lease_wait_s, on_held=waiting)


_FROZEN = threading.Event()
# Young collections after 10,000 allocations instead of 700: a shard builds rows by the thousand,
# and most die young, so fewer of them reach (and trigger) the full collections.
GC_THRESHOLDS = (10_000, 10, 10)


def freeze_startup_objects() -> None:
    """Take what the process holds once it is set up out of the cyclic GC's scans, once per process.

    Modules, classes, pydantic schemas and Prefect's own objects are ~400k tracked objects that
    never become garbage, and every full collection walks them all: ~0.3 s of CPU each on this
    project's 2-core machine, 30-odd times in a 10k-document bench run (8.8 CPU-s; its
    synthesize phase used 29.5). After ``gc.freeze()`` full collections walk only the run's own
    objects. Collected first, so no garbage is frozen with them. The young-generation threshold
    is raised too (``GC_THRESHOLDS``).
    """
    if _FROZEN.is_set():
        return
    _FROZEN.set()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextmanager
def open_run(flow: str, settings: Settings, **flow_params: Any) -> Iterator[RunContext]:
    """The preamble and epilogue every flow shares: store reachable, run recorded, catalog refreshed."""
    freeze_startup_objects()
    store = Store(settings.store)
    store.check_reachable()
    with recorded_run(store, flow, public_params(settings, **flow_params)) as (run_id, summary):
        yield RunContext(settings, store, run_id, summary)
    store.write_catalog()


def clear_failures(store: Store, stage: str) -> int:
    """Forget a stage's recorded failures so the next run asks the LLM for those items again."""
    from synthllm.stages.registry import stage_names  # the stages import this module

    if stage == "ingest":
        raise ValueError("ingest failures are bad input records: fix the source and re-ingest it")
    retryable = [*stage_names(), "cold_start"]
    if stage not in retryable:
        raise ValueError(f"unknown stage {stage!r}; stages with failures to retry: {', '.join(retryable)}")
    prefix = f"{stage}-"
    shards = sorted(s for s in store.shard_ids("failures") if s.startswith(prefix))
    for shard_id in shards:
        store.fs.rm(store.shard_path("failures", shard_id))
    return len(shards)
