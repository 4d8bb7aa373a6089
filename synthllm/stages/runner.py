"""Run one shard of any stage: read its plan, load inputs, process, write rows and failures.

Failures are written before rows: the output shard is what marks a shard written, so a task
killed between the two leaves the shard to be redone, never rows without their failures.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from synthllm.engine_pool import POOL
from synthllm.engines.base import ChatResult
from synthllm.engines.client import ENGINE_UNREACHABLE
from synthllm.plans import read_plan
from synthllm.runs import Failure, write_failures
from synthllm.settings import Settings
from synthllm.stages.base import LLMStage, Provenance, RuleStage, Stage
from synthllm.stages.common import failure_from_result
from synthllm.store import Store


class EngineUnavailable(RuntimeError):
    """The engine could not be reached for some items: the shard is not written, so a retry or
    a rerun asks again (answers already received stay in the response cache)."""


@dataclass
class ShardSummary:
    stage: str
    shard_id: str
    items: int = 0
    rows: int = 0
    failures: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    cached: int = 0
    completion_tokens: int = 0
    skipped: bool = False
    seconds: float = 0.0
    read_seconds: float = 0.0  # reading the plan and the inputs: must not grow with the corpus

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def log_line(self) -> str:
        if self.skipped:
            return f"{self.stage} {self.shard_id}: skipped, already stored"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.failure_reasons.items(), key=lambda kv: -kv[1]))
        rate = self.completion_tokens / self.seconds if self.seconds else 0.0
        return (f"{self.stage} {self.shard_id}: {self.items} items -> {self.rows} rows, {self.failures} failures"
                f"{f' ({reasons})' if reasons else ''}, {self.cached} cache hits, {rate:.0f} tokens/s,"
                f" {self.seconds:.1f} s")


def run_shard(store: Store, settings: Settings, run_id: str, stage: Stage, shard_id: str,
              engine_slot: Callable[[], AbstractContextManager] = nullcontext) -> ShardSummary:
    """One planned shard of ``stage``; skipped when its output shard already exists.

    ``engine_slot`` (a Prefect concurrency slot in tasks) is taken only once this thread holds
    the in-process engine, so a shard waiting for the engine never holds a GPU slot."""
    if store.has_shard(stage.table, shard_id):
        return ShardSummary(stage.name, shard_id, skipped=True)
    started = time.perf_counter()
    inputs = stage.load(store, settings, read_plan(store, stage.name, shard_id))
    summary = ShardSummary(stage.name, shard_id, items=len(inputs.items) + len(inputs.failures),
                           read_seconds=round(time.perf_counter() - started, 4))
    if isinstance(stage, LLMStage):
        rows, failures, model = _run_llm(store, settings, run_id, stage, shard_id, inputs.items, engine_slot, summary)
    elif isinstance(stage, RuleStage):
        model = stage.model(store, settings)
        rows, failures = stage.process(settings, inputs, Provenance.of(stage.version(settings), model))
    else:
        raise TypeError(f"{stage!r} is neither an LLM nor a rule stage")
    version = stage.version(settings)
    failures = [dataclasses.replace(f, source=f.source or model, prompt_version=f.prompt_version or version)
                for f in inputs.failures + failures]
    summary.failures = write_failures(store, stage.name, shard_id, run_id, failures)
    summary.failure_reasons = dict(Counter(f.reason for f in failures))
    summary.rows = store.write_shard(stage.table, shard_id, rows, {"shard_id": shard_id, "run_id": run_id})
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _run_llm(store: Store, settings: Settings, run_id: str, stage: LLMStage, shard_id: str,
             items: list[dict[str, Any]], engine_slot: Callable[[], AbstractContextManager],
             summary: ShardSummary) -> tuple[list[dict[str, Any]], list[Failure], str]:
    llm = POOL.open(store, stage.engine(settings))
    requests = [stage.request(item, settings) for item in items]
    unreadable_cache: list[Failure] = []  # corrupt response-cache parts: read as misses, recorded
    with POOL.batch_slot(llm), engine_slot():
        results = llm.run(requests, stage=stage.name, shard_id=shard_id, run_id=run_id, problems=unreadable_cache)
    unreachable = [r.error for r in results if r.error and r.error.startswith(ENGINE_UNREACHABLE)]
    if unreachable:
        raise EngineUnavailable(f"{stage.name} shard {shard_id}: {len(unreachable)} of {len(results)} requests "
                                f"found no engine ({unreachable[0]}); the shard will be retried")
    model, version = llm.engine.model_id, stage.version(settings)
    summary.cached = sum(r.cached for r in results)
    summary.completion_tokens = sum(r.completion_tokens for r in results if not r.cached)
    origins = [Provenance.of(version, model, request) for request in requests]
    rows, failures = rows_and_failures(stage, settings, items, results, origins, model)
    return rows, unreadable_cache + failures, model


def rows_and_failures(stage: LLMStage, settings: Settings, items: list[dict[str, Any]], results: list[ChatResult],
                      origins: list[Provenance], model: str) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Replies -> the stage's rows; engine errors and replies the stage rejects -> failures."""
    failures: list[Failure] = []
    valid = []
    for item, result, origin in zip(items, results, origins, strict=True):
        if result.ok:
            valid.append((item, result, origin))
        else:
            failures.append(dataclasses.replace(failure_from_result(stage.name, item[stage.item_key], result, model),
                                                params_json=origin.params_json))
    built = stage.shard_rows(settings, *map(list, zip(*valid, strict=True))) if valid else []
    rows: list[dict[str, Any]] = []
    for (_, _, origin), out in zip(valid, built, strict=True):
        if isinstance(out, Failure):
            failures.append(dataclasses.replace(out, source=out.source or model,
                                                params_json=out.params_json or origin.params_json))
        else:
            rows.extend(out)
    return rows, failures
