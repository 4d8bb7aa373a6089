"""Stages overlap: a finished shard is planned for the stages waiting for it at once, so the
engines do not drain at every stage boundary (issue 13: replicas idle between waves)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import polars as pl
import pytest

from flows.synthesize import synthesize_flow
from scripted_llm import PipelineResponder
from synthllm.engines.base import ChatRequest
from synthllm.settings import load_settings
from synthllm.stages.schedule import Schedule
from synthllm.store import Store
from test_pipeline import OVERRIDES, ingest_sample, scripted


@pytest.fixture
def sample_store(store_url: str, sample_dir: Path) -> str:
    ingest_sample(store_url, sample_dir)
    return store_url


def test_a_stage_is_planned_in_full_only_after_what_it_waits_for_has_finished() -> None:
    schedule = Schedule(load_settings(overrides={"gate.enabled": True}))
    first = [p.stage.name for p in schedule.sweepable()]
    assert first == ["concepts", "level1"]
    assert [p.stage.name for p in schedule.streaming_from("level1")] == ["question_gate"]
    assert [p.stage.name for p in schedule.streaming_from("concepts")] == ["level2", "graph"]

    schedule.submitted("concepts", 2, swept=True)
    schedule.submitted("level1", 1, swept=True)
    schedule.finished("concepts")
    assert schedule.settle() == []  # one concepts shard still out
    schedule.finished("concepts")
    assert schedule.settle() == ["concepts"]
    assert [p.stage.name for p in schedule.sweepable()] == ["level2", "graph"]
    # the gate still takes level-1 shards as they come, but is not planned in full before level 3 is done
    assert "question_gate" not in [p.stage.name for p in schedule.sweepable()]
    assert [p.stage.name for p in schedule.streaming_from("level1")] == ["question_gate"]
    assert not schedule.complete


class Recorder(PipelineResponder):
    """Records what each request asked for, in order; level-3 requests are slow (a busy GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: ChatRequest) -> str:
        user = request.messages[-1]["content"]
        properties = (request.json_schema or {}).get("properties", {})
        kind = ("level3" if "<reference_1>" in user else "question" if {"questions", "suitable"} & set(properties)
                else "concepts" if "topics" in properties else "answer")
        if kind == "level3":
            time.sleep(0.1)
        with self.lock:
            self.kinds.append(kind)
        return super().__call__(request)


def test_answers_start_while_questions_are_still_being_written(prefect_harness, sample_store: str) -> None:
    # Four shard threads: with two, both level-3 shards (equal work) could hold both threads and
    # end together, and the first answer shard would have to wait for them.
    overrides = {**OVERRIDES, "orchestration.task_workers": 4}
    responder = Recorder()
    scripted(sample_store, responder)
    synthesize_flow(store=sample_store, overrides=overrides)
    kinds = responder.kinds
    # today's main planned each stage after the whole previous one: every answer came after every question
    assert kinds.index("answer") < max(i for i, k in enumerate(kinds) if k == "level3")
    assert kinds.index("question") < kinds.index("answer")

    # streaming planned every item once, and the final sweep left nothing out
    store = Store(sample_store)
    questions, answers = store.read_table("questions"), store.read_table("answers")
    gate = store.read_table("curation").filter(pl.col("check_name") == "question_gate")
    assert sorted(questions["level"].unique().to_list()) == [1, 2, 3]
    assert gate["question_id"].n_unique() == gate.height == questions.height
    assert answers["question_id"].n_unique() == answers.height
    assert set(answers["question_id"]) == set(gate.filter(pl.col("kept"))["question_id"])
    # the gate's rules are cheap: one task per questions shard (gate.shard_size), not one per 4 questions
    gate_plans = store.glob(store.path("plans", "question_gate", "*.parquet"))
    assert len(gate_plans) <= len(store.shard_ids("questions")) < questions.height / 4

    calls = len(kinds)
    summary = synthesize_flow(store=sample_store, overrides=overrides)
    assert len(responder.kinds) == calls  # a rerun asks nothing
    assert all(stage["shards"] == stage["skipped"] for stage in summary["stages"])
