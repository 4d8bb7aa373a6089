"""The synthesize flow end to end with a scripted engine: all three levels, answers,
provenance, failures, reruns without LLM calls, resume after a crash mid-shard."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.synthesize import synthesize_flow
from scripted_llm import PipelineResponder
from synthllm.engines.scripted import ScriptedEngine
from synthllm.engine_pool import install_engine
from synthllm.settings import load_settings
from synthllm.store import Store
from synthllm.ingest import ingest_file
from synthllm.ingest import expand_sources

OVERRIDES = {
    "filter.enabled": False,
    "generation.max_documents": 10,
    "generation.max_combinations": 8,
    "generation.shard_size": 4,
    "engine.cache_flush_every": 1,
    "graph.epochs": 2,
}


def ingest_sample(store_url: str, sample_dir: Path) -> None:
    settings = load_settings(store=store_url)
    for source in expand_sources([str(sample_dir / "openstax-algebra.jsonl")], settings.store):
        ingest_file(Store(settings.store), settings, "ingest", source)


def scripted(store_url: str, responder=None, overrides=None) -> ScriptedEngine:
    settings = load_settings(overrides={**OVERRIDES, **(overrides or {})}, store=store_url)
    engine = ScriptedEngine(responder or PipelineResponder())
    install_engine(settings.engine, engine)
    return engine


@pytest.fixture
def sample_store(store_url: str, sample_dir: Path) -> str:
    ingest_sample(store_url, sample_dir)
    return store_url


def test_three_levels_answers_and_provenance(prefect_harness, sample_store: str) -> None:
    engine = scripted(sample_store)
    summary = synthesize_flow(store=sample_store, overrides=OVERRIDES)
    store = Store(sample_store)
    questions = store.read_table("questions")
    answers = store.read_table("answers")
    assert sorted(questions["level"].unique().to_list()) == [1, 2, 3]
    assert set(answers["question_id"]) == set(questions["question_id"])
    assert questions["question_id"].n_unique() == questions.height
    # provenance: prompt version, model, params, run and source documents on every row
    assert questions.filter(pl.col("level") == 1)["prompt_version"].unique().to_list() == ["level1_questions@1"]
    assert (questions["model"] == "scripted").all() and questions["run_id"].n_unique() == 1
    assert all(json.loads(p)["seed"] is not None for p in questions["params_json"])
    level3 = questions.filter(pl.col("level") == 3)
    combos = store.read_table("concept_combinations")
    assert set(level3["combo_id"]) <= set(combos["combo_id"])
    for row in level3.iter_rows(named=True):
        combo = combos.filter(pl.col("combo_id") == row["combo_id"]).row(0, named=True)
        assert row["doc_ids"] == combo["ref_doc_ids"] and set(row["concepts"]) <= set(combo["kcs"])
    level2 = questions.filter(pl.col("level") == 2)
    links = store.read_table("document_concepts")
    for row in level2.iter_rows(named=True):
        doc_kcs = set(links.filter(pl.col("doc_id") == row["doc_ids"][0])["kc_id"].drop_nulls())
        assert len(row["concepts"]) >= 2 and set(row["concepts"]) <= doc_kcs
    assert answers["final_answer"].null_count() == 0 and (answers["confidence"] == 1.0).all()
    assert store.read_table("concepts").height > 0 and store.read_table("concept_edges").height > 0
    stages = {s["stage"]: s for s in summary["stages"]}
    assert set(stages) == {"concepts", "level1", "level2", "level3", "question_gate", "answer"}
    assert stages["concepts"]["items"] == 10
    usage = store.read_table("llm_usage")
    assert usage["calls"].sum() == engine.calls

    # a rerun with the same parameters makes no LLM call and adds no row
    calls = engine.calls
    synthesize_flow(store=sample_store, overrides=OVERRIDES)
    assert engine.calls == calls
    assert store.read_table("questions").height == questions.height
    assert store.read_table("answers").height == answers.height


def test_malformed_replies_go_to_failures(prefect_harness, sample_store: str) -> None:
    store = Store(sample_store)
    docs = store.read_table("documents")
    victim = docs.sort("doc_id")["text"][0][:60]
    scripted(sample_store, PipelineResponder(bad_documents=(victim,)))
    synthesize_flow(store=sample_store, overrides={**OVERRIDES, "generation.max_documents": None,
                                                   "generation.levels": [1]})
    failures = store.read_table("failures").filter(pl.col("stage") == "level1")
    bad = failures.filter(pl.col("item_id") == docs.sort("doc_id")["doc_id"][0])
    assert bad["reason"].to_list() == ["invalid_json"]
    assert bad["raw"][0].startswith('{"questions"')
    assert bad["source"][0] == "scripted"


def test_crash_mid_shard_resumes_without_repeating_calls(prefect_harness, sample_store: str) -> None:
    overrides = {**OVERRIDES, "generation.levels": [1], "orchestration.task_retries": 0}
    healthy = PipelineResponder()
    state = {"calls": 0}

    def dies_after_five(request):
        state["calls"] += 1
        if state["calls"] > 5:
            raise ConnectionError("engine process died")
        return healthy(request)

    scripted(sample_store, dies_after_five, overrides)
    with pytest.raises(Exception, match="engine process died"):
        synthesize_flow(store=sample_store, overrides=overrides)
    store = Store(sample_store)
    assert len(store.table_files("questions")) < 3  # 10 documents in shards of 4: some died unwritten

    engine = scripted(sample_store, overrides=overrides)
    synthesize_flow(store=sample_store, overrides=overrides)
    # the 5 level-1 replies received before the crash come from the cache; every answer is new
    questions = store.read_table("questions")
    assert engine.calls == 10 - 5 + questions.height
    assert questions.height > 0 and questions["question_id"].n_unique() == questions.height


def test_dead_engine_leaves_shard_unwritten(prefect_harness, sample_store: str) -> None:
    overrides = {**OVERRIDES, "generation.levels": [1], "orchestration.task_retries": 0}

    class DeadEngine(ScriptedEngine):
        def generate(self, requests):
            from synthllm.engines.base import ChatResult

            return [ChatResult(error="engine_unreachable: connection refused") for _ in requests]

    settings = load_settings(overrides=overrides, store=sample_store)
    install_engine(settings.engine, DeadEngine(PipelineResponder()))
    with pytest.raises(Exception, match="found no engine"):
        synthesize_flow(store=sample_store, overrides=overrides)
    store = Store(sample_store)
    assert not store.table_files("questions")
    engine = scripted(sample_store, overrides=overrides)
    synthesize_flow(store=sample_store, overrides=overrides)
    assert store.read_table("questions").height > 0 and engine.calls > 0


def test_retry_failures_replans_only_failed_items(prefect_harness, sample_store: str) -> None:
    overrides = {**OVERRIDES, "generation.levels": [1], "generation.max_documents": 4}
    from synthllm.plans import select_documents

    store = Store(sample_store)
    first = select_documents(store, load_settings(overrides=overrides, store=sample_store))[0]
    victim = store.read_table("documents").filter(pl.col("doc_id") == first)["text"][0][:60]
    scripted(sample_store, PipelineResponder(bad_documents=(victim,)), overrides)
    synthesize_flow(store=sample_store, overrides=overrides)
    failed = set(store.read_table("failures").filter(pl.col("stage") == "level1")["item_id"])
    engine = scripted(sample_store, overrides=overrides)
    synthesize_flow(store=sample_store, overrides=overrides)
    assert engine.calls == 0  # failures are not retried by a plain rerun

    from typer.testing import CliRunner

    from synthllm.cli import app

    result = CliRunner().invoke(app, ["retry-failures", "level1", "--store", sample_store])
    assert result.exit_code == 0, result.output
    synthesize_flow(store=sample_store, overrides=overrides)
    retried_docs = {r.messages[-1]["content"] for r in engine.requests if r.json_schema}
    assert len(retried_docs) == len(failed) and len(failed) >= 1
    assert store.read_table("failures").filter(pl.col("stage") == "level1").is_empty()
