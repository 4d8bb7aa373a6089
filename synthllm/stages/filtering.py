"""Stage 1 bodies: cold-start examples, rating a sample part, training a round, scoring a documents shard.

Each body's output is a store object (a ``document_scores`` shard, a model file, an examples
file) whose name carries everything that shaped it; a body whose output exists returns at once
(resume). The store, not Prefect's result cache, is the record: a round's stale shards are
pruned by the flow, and a result cache would then point at deleted shards.
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from synthllm import filtering as F
from synthllm.engine_pool import POOL
from synthllm.prompts import load_prompt
from synthllm.runs import write_failures
from synthllm.settings import Settings
from synthllm.stages.rate import RateStage
from synthllm.stages.runner import run_shard
from synthllm.store import Store


def _kept(rows: pa.Table) -> int:
    return sum(rows.column("kept").to_pylist())


def _engine_label(settings: Settings) -> str:
    """The configured model, known before any engine is loaded (shard names, skip checks)."""
    return f"{settings.engine.backend}:{settings.engine.model}"


def write_examples(store: Store, settings: Settings, run_id: str) -> dict[str, Any]:
    """Cold start: the LLM writes ``cold_start_positives`` domain documents into one Parquet file."""
    fs = settings.filter
    path = F.examples_path(store, fs, _engine_label(settings))
    if store.exists(path):
        return {"path": path, "examples": pl.read_parquet(io.BytesIO(store.read_bytes(path))).height, "skipped": True}
    specs = F.example_specs(fs)
    shard_id = path.rsplit("/", 1)[1].removesuffix(".parquet")
    llm = POOL.open(store, settings.engine)
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


def rate_documents(store: Store, settings: Settings, run_id: str, round_index: int, doc_ids: list[str]
                   ) -> dict[str, Any]:
    """Rate one part of a round's sample (the rating stage); the ratings become rater rows of ``document_scores``."""
    stage = RateStage(round_index)
    summary = run_shard(store, settings, run_id, stage, stage.plan(store, settings, doc_ids))
    return {"shard_id": summary.shard_id, "rated": summary.rows, "failures": summary.failures,
            "skipped": summary.skipped}


def train_filter(store: Store, settings: Settings, round_index: int, examples_path: str | None = None
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


def score_shard(store: Store, settings: Settings, run_id: str, round_index: int, version: str, score_key: str,
                documents_shard: str) -> dict[str, Any]:
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


def score_examples(store: Store, settings: Settings, run_id: str, version: str, score_key: str,
                   examples_path: str) -> dict[str, Any]:
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
