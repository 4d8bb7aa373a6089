"""Stage 1 tasks: write cold-start examples, rate a sample part, train a round, score a documents shard.

Each task's output is a store object (a ``document_scores`` shard, a model file, an examples
file) whose name carries everything that shaped it; a task whose output exists returns at once
(resume). The store, not Prefect's result cache, is the record: a round's stale shards are pruned
by the flow, and a result cache would then point at deleted shards.

The plain functions (``*_body``) hold the work so tests and benchmarks run them without Prefect;
LLM work goes through :func:`synthllm.pipeline.open_llm` (one engine per worker process).
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from synthllm import filtering as F
from synthllm.pipeline import open_llm
from synthllm.prompts import load_prompt
from synthllm.runs import Failure, write_failures
from synthllm.settings import Settings, settings_from_payload
from synthllm.store import Store


def _kept(rows: pa.Table) -> int:
    return sum(rows.column("kept").to_pylist())


def _engine_label(settings: Settings) -> str:
    """The configured model, known before any engine is loaded (shard names, skip checks)."""
    return f"{settings.engine.backend}:{settings.engine.model}"


def write_examples_body(store: Store, settings: Settings, run_id: str) -> dict[str, Any]:
    """Cold start: the LLM writes ``cold_start_positives`` domain documents into one Parquet file."""
    fs = settings.filter
    path = F.examples_path(store, fs, _engine_label(settings))
    if store.exists(path):
        return {"path": path, "examples": pl.read_parquet(io.BytesIO(store.read_bytes(path))).height, "skipped": True}
    specs = F.example_specs(fs)
    shard_id = path.rsplit("/", 1)[1].removesuffix(".parquet")
    llm = open_llm(store, settings.engine)
    results = llm.run(F.example_requests(specs, fs), stage="cold_start", shard_id=shard_id, run_id=run_id)
    examples, failures = F.parse_examples(specs, results, llm.engine.model_id)
    write_failures(store, "cold_start", shard_id, run_id, failures)
    if not examples:
        raise F.FilterError(
            f"the LLM wrote no usable cold-start example ({len(failures)} failures, stage 'cold_start')"
        )
    buffer = io.BytesIO()
    pl.DataFrame(examples).write_parquet(buffer)
    store.write_bytes(path, buffer.getvalue())
    return {"path": path, "examples": len(examples), "failures": len(failures), "skipped": False}


def rate_documents_body(
    store: Store, settings: Settings, round_index: int, doc_ids: list[str], run_id: str
) -> dict[str, Any]:
    """Rate one part of a round's sample; the ratings become rater rows of ``document_scores``."""
    fs = settings.filter
    shard_id = F.rating_shard_id(round_index, doc_ids, fs, _engine_label(settings))
    if store.has_shard("document_scores", shard_id):
        return {"shard_id": shard_id, "rated": 0, "failures": 0, "skipped": True}
    texts = F.document_texts(store, doc_ids, fs.rater_chars)
    failures = [
        Failure("rate", doc_id, "missing_document", "not in the documents table", None, None)
        for doc_id in doc_ids
        if doc_id not in texts
    ]
    llm = open_llm(store, settings.engine)
    results = llm.run(F.rating_requests(list(texts.values()), fs), stage="rate", shard_id=shard_id, run_id=run_id)
    rows, rating_failures = F.parse_ratings(
        list(texts), results, round_=round_index, settings=fs, model_id=llm.engine.model_id,
        shard_id=shard_id, run_id=run_id,
    )
    failures += rating_failures
    # failures first: the shard is what marks this part done
    write_failures(store, "rate", shard_id, run_id, failures)
    store.write_shard("document_scores", shard_id, rows)
    return {"shard_id": shard_id, "rated": len(rows), "failures": len(failures), "skipped": False}


def train_filter_body(
    store: Store, settings: Settings, round_index: int, examples_path: str | None = None
) -> dict[str, Any]:
    """Train a round's model and publish it at ``models/filter/round-<k>.joblib`` for the scoring tasks."""
    fs = settings.filter
    if round_index == 0:
        if examples_path is None:
            raise F.FilterError("round 0 needs the cold-start examples file")
        examples = pl.read_parquet(io.BytesIO(store.read_bytes(examples_path)))
        positives = dict(zip(examples["doc_id"].to_list(), examples["text"].to_list(), strict=True))
        negative_ids = F.random_documents(store, fs.rate_sample_size, F.sample_salt(fs, 0), before_round=0)
        model = F.train_cold_start(positives, F.document_texts(store, negative_ids, fs.rater_chars), fs)
    else:
        model = F.train_rating_model(F.training_ratings(store, round_index, fs.rater_chars), round_index, fs)
    path = F.save_model(store, model)
    return {"round": round_index, "version": model.version, "score_key": F.score_key(model, fs),
            "n_train": model.n_train, "path": path}


def score_shard_body(
    store: Store, settings: Settings, round_index: int, version: str, score_key: str, documents_shard: str, run_id: str
) -> dict[str, Any]:
    """Score one documents shard with the round's model: one classifier row per document."""
    shard_id = F.score_shard_id(round_index, score_key, documents_shard)
    if store.has_shard("document_scores", shard_id):
        return {"shard_id": shard_id, "scored": 0, "kept": 0, "skipped": True}
    model = F.load_model(store, round_index, version)
    documents = pq.read_table(
        io.BytesIO(store.read_bytes(store.shard_path("documents", documents_shard))), columns=["doc_id", "text"]
    )
    doc_ids, texts = documents.column("doc_id").to_pylist(), documents.column("text").to_pylist()
    rows = F.score_rows(model, doc_ids, texts, settings=settings.filter, shard_id=shard_id, run_id=run_id)
    store.write_shard("document_scores", shard_id, rows)
    return {"shard_id": shard_id, "scored": rows.num_rows, "kept": _kept(rows), "skipped": False}


def score_examples_body(
    store: Store, settings: Settings, version: str, score_key: str, examples_path: str, run_id: str
) -> dict[str, Any]:
    """Round-0 rows for the cold-start examples themselves (is_synthetic): how the model sees its positives."""
    shard_id = F.score_shard_id(0, score_key, "synthetic")
    if store.has_shard("document_scores", shard_id):
        return {"shard_id": shard_id, "scored": 0, "kept": 0, "skipped": True}
    model = F.load_model(store, 0, version)
    examples = pl.read_parquet(io.BytesIO(store.read_bytes(examples_path)))
    rows = F.score_rows(
        model, examples["doc_id"].to_list(), examples["text"].to_list(), settings=settings.filter,
        shard_id=shard_id, run_id=run_id, is_synthetic=True,
        prompt_version=load_prompt(F.WRITE_PROMPT).version, llm_model=examples["model"][0],
    )
    store.write_shard("document_scores", shard_id, rows)
    return {"shard_id": shard_id, "scored": rows.num_rows, "kept": _kept(rows), "skipped": False}


# --------------------------------------------------------------------------- Prefect tasks
def _context(settings_payload: dict[str, Any]) -> tuple[Settings, Store]:
    settings = settings_from_payload(settings_payload)
    return settings, Store(settings.store)


@task(name="filter-write-examples", tags=["gpu"], cache_policy=NO_CACHE)
def write_examples(settings_payload: dict[str, Any], run_id: str) -> dict[str, Any]:
    settings, store = _context(settings_payload)
    summary = write_examples_body(store, settings, run_id)
    get_run_logger().info("cold-start examples: %s", summary)
    return summary


@task(name="filter-sample", cache_policy=NO_CACHE)
def draw_rating_sample(settings_payload: dict[str, Any], round_index: int) -> list[str]:
    settings, store = _context(settings_payload)
    return F.rating_sample(store, settings.filter, round_index)


@task(name="filter-rate", tags=["gpu"], cache_policy=NO_CACHE)
def rate_documents(
    settings_payload: dict[str, Any], round_index: int, doc_ids: list[str], run_id: str
) -> dict[str, Any]:
    settings, store = _context(settings_payload)
    return rate_documents_body(store, settings, round_index, doc_ids, run_id)


@task(name="filter-train", cache_policy=NO_CACHE)
def train_filter(
    settings_payload: dict[str, Any], round_index: int, examples_path: str | None = None
) -> dict[str, Any]:
    settings, store = _context(settings_payload)
    summary = train_filter_body(store, settings, round_index, examples_path)
    get_run_logger().info("round %d model: %s", round_index, summary)
    return summary


@task(name="filter-score", cache_policy=NO_CACHE)
def score_shard(
    settings_payload: dict[str, Any], round_index: int, version: str, score_key: str, documents_shard: str, run_id: str
) -> dict[str, Any]:
    settings, store = _context(settings_payload)
    return score_shard_body(store, settings, round_index, version, score_key, documents_shard, run_id)


@task(name="filter-score-examples", cache_policy=NO_CACHE)
def score_examples(
    settings_payload: dict[str, Any], version: str, score_key: str, examples_path: str, run_id: str
) -> dict[str, Any]:
    settings, store = _context(settings_payload)
    return score_examples_body(store, settings, version, score_key, examples_path, run_id)
