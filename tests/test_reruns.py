"""Reruns on a local folder and on a real S3 endpoint: every planned item ends as a row or a
recorded failure, and a rerun asks only for what is not stored (issues 11 and 12)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from flows.synthesize import synthesize_flow
from scripted_llm import PipelineResponder
from synthllm.curation.export import curated_dataset
from synthllm.curation.stages import run_dedup
from synthllm.engine_pool import install_engine
from synthllm.engines.scripted import ScriptedEngine
from synthllm.ingest import expand_sources, ingest_file
from synthllm.runs import Failure, clear_failures, failure_rows
from synthllm.settings import StoreSettings, load_settings
from synthllm.stages.question_gate import QuestionGateStage, verdicts_in_force
from synthllm.store import Store

BASE = {"filter.enabled": False, "generation.shard_size": 4, "engine.cache_flush_every": 1, "graph.epochs": 2,
        "orchestration.task_retries": 0}


def overrides_for(settings: StoreSettings, **extra) -> dict:
    return {**BASE, "store.s3_endpoint_url": settings.s3_endpoint_url, **extra}


def ingest_documents(settings: StoreSettings, sample_dir: Path, tmp_path: Path, n: int) -> None:
    lines = (sample_dir / "openstax-algebra.jsonl").read_text().splitlines()[:n]
    source = tmp_path / f"docs-{n}.jsonl"
    source.write_text("\n".join(lines) + "\n")
    loaded = load_settings(overrides={"store.s3_endpoint_url": settings.s3_endpoint_url}, store=settings.url)
    for file in expand_sources([str(source)], loaded.store):
        ingest_file(Store(loaded.store), loaded, "ingest", file)


def engine_for(settings: StoreSettings, responder, overrides: dict) -> ScriptedEngine:
    loaded = load_settings(overrides=overrides, store=settings.url)
    engine = ScriptedEngine(responder)
    install_engine(loaded.engine, engine)
    return engine


def kept_questions(store: Store) -> set[str]:
    return set(store.query("SELECT question_id FROM questions WHERE question_id NOT IN (SELECT question_id FROM "
                           "curation WHERE check_name = 'question_gate' AND NOT kept)")["question_id"])


def test_every_question_is_answered_and_a_grown_budget_rebuilds_the_graph(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """S3 listings are fresh: the answer stage sees every level's questions, and the graph task
    reads the concept shards written by this run (a stale listing saw 9 of 20 and FileExpired)."""
    ingest_documents(store_settings, sample_dir, tmp_path, 5)
    store = Store(store_settings)
    for budget in (3, 4):
        overrides = overrides_for(store_settings, **{"generation.max_documents": budget})
        engine_for(store_settings, PipelineResponder(), overrides)
        summary = synthesize_flow(store=store_settings.url, overrides=overrides)
        questions = store.read_table("questions")
        assert sorted(questions["level"].unique().to_list()) == [1, 2, 3]
        assert set(store.read_table("answers")["question_id"]) == kept_questions(store)
        linked = set(store.read_table("document_concepts")["doc_id"])
        assert len(linked) == budget
        graph_docs = set(store.read_table("concept_combinations").filter(
            pl.col("shard_id").str.contains(summary["graph"]["graph_key"]))["ref_doc_ids"].explode())
        assert graph_docs <= linked and len(store.read_table("concepts")) > 0


def test_retrying_a_shard_whose_every_item_failed_generates_it(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """All items of a shard fail -> a 0-row output shard; retry-failures must not leave the store stuck."""
    ingest_documents(store_settings, sample_dir, tmp_path, 3)
    store = Store(store_settings)
    overrides = overrides_for(store_settings, **{"generation.levels": [1], "gate.enabled": False})
    engine_for(store_settings, lambda request: "garbage, not JSON", overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    failed = store.read_table("failures").filter(pl.col("stage") == "level1")
    assert failed.height == 3 and store.read_table("questions").height == 0

    assert clear_failures(store, "level1") == 1
    engine = engine_for(store_settings, PipelineResponder(), overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    questions = store.read_table("questions")
    assert set(questions["doc_ids"].explode()) == set(failed["item_id"])
    assert engine.calls == 3 + questions.height  # the 3 documents again, then one answer per question
    assert store.read_table("failures").filter(pl.col("stage") == "level1").height == 0


def test_a_failure_under_another_prompt_version_does_not_block_the_item(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    ingest_documents(store_settings, sample_dir, tmp_path, 2)
    store = Store(store_settings)
    doc_ids = store.read_table("documents")["doc_id"].to_list()
    old = failure_rows([Failure("level1", doc_ids[0], "invalid_json", "old prompt", None, "scripted",
                                "level1_questions@0"),
                        Failure("level1", doc_ids[1], "invalid_json", "this prompt", None, "scripted",
                                "level1_questions@1")], "level1-old", "r")
    store.write_shard("failures", "level1-level1-old", old)
    overrides = overrides_for(store_settings, **{"generation.levels": [1], "gate.enabled": False})
    engine_for(store_settings, PipelineResponder(), overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    asked = set(store.read_table("questions")["doc_ids"].explode())
    assert asked == {doc_ids[0]}  # @0's failure is no answer for @1; @1's own failure is


def test_rows_and_failures_of_another_model_do_not_cover_an_item(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """Switching models asks the new one for everything: what another model wrote or failed on is
    its own provenance, not this model's answer."""
    ingest_documents(store_settings, sample_dir, tmp_path, 3)
    store = Store(store_settings)
    doc_ids = sorted(store.read_table("documents")["doc_id"].to_list())

    def run_with(model: str) -> ScriptedEngine:
        overrides = overrides_for(store_settings, **{"generation.levels": [1], "gate.enabled": False,
                                                     "engine.model": model})
        engine = ScriptedEngine(PipelineResponder(), model_id=model)
        install_engine(load_settings(overrides=overrides, store=store_settings.url).engine, engine)
        synthesize_flow(store=store_settings.url, overrides=overrides)
        return engine

    def level1_docs(engine: ScriptedEngine) -> int:
        return sum("suitable" in json.dumps(r.json_schema or {}) for r in engine.requests)

    assert level1_docs(run_with("model-a")) == 3
    assert level1_docs(run_with("model-b")) == 3  # model-a's questions are not model-b's
    failed = failure_rows([Failure("level1", doc_id, "invalid_json", "reply", None, "model-z", "level1_questions@1")
                           for doc_id in doc_ids[:2]], "level1-z", "r")
    store.write_shard("failures", "level1-level1-z", failed)
    assert level1_docs(run_with("model-c")) == 3  # model-z's failures are not model-c's either
    assert level1_docs(run_with("model-c")) == 0  # its own rows are


def test_a_new_gate_version_does_not_answer_its_kept_questions_again(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """New gate rules re-run the gate over every question; the questions it keeps again stream to
    the answer stage, which must skip those this model has answered already."""
    ingest_documents(store_settings, sample_dir, tmp_path, 2)
    store = Store(store_settings)
    overrides = overrides_for(store_settings, **{"generation.levels": [1]})
    engine_for(store_settings, PipelineResponder(), overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    answered = store.read_table("answers")["question_id"].to_list()
    assert answered

    monkeypatch.setattr(QuestionGateStage, "rules_version", "question-rules-next")
    engine = engine_for(store_settings, PipelineResponder(), overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    gate_rows = store.read_table("curation").filter(pl.col("check_name") == "question_gate")
    assert gate_rows.height == 2 * store.read_table("questions").height  # the gate did run again
    assert sorted(store.read_table("answers")["question_id"].to_list()) == sorted(answered)
    assert engine.calls == 0


def test_a_changed_gate_setting_checks_every_question_again_and_decides_answers_and_export(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """A user who tightens or loosens the gate expects every stored question judged by the rules in
    force: questions a stricter gate dropped are answered once it is loosened, and a setting put
    back finds its verdicts stored (no gate shard, no request)."""
    ingest_documents(store_settings, sample_dir, tmp_path, 2)
    store = Store(store_settings)
    default = overrides_for(store_settings, **{"generation.levels": [1]})
    strict = {**default, "gate.max_chars": 20}  # every scripted question is longer

    def run(overrides: dict) -> tuple[ScriptedEngine, pl.DataFrame]:
        engine = engine_for(store_settings, PipelineResponder(), overrides)
        synthesize_flow(store=store_settings.url, overrides=overrides)
        settings = load_settings(overrides=overrides, store=store_settings.url)
        run_dedup(store, settings, "run-dedup")
        return engine, curated_dataset(store, verdicts=verdicts_in_force(settings, store),
                                       require_decontamination=False)

    _, exported = run(strict)
    questions = store.read_table("questions")["question_id"].to_list()
    gate = store.read_table("curation").filter(pl.col("check_name") == "question_gate")
    assert questions and gate.height == len(questions) and set(gate["detail"]) == {"too_long"}
    assert store.read_table("answers").height == 0 and exported.height == 0

    engine, exported = run(default)
    gate = store.read_table("curation").filter(pl.col("check_name") == "question_gate")
    assert gate.height == 2 * len(questions)  # checked again under the settings in force
    assert sorted(store.read_table("answers")["question_id"]) == sorted(questions)
    assert engine.calls == len(questions) and sorted(exported["question_id"]) == sorted(questions)

    engine, exported = run(strict)  # put back: its verdicts are stored, and they count again
    assert store.read_table("curation").filter(pl.col("check_name") == "question_gate").height == 2 * len(questions)
    assert engine.calls == 0 and exported.height == 0


def test_raising_max_tokens_reasks_only_the_truncated_items(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """What curator and distilabel users ask for most: a settings change re-asks only what it affects."""
    ingest_documents(store_settings, sample_dir, tmp_path, 4)
    store = Store(store_settings)
    docs = store.read_table("documents").sort("doc_id")
    wordy = set(docs["doc_id"][:2])
    healthy = PipelineResponder()

    def responder(request):
        reply = healthy(request)
        user = request.messages[-1]["content"]
        if "suitable" in json.dumps(request.json_schema or {}) and any(
                docs.filter(pl.col("doc_id") == d)["text"][0][:80] in user for d in wordy):
            parsed = json.loads(reply)
            parsed["questions"][0]["question"] += " Explain every step in detail." * 40
            return json.dumps(parsed)
        return reply

    short = overrides_for(store_settings, **{"generation.levels": [1], "generation.sampling.max_tokens": 200})
    engine_for(store_settings, responder, short)
    synthesize_flow(store=store_settings.url, overrides=short)
    truncated = store.read_table("failures").filter((pl.col("stage") == "level1") & (pl.col("reason") == "truncated"))
    assert set(truncated["item_id"]) == wordy
    answered = store.read_table("answers").height

    longer = {**short, "generation.sampling.max_tokens": 2000}
    engine = engine_for(store_settings, responder, longer)
    synthesize_flow(store=store_settings.url, overrides=longer)
    level1 = [r for r in engine.requests if "suitable" in json.dumps(r.json_schema or {})]
    assert len(level1) == 2 and all(r.max_tokens == 2000 for r in level1)
    assert set(store.read_table("questions")["doc_ids"].explode()) == set(docs["doc_id"])
    assert engine.calls == 2 + store.read_table("answers").height - answered  # new questions' answers only


def test_retry_failures_rejects_an_unknown_stage(store_url: str) -> None:
    from typer.testing import CliRunner

    from synthllm.cli import app

    Store(store_url).write_shard("failures", "level1-x", failure_rows(
        [Failure("level1", "d", "invalid_json", "", None, "m", "level1_questions@1")], "level1-x", "r"))
    result = CliRunner().invoke(app, ["retry-failures", "bogus", "--store", store_url])
    assert result.exit_code == 2 and "unknown stage 'bogus'" in result.output and "level1" in result.output
    assert Store(store_url).read_table("failures").height == 1


def test_unsuitable_documents_are_recorded_and_never_asked_again(
        prefect_harness, store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    """The level-1 "not suitable" gate: the document becomes a `not_suitable` failure, no question."""
    settings = StoreSettings(url=store_url)
    ingest_documents(settings, sample_dir, tmp_path, 3)
    store = Store(settings)
    unsuitable = store.read_table("documents").sort("doc_id")["text"][0][:80]
    healthy = PipelineResponder()

    def responder(request):
        if "suitable" in json.dumps(request.json_schema or {}) and unsuitable in request.messages[-1]["content"]:
            return json.dumps({"suitable": False, "questions": [{"question": "What is this page about, really?",
                                                                 "type": "new", "school_level": "none"}]})
        return healthy(request)

    overrides = overrides_for(settings, **{"generation.levels": [1]})
    engine_for(settings, responder, overrides)
    synthesize_flow(store=store_url, overrides=overrides)
    doc_id = store.read_table("documents").sort("doc_id")["doc_id"][0]
    failures = store.read_table("failures").filter(pl.col("stage") == "level1")
    assert failures.select("item_id", "reason").rows() == [(doc_id, "not_suitable")]
    assert doc_id not in set(store.read_table("questions")["doc_ids"].explode())
    engine = engine_for(settings, responder, overrides)
    synthesize_flow(store=store_url, overrides=overrides)
    assert engine.calls == 0


def test_the_llm_judge_drops_low_scored_questions_before_answers(
        prefect_harness, store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    settings = StoreSettings(url=store_url)
    ingest_documents(settings, sample_dir, tmp_path, 3)
    store = Store(settings)
    healthy = PipelineResponder()

    def responder(request):
        if "well_posed" in json.dumps(request.json_schema or {}):
            score = 9 if "dollars" in request.messages[-1]["content"] and "9" in request.messages[-1]["content"] else 2
            return json.dumps({"self_contained": 5, "well_posed": 4, "reasoning": 3, "clarity": 4, "score": score,
                               "reason": "ok"})
        return healthy(request)

    overrides = overrides_for(settings, **{"generation.levels": [1], "gate.judge_enabled": True,
                                           "gate.judge_threshold": 6})
    engine_for(settings, responder, overrides)
    summary = synthesize_flow(store=store_url, overrides=overrides)
    judged = store.read_table("curation").filter(pl.col("check_name") == "llm_judge")
    passed_rules = store.read_table("curation").filter((pl.col("check_name") == "question_gate") & pl.col("kept"))
    assert set(judged["question_id"]) == set(passed_rules["question_id"])
    assert judged["prompt_version"].unique().to_list() == ["judge_question@1"]
    assert judged.filter(pl.col("kept"))["score"].min() >= 6 and judged.filter(~pl.col("kept")).height > 0
    assert set(store.read_table("answers")["question_id"]) == set(judged.filter(pl.col("kept"))["question_id"])
    assert {s["stage"] for s in summary["stages"]} >= {"question_gate", "llm_judge", "answer"}


def test_a_lowered_judge_threshold_answers_the_questions_it_now_keeps_without_judging_again(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """The judge's stored scores meet the threshold in force: lowering it asks only for the answers
    of the questions it now keeps, and no question is judged twice."""
    ingest_documents(store_settings, sample_dir, tmp_path, 2)
    store = Store(store_settings)
    healthy, judged = PipelineResponder(), []

    def responder(request):
        if "well_posed" in json.dumps(request.json_schema or {}):
            judged.append(request.messages[-1]["content"])
            score = 9 if "9" in request.messages[-1]["content"] else 2
            return json.dumps({"self_contained": 5, "well_posed": 4, "reasoning": 3, "clarity": 4, "score": score,
                               "reason": "ok"})
        return healthy(request)

    def run(threshold: float) -> ScriptedEngine:
        overrides = overrides_for(store_settings, **{"generation.levels": [1], "gate.judge_enabled": True,
                                                     "gate.judge_threshold": threshold})
        engine = engine_for(store_settings, responder, overrides)
        synthesize_flow(store=store_settings.url, overrides=overrides)
        return engine

    run(6)
    scores = store.read_table("curation").filter(pl.col("check_name") == "llm_judge")
    low = set(scores.filter(pl.col("score") < 6)["question_id"])
    assert low and set(store.read_table("answers")["question_id"]).isdisjoint(low)
    asked_before = len(judged)
    engine = run(1)
    assert len(judged) == asked_before and engine.calls == len(low)  # only the answers
    assert low <= set(store.read_table("answers")["question_id"])


def test_a_new_judge_scores_every_question_again_and_only_its_scores_count(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A new judge prompt (or model) scores every question again, and the scores of the judge
    before it drop nothing: the questions the old judge turned down and the new one keeps are
    answered and exported. Putting the old judge back asks for nothing."""
    from synthllm.stages.llm_judge import LLMJudgeStage

    ingest_documents(store_settings, sample_dir, tmp_path, 2)
    store = Store(store_settings)
    healthy, judged = PipelineResponder(), []
    scores = {"judge_question@1": 2, "judge_question@2": 9}
    version = LLMJudgeStage.version

    def responder(request):
        if "well_posed" in json.dumps(request.json_schema or {}):
            judged.append(request.messages[-1]["content"])
            return json.dumps({"self_contained": 5, "well_posed": 4, "reasoning": 3, "clarity": 4,
                               "score": scores[current[0]], "reason": "ok"})
        return healthy(request)

    current = ["judge_question@1"]
    overrides = overrides_for(store_settings, **{"generation.levels": [1], "gate.judge_enabled": True,
                                                 "gate.judge_threshold": 6})

    def run(judge_version: str) -> tuple[ScriptedEngine, pl.DataFrame]:
        current[0] = judge_version
        monkeypatch.setattr(LLMJudgeStage, "version", lambda self, settings: judge_version)
        engine = engine_for(store_settings, responder, overrides)
        synthesize_flow(store=store_settings.url, overrides=overrides)
        settings = load_settings(overrides=overrides, store=store_settings.url)
        run_dedup(store, settings, "run-dedup")
        return engine, curated_dataset(store, verdicts=verdicts_in_force(settings, store), require_decontamination=False)

    assert version(LLMJudgeStage(), None) == "judge_question@1"
    _, exported = run("judge_question@1")
    kept_by_rules = kept_questions(store)
    assert kept_by_rules and store.read_table("answers").height == 0 and exported.height == 0
    _, exported = run("judge_question@2")
    assert len(judged) == 2 * len(kept_by_rules)  # every question scored again
    assert set(store.read_table("answers")["question_id"]) == kept_by_rules
    assert set(exported["question_id"]) and set(exported["question_id"]) <= kept_by_rules
    engine, exported = run("judge_question@1")
    assert engine.calls == 0 and len(judged) == 2 * len(kept_by_rules) and exported.height == 0


def test_a_run_whose_lease_was_taken_submits_no_more_shards_of_that_stage(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """A run whose renewals lapsed (a stall past ``lease_ttl_s``) and whose answer lease another run
    took stops before asking for any answer: two runs must not ask the LLM for the same items."""
    import threading
    import time

    import pytest

    from synthllm.lease import LeaseLost, LeaseRecord, holder, lease_path

    ingest_documents(store_settings, sample_dir, tmp_path, 3)
    store = Store(store_settings)
    reply, stolen, answered, asked = PipelineResponder(), threading.Event(), [], []
    thief = LeaseRecord("stage-answer", "run-z", "tz", "2024-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00")

    def responder(request):
        if not stolen.is_set():  # the first request: run-z takes the answer lease while this run stalls
            stolen.set()
            store.write_bytes(lease_path(store, "stage-answer"), thief.encode())
            time.sleep(1.5)  # renewals every 0.2 s notice it
        if request.json_schema is None:  # answers are free text; every other prompt has a schema
            answered.append(request)
        asked.append(request.messages[-1]["content"])
        return reply(request)

    overrides = overrides_for(store_settings, **{"orchestration.lease_ttl_s": 0.6, "gate.enabled": False})
    engine_for(store_settings, responder, overrides)
    with pytest.raises(LeaseLost, match=r"lease 'stage-answer' on store .* was lost \(taken over by run-z\)"):
        synthesize_flow(store=store_settings.url, overrides=overrides)
    assert stolen.is_set() and not answered and not store.shard_ids("answers")
    assert store.read_table("questions").height > 0  # the stages it still held went on
    assert holder(store, "stage-answer").owner == "run-z"  # the new holder's lease is left alone
    assert holder(store, "stage-level1") is None  # the leases it held are released

    # run-z is gone: a rerun asks only for the answers, none of the prompts already answered
    store.fs.rm(lease_path(store, "stage-answer"))
    first = list(asked)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    rerun = asked[len(first):]
    questions = store.read_table("questions")
    assert len(rerun) == len(answered) == questions.height and not set(rerun) & set(first)
    assert set(store.read_table("answers")["question_id"]) == set(questions["question_id"])


def test_curate_and_export_runs_take_turns_on_a_store(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path) -> None:
    """Two curate runs (or a curate and an export) on one store used to run at once: one rewrote
    or removed as stale the curation shards the other wrote, an export read a table half rewritten.
    Now they hold the store's ``curation`` lease: a second run waits for it, or names the holder."""
    import threading

    import pytest

    from flows.curate import curate_flow, export_flow
    from synthllm.lease import LeaseHeld, acquire

    ingest_documents(store_settings, sample_dir, tmp_path, 3)
    store = Store(store_settings)
    overrides = overrides_for(store_settings, **{"orchestration.lease_wait_s": 0, "curation.benchmarks": ["builtin:gsm8k"]})
    engine_for(store_settings, PipelineResponder(), overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    before = set(store.shard_ids("curation"))

    with acquire(store, "curation", "run-z", ttl_s=30):
        for flow_ in (curate_flow, export_flow):
            with pytest.raises(LeaseHeld, match=r"lease 'curation' on store .* is held by run-z"):
                flow_(store=store_settings.url, overrides=overrides)
    assert set(store.shard_ids("curation")) == before  # the refused curate run wrote nothing
    assert not store.exists(store.path("exports"))

    # a run that may wait starts once run-z releases the lease
    held, curated_early = acquire(store, "curation", "run-z", ttl_s=30), []
    held.__enter__()

    def release() -> None:
        curated_early.append(set(store.shard_ids("curation")) != before)
        held.__exit__(None, None, None)

    timer = threading.Timer(2.0, release)
    timer.start()
    summary = curate_flow(store=store_settings.url, overrides={**overrides, "orchestration.lease_wait_s": 30})
    timer.join()
    assert curated_early == [False]  # nothing written while run-z held the lease
    assert summary["decontaminate"]["questions"] > 0 and set(store.shard_ids("curation")) > before
    assert export_flow(store=store_settings.url, overrides=overrides)["rows"] > 0  # the lease was released


def test_a_curate_run_whose_lease_was_taken_removes_nothing(
        prefect_harness, store_settings: StoreSettings, sample_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A curate run that stalled past ``lease_ttl_s`` while another took the curation lease stops
    before its next step: it must not remove as stale, or overwrite, what the new holder writes."""
    import time

    import pytest

    import tasks.curate
    from flows.curate import curate_flow
    from synthllm.curation.export import CURATION_SUMMARY
    from synthllm.lease import LeaseLost, LeaseRecord, holder, lease_path

    ingest_documents(store_settings, sample_dir, tmp_path, 3)
    store = Store(store_settings)
    overrides = overrides_for(store_settings, **{"orchestration.lease_ttl_s": 0.6, "curation.benchmarks": ["builtin:gsm8k"]})
    engine_for(store_settings, PipelineResponder(), overrides)
    synthesize_flow(store=store_settings.url, overrides=overrides)
    thief = LeaseRecord("curation", "run-z", "tz", "2024-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00")
    dedup = tasks.curate.run_dedup

    def stalled_dedup(*args, **kwargs):
        store.write_bytes(lease_path(store, "curation"), thief.encode())
        time.sleep(1.5)  # renewals every 0.2 s notice it
        return dedup(*args, **kwargs)

    monkeypatch.setattr(tasks.curate, "run_dedup", stalled_dedup)
    with pytest.raises(LeaseLost, match=r"lease 'curation' on store .* was lost \(taken over by run-z\)"):
        curate_flow(store=store_settings.url, overrides=overrides)
    assert not [s for s in store.shard_ids("curation") if s.startswith("decontam-")]
    assert not store.exists(store.path(CURATION_SUMMARY))  # the summary of checks it did not finish
    assert holder(store, "curation").owner == "run-z"
