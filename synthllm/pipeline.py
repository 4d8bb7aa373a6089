"""Shard plans and the generic LLM shard runner shared by every generation stage.

A *plan* is the list of item ids of one shard, written to ``plans/<stage>/<shard_id>.parquet``
before any task runs: tasks get only a shard id (small, stable Prefect parameters and cache
keys), and a rerun with the same inputs finds the same shards. The output shard's existence
marks a shard done; the LLM response cache covers a shard that died half-way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from synthllm.engines.base import ChatRequest, ChatResult, Engine
from synthllm.engines.client import ENGINE_UNREACHABLE, LLM
from synthllm.engines.registry import engine_model_id as registry_model_id
from synthllm.engines.registry import make_engine
from synthllm.generation import Provenance, failure_from_result, provenance
from synthllm.prompts import Prompt
from synthllm.resources import read_sql
from synthllm.runs import Failure, write_failures
from synthllm.settings import EngineSettings, Settings
from synthllm.store import Store, stable_hash


# --------------------------------------------------------------------------- plans
def plan_path(store: Store, stage: str, shard_id: str) -> str:
    return store.path("plans", stage, f"{shard_id}.parquet")


def plan_shards(store: Store, stage: str, item_ids: Sequence[str], shard_size: int, key: Any) -> list[str]:
    """Chunk item ids into shards named by their content and ``key`` (prompt, model, params)."""
    shard_ids = []
    for start in range(0, len(item_ids), shard_size):
        chunk = list(item_ids[start : start + shard_size])
        shard_id = f"{stage}-{stable_hash(chunk, key)}"
        path = plan_path(store, stage, shard_id)
        if not store.exists(path):
            store.write_parquet(path, pa.table({"item_id": pa.array(chunk, pa.string())}))
        shard_ids.append(shard_id)
    return shard_ids


def pending_items(store: Store, stage: str, item_ids: Sequence[str], prompt_version: str, model: str) -> list[str]:
    """``item_ids`` without those the stage already covered (rows or failures) for this prompt
    and model, order kept: new documents form new shards, finished shards are not re-planned."""
    covered = set(store.query(read_sql("covered_items.sql"), [stage, prompt_version, model])["item_id"].to_list())
    return [item for item in item_ids if item not in covered]


def read_plan(store: Store, stage: str, shard_id: str) -> list[str]:
    return store.read_parquet_files([plan_path(store, stage, shard_id)]).column("item_id").to_pylist()


def select_documents(store: Store, settings: Settings) -> list[str]:
    """Documents to generate from: the reference set when filtering ran, else every document;
    a deterministic pseudo-random order (by seeded hash) so a budget takes an unbiased sample."""
    use_references = settings.filter.enabled and store.table_files("document_scores")
    sql = read_sql("reference_documents.sql") if use_references else "SELECT doc_id FROM documents"
    doc_ids = store.query(sql)["doc_id"].to_list()
    doc_ids.sort(key=lambda d: stable_hash(settings.generation.sampling.seed, d))
    budget = settings.generation.max_documents
    return doc_ids[:budget] if budget is not None else doc_ids


def fetch_rows(store: Store, table: str, key_column: str, ids: list[str], columns: str = "*") -> pl.DataFrame:
    """Rows of ``table`` whose key is in ``ids`` (DuckDB prunes with the id list)."""
    con = store.connect([table])
    try:
        con.register("_wanted", pa.table({"id": pa.array(ids, pa.string())}))
        return con.sql(f"SELECT {columns} FROM {table} WHERE {key_column} IN (SELECT id FROM _wanted)").pl()
    finally:
        con.close()


# --------------------------------------------------------------------------- engines
_LLMS: dict[str, LLM] = {}
_LLMS_LOCK = threading.Lock()
# In-process engines (one model in this process's memory) serve one batch at a time; shard
# tasks on other threads wait for it. Servers behind the openai backend take batches in parallel.
IN_PROCESS_BACKENDS = ("llamacpp", "vllm")
_BATCH_LOCKS: dict[int, threading.Lock] = {}


def _engine_key(store: Store, engine_settings: EngineSettings) -> str:
    return stable_hash(engine_settings.model_dump(mode="json", exclude={"api_key"}), store.url)


def install_engine(store: Store, engine_settings: EngineSettings, engine: Engine) -> LLM:
    """Serve ``engine_settings`` in this process with an engine object you built yourself
    (a scripted engine in tests, an engine shared with other code in a notebook)."""
    llm = LLM(engine, store, engine_settings)
    with _LLMS_LOCK:
        _LLMS[_engine_key(store, engine_settings)] = llm
    return llm


def engine_model_id(store: Store, engine_settings: EngineSettings) -> str:
    """The model id rows will carry: the engine's own when one is open in this process, else the
    registry's answer (which loads nothing: planning happens where no engine may be)."""
    with _LLMS_LOCK:
        llm = _LLMS.get(_engine_key(store, engine_settings))
    return llm.engine.model_id if llm is not None else registry_model_id(engine_settings)


def open_llm(store: Store, engine_settings: EngineSettings) -> LLM:
    """One engine per worker process and settings (vLLM holds the GPU for the process's life)."""
    key = _engine_key(store, engine_settings)
    with _LLMS_LOCK:
        if key not in _LLMS:
            engine: Engine = make_engine(engine_settings)
            _LLMS[key] = LLM(engine, store, engine_settings)
        return _LLMS[key]


def _batch_lock(llm: LLM) -> threading.Lock | None:
    if llm.engine.backend not in IN_PROCESS_BACKENDS:
        return None
    return _BATCH_LOCKS.setdefault(id(llm), threading.Lock())


# --------------------------------------------------------------------------- shard runner
class EngineUnavailable(RuntimeError):
    """The engine could not be reached for some items: the shard is not written, so a retry or
    a rerun asks again (answers already received stay in the response cache)."""

RowBuilder = Callable[[dict[str, Any], ChatResult, Provenance], "list[dict[str, Any]] | Failure"]


@dataclass
class ShardSummary:
    shard_id: str
    items: int = 0
    rows: int = 0
    failures: int = 0
    skipped: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_llm_shard(
    store: Store,
    llm: LLM,
    *,
    stage: str,
    table: str,
    shard_id: str,
    run_id: str,
    items: list[dict[str, Any]],
    item_key: str,
    prompt: Prompt,
    build_request: Callable[[dict[str, Any]], ChatRequest],
    build_rows: RowBuilder,
    engine_slot: Callable[[], AbstractContextManager] = nullcontext,
) -> ShardSummary:
    """Items -> one batch of requests -> rows of ``table`` and failures, written as one shard.

    ``engine_slot`` (a Prefect concurrency slot in tasks) is taken only once this thread holds
    the in-process engine, so a shard waiting for the engine never holds a GPU slot."""
    started = time.perf_counter()
    summary = ShardSummary(shard_id, items=len(items))
    requests = [build_request(item) for item in items]
    with _batch_lock(llm) or nullcontext(), engine_slot():
        results = llm.run(requests, stage=stage, shard_id=shard_id, run_id=run_id)
    unreachable = [r.error for r in results if r.error and r.error.startswith(ENGINE_UNREACHABLE)]
    if unreachable:
        raise EngineUnavailable(f"{stage} shard {shard_id}: {len(unreachable)} of {len(results)} requests "
                                f"found no engine ({unreachable[0]}); the shard will be retried")
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    model = llm.engine.model_id
    for item, request, result in zip(items, requests, results, strict=True):
        if not result.ok:
            failures.append(failure_from_result(stage, item[item_key], result, model))
            continue
        built = build_rows(item, result, provenance(prompt, model, request))
        if isinstance(built, Failure):
            failures.append(built)
        else:
            rows.extend({**row, "shard_id": shard_id, "run_id": run_id} for row in built)
    summary.failures = write_failures(store, stage, shard_id, run_id, failures)
    summary.rows = store.write_shard(table, shard_id, rows)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
