"""``synthllm plan``: the paper's run reproduced, the arithmetic checked from its inputs, the CLI."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from synthllm.capacity import (
    PAPER_OVERRIDES,
    PlanAssumptions,
    PlanError,
    Throughput,
    plan,
    store_calibration,
    store_documents,
    workload,
)
from synthllm.cli import app
from synthllm.settings import load_settings
from synthllm.store import Store

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
# Deliberately unlike the paper's, so a formula that ignores an input shows.
ODD = PlanAssumptions(l1_fill=0.5, l2_fill=0.8, l3_fill=2 / 3, topics_per_document=0.25,
                      question_tokens=(10, 20, 30), answer_tokens=(100, 200, 300), chars_per_token=5,
                      document_chars=1000, reply_topics=2, concepts_per_topic=4, concept_tokens=3,
                      concepts_per_question=2, walk_nodes=6, json_item_tokens=1, json_object_tokens=2,
                      reply_header_tokens=4, l1_tag_tokens=7, chat_overhead_tokens=3, rating_reply_tokens=11,
                      example_document_tokens=50)


def fixed_text_tokens(name: str, domain: str, a: PlanAssumptions) -> float:
    """A prompt file's text with placeholders emptied, read straight from the YAML."""
    data = yaml.safe_load((PROMPTS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))

    class Empty(dict):
        def __missing__(self, key: str) -> str:
            return ""

    values = Empty(domain=domain)
    chars = len(data["system"].format_map(values)) + len(data["user"].format_map(values))
    return chars / a.chars_per_token + a.chat_overhead_tokens


def by_stage(work) -> dict:
    return {s.stage: s for s in work.stages}


def test_paper_profile_reproduces_the_papers_run():
    settings = load_settings(overrides=PAPER_OVERRIDES)
    report = plan(workload(520_000, settings), Throughput(), [8, 64], 0.2)
    levels = {row["level"]: row for row in report["levels"]}
    assert report["qa_pairs"] == pytest.approx(7_400_000, rel=0.001)
    for level, millions in {1: 2.3, 2: 2.6, 3: 2.6}.items():
        assert round(levels[level]["questions"] / 1e6, 1) == millions
    assert [levels[n]["question_tokens"] for n in (1, 2, 3)] == [32, 66, 80]
    assert [levels[n]["answer_tokens"] for n in (1, 2, 3)] == [358, 497, 545]
    # the "~10M LLM requests with concepts and answers"
    assert report["total"]["requests"] == pytest.approx(10e6, rel=0.05)
    stages = {row["stage"]: row for row in report["stages"]}
    assert stages["answer"]["requests"] == pytest.approx(report["qa_pairs"], abs=1)
    assert stages["concepts"]["requests"] == stages["level1"]["requests"] == 520_000
    # ~600 tokens per QA pair in the paper (4.5B tokens); medians make ours a little lower
    assert 450 < report["dataset_tokens"] / report["qa_pairs"] < 650
    assert not report["warnings"]
    # a burst of 128 ratings must not size the coordinator: the busiest stage that lasts does
    assert {row["peak_stage"] for row in report["gpus"]} <= {"concepts", "level1", "level2", "level3", "answer"}


def test_stage_arithmetic_follows_from_the_assumptions():
    settings = load_settings(overrides={
        "generation.l1_max_questions": 4, "generation.l2_max_questions": 5, "generation.l3_max_questions": 3,
        "generation.doc_chars": 800, "generation.max_topics": 5, "generation.max_concepts_per_topic": 3,
        "graph.epochs": 2, "answer.self_consistency": 3, "filter.rounds": 2, "filter.rate_sample_size": 10,
        "filter.cold_start_positives": 4, "filter.rater_chars": 600, "filter.domain": "physics",
    })
    a, docs = ODD, 1000
    work = by_stage(workload(docs, settings, a))
    tpl = {name: fixed_text_tokens(name, "physics", a) for name in (
        "extract_concepts", "level1_questions", "level2_questions", "level3_questions", "answer_question",
        "rate_document", "write_reference_example")}
    excerpt = min(1000, 800) / 5
    item = 3 + 1
    kcs = 2 * 3  # reply_topics x min(concepts_per_topic 4, max_concepts_per_topic 3)

    assert work["concepts"].requests == docs
    assert work["concepts"].prompt_tokens == pytest.approx(docs * (tpl["extract_concepts"] + excerpt))
    assert work["concepts"].completion_tokens == pytest.approx(docs * (4 + 2 * (2 + item) + kcs * item))

    l1_q, l2_q, l3_q = 0.5 * 4, 0.8 * 5, 2 / 3 * 3
    assert work["level1"].prompt_tokens == pytest.approx(docs * (tpl["level1_questions"] + excerpt))
    assert work["level1"].completion_tokens == pytest.approx(docs * (4 + l1_q * (10 + 2 + 7)))
    assert work["level2"].prompt_tokens == pytest.approx(docs * (tpl["level2_questions"] + excerpt + kcs * (3 + 1)))
    assert work["level2"].completion_tokens == pytest.approx(docs * (4 + l2_q * (20 + 2 + 2 * item)))

    combinations = docs * 0.25 * 2
    assert work["level3"].requests == pytest.approx(combinations)
    assert work["level3"].prompt_tokens == pytest.approx(
        combinations * (tpl["level3_questions"] + 2 * min(1000, 400) / 5 + 6 * item))
    assert work["level3"].completion_tokens == pytest.approx(combinations * (4 + l3_q * (30 + 2 + 2 * item)))

    questions = {1: docs * l1_q, 2: docs * l2_q, 3: combinations * l3_q}
    total_q = sum(questions.values())
    assert work["answer"].requests == pytest.approx(total_q)
    assert work["answer"].prompt_tokens == pytest.approx(
        total_q * tpl["answer_question"] + questions[1] * 10 + questions[2] * 20 + questions[3] * 30)
    assert work["answer"].completion_tokens == pytest.approx(
        3 * (questions[1] * 100 + questions[2] * 200 + questions[3] * 300))

    assert work["rate"].requests == 2 * 10
    assert work["rate"].prompt_tokens == pytest.approx(20 * (tpl["rate_document"] + 600 / 5))
    assert work["rate"].completion_tokens == 20 * 11
    assert work["cold_start"].prompt_tokens == pytest.approx(4 * tpl["write_reference_example"])


def test_levels_budgets_and_filter_decide_the_stages():
    settings = load_settings(overrides={"generation.levels": [1], "filter.enabled": False,
                                        "generation.max_documents": 300})
    work = workload(1000, settings, ODD)
    assert [s.stage for s in work.stages] == ["level1", "answer"]
    assert work.documents == 300
    assert by_stage(work)["answer"].requests == pytest.approx(300 * 0.5 * settings.generation.l1_max_questions)

    capped = load_settings(overrides={"generation.levels": [3], "generation.max_combinations": 40})
    assert by_stage(workload(1000, capped, ODD))["level3"].requests == 40
    assert "concepts" in by_stage(workload(1000, capped, ODD))  # level 3 needs the concept graph


def test_question_gate_share_decides_the_qa_pairs():
    a = PlanAssumptions(gate_kept_share=0.8)
    work = workload(1000, load_settings(overrides={"generation.levels": [1, 2]}), a)
    generated = {y.level: y.questions for y in work.levels}
    assert [y.qa_pairs for y in work.levels] == pytest.approx([0.8 * generated[1], 0.8 * generated[2]])
    assert by_stage(work)["answer"].requests == pytest.approx(0.8 * sum(generated.values()))
    ungated = workload(1000, load_settings(overrides={"generation.levels": [1, 2], "gate.enabled": False}), a)
    assert by_stage(ungated)["answer"].requests == pytest.approx(sum(generated.values()))
    assert "llm_judge" not in by_stage(work)


@pytest.mark.skipif(not (PROMPTS_DIR / "judge_question.yaml").exists(), reason="judge prompt not written yet")
def test_llm_judge_stage_scores_every_generated_question():
    a = PlanAssumptions(gate_kept_share=0.8)
    generated = {y.level: y.questions for y in workload(1000, load_settings(overrides={"generation.levels": [1, 2]}),
                                                        a).levels}
    judged = by_stage(workload(1000, load_settings(overrides={"generation.levels": [1, 2], "gate.judge_enabled": True}),
                               a))
    mean_question = (generated[1] * 32 + generated[2] * 66) / sum(generated.values())
    assert judged["llm_judge"].requests == pytest.approx(sum(generated.values()))
    assert judged["llm_judge"].prompt_tokens == pytest.approx(
        sum(generated.values()) * (fixed_text_tokens("judge_question", "mathematics", a) + mean_question))
    assert judged["llm_judge"].completion_tokens == pytest.approx(sum(generated.values()) * a.judge_reply_tokens)


def test_replies_longer_than_max_tokens_are_capped_and_reported():
    settings = load_settings(overrides={"answer.sampling.max_tokens": 200, "answer.self_consistency": 2})
    work = workload(100, settings, PlanAssumptions())
    answers = by_stage(work)["answer"]
    assert answers.completion_tokens == pytest.approx(answers.requests * 2 * 200)
    assert any(w.startswith("answer:") and "max_tokens 400" in w for w in work.warnings)


def test_gpu_time_wall_time_and_coordinator():
    settings = load_settings(overrides={"generation.levels": [1], "filter.enabled": False})
    work = workload(2000, settings, ODD)
    l1, answers = by_stage(work)["level1"], by_stage(work)["answer"]
    tp = Throughput(completion_tokens_per_s=1000, prompt_tokens_per_s=8000, requests_per_s=None,
                    answer_completion_tokens_per_s=250, utilisation=0.8)
    report = plan(work, tp, [4, 1], ms_per_request=2.0)
    l1_s = l1.completion_tokens / 1000 + l1.prompt_tokens / 8000
    answer_s = answers.completion_tokens / 250 + answers.prompt_tokens / 8000
    stages = {row["stage"]: row for row in report["stages"]}
    assert stages["level1"]["gpu_hours"] == pytest.approx(l1_s / 3600)
    assert stages["answer"]["gpu_hours"] == pytest.approx(answer_s / 3600)
    assert report["total"]["gpu_hours"] == pytest.approx((l1_s + answer_s) / 3600)

    assert [row["gpus"] for row in report["gpus"]] == [1, 4]
    four = report["gpus"][1]
    assert four["wall_hours"] == pytest.approx((l1_s + answer_s) / (4 * 0.8) / 3600)
    rates = {"level1": l1.requests / (l1_s / 3.2), "answer": answers.requests / (answer_s / 3.2)}
    busiest = max(rates, key=rates.get)
    assert four["peak_stage"] == busiest
    assert four["coordinator_requests_per_s"] == pytest.approx(rates[busiest])
    assert four["coordinator_processes"] == max(1, math.ceil(rates[busiest] * 2.0 / 1000))
    cpu_hours = (l1.requests + answers.requests) * 0.002 / 3600
    assert report["coordinator"]["cpu_hours"] == pytest.approx(cpu_hours, rel=1e-3)

    bound = plan(work, Throughput(completion_tokens_per_s=1e9, prompt_tokens_per_s=1e9, requests_per_s=5), [1], 0.2)
    assert bound["stages"][0]["gpu_hours"] == pytest.approx(l1.requests / 5 / 3600)


def test_coordinator_is_sized_for_the_busiest_stage_that_lasts():
    work = workload(520_000, load_settings(overrides=PAPER_OVERRIDES))
    tp = Throughput(answer_completion_tokens_per_s=1000)
    row = plan(work, tp, [64], 0.2)["gpus"][0]
    walls = {s.stage: tp.gpu_seconds(s) / (64 * tp.utilisation) for s in work.stages}
    lasting = {s.stage: s.requests / walls[s.stage] for s in work.stages if walls[s.stage] >= 60}
    assert "rate" not in lasting and row["peak_stage"] == max(lasting, key=lasting.get)
    assert row["coordinator_requests_per_s"] == pytest.approx(max(lasting.values()))

    tiny = plan(workload(5, load_settings()), Throughput(), [64], 0.2)["gpus"][0]  # every stage a burst
    assert tiny["coordinator_requests_per_s"] == max(tiny["stage_requests_per_s"].values())


def test_bad_inputs_name_the_option():
    with pytest.raises(PlanError, match="--gpu-tokens-per-s"):
        Throughput(completion_tokens_per_s=0)
    with pytest.raises(PlanError, match="--utilisation"):
        Throughput(utilisation=1.5)
    with pytest.raises(PlanError, match="--gpus"):
        plan(workload(10, load_settings()), Throughput(), [0], 0.2)
    with pytest.raises(PlanError, match="documents"):
        workload(-1, load_settings())


def _write_corpus(store: Store, lengths: list[int]) -> None:
    now = datetime(2025, 1, 1)
    store.write_shard("documents", "s0", [
        {"doc_id": f"d{i}", "text": "x" * n, "content_hash": f"h{i}", "n_chars": n, "n_tokens_est": n // 4,
         "source": "test", "shard_id": "s0", "run_id": "r", "ingested_at": now} for i, n in enumerate(lengths)])


def test_store_counts_documents_and_calibrates_tokens(store_url):
    store = Store(store_url)
    lengths = [100, 2000, 5000, 9000]
    _write_corpus(store, lengths)
    usage = [("level1", 10, 1000, 400), ("level1", 30, 5000, 1600), ("answer", 0, 0, 0)]
    store.write_shard("llm_usage", "u0", [
        {"stage": stage, "backend": "openai", "model": "m", "requests": calls, "calls": calls, "cached": 0,
         "failures": 0, "prompt_tokens": p, "completion_tokens": c, "seconds": 1.0, "shard_id": f"u{i}",
         "run_id": "r"} for i, (stage, calls, p, c) in enumerate(usage)])
    settings = load_settings(store=store_url, overrides={"filter.enabled": False})
    assert store_documents(store, settings) == 4
    calibration = store_calibration(store, settings)
    assert calibration.tokens_per_call == {"level1": pytest.approx((6000 / 40, 2000 / 40))}
    doc_chars = settings.generation.doc_chars
    assert calibration.excerpt_chars[doc_chars] == pytest.approx(sum(min(n, doc_chars) for n in lengths) / 4)
    work = by_stage(workload(4, settings, calibration=calibration))
    assert work["level1"].source == "store" and work["level1"].prompt_tokens == pytest.approx(4 * 150)
    assert work["level2"].source == "model"

    store.write_shard("document_scores", "r1-x", [
        {"doc_id": f"d{i}", "round": 1, "classifier_score": 7.0, "kept": i < 3, "is_synthetic": False,
         "shard_id": "r1-x", "run_id": "r"} for i in range(4)])
    assert store_documents(store, load_settings(store=store_url)) == 3  # the reference set


runner = CliRunner()


def test_cli_paper_json_and_table():
    result = runner.invoke(app, ["plan", "--profile", "paper", "--gpus", "8", "--gpus", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["qa_pairs"] == pytest.approx(7_400_000, rel=0.001)
    assert [row["gpus"] for row in report["gpus"]] == [8, 64]
    assert report["gpus"][0]["wall_hours"] == pytest.approx(8 * report["gpus"][1]["wall_hours"])

    table = runner.invoke(app, ["plan", "--profile", "paper"])
    assert table.exit_code == 0, table.output
    assert "level3" in table.output and "busiest stage" in table.output


def test_cli_options_reach_the_plan(store_url):
    slow = runner.invoke(app, ["plan", "--documents", "1000", "--gpus", "2", "--gpu-tokens-per-s", "3000", "--json"])
    fast = runner.invoke(app, ["plan", "--documents", "1000", "--gpus", "2", "--gpu-tokens-per-s", "6000",
                               "--set", "answer.self_consistency=2", "--json"])
    slow_report, fast_report = json.loads(slow.output), json.loads(fast.output)
    answer = {r["stage"]: r for r in fast_report["stages"]}["answer"]
    assert answer["completion_tokens"] == pytest.approx(
        2 * {r["stage"]: r for r in slow_report["stages"]}["answer"]["completion_tokens"], rel=1e-6)

    _write_corpus(Store(store_url), [500] * 7)
    Store(store_url).write_shard("llm_usage", "u0", [
        {"stage": "level1", "backend": "openai", "model": "m", "requests": 7, "calls": 7, "cached": 0,
         "failures": 0, "prompt_tokens": 700, "completion_tokens": 140, "seconds": 1.0, "shard_id": "u0",
         "run_id": "r"}])
    args = ["plan", "--store", store_url, "--set", "filter.enabled=false", "--json"]
    from_store = runner.invoke(app, args)
    assert from_store.exit_code == 0, from_store.output
    report = json.loads(from_store.output)
    assert report["documents"] == 7
    level1 = {r["stage"]: r for r in report["stages"]}["level1"]
    assert (level1["tokens_source"], level1["prompt_tokens"], level1["completion_tokens"]) == ("store", 700, 140)
    uncalibrated = json.loads(runner.invoke(app, [*args, "--no-calibrate"]).output)
    assert {r["stage"]: r for r in uncalibrated["stages"]}["level1"]["tokens_source"] == "model"


def error_text(result) -> str:
    """The error message without rich's box and line wrapping."""
    assert result.exit_code != 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_cli_errors_are_clear(store_url):
    assert "holds no documents" in error_text(runner.invoke(app, ["plan", "--store", store_url]))
    assert "give --documents N" in error_text(runner.invoke(app, ["plan"]))
    assert "--gpus must be" in error_text(runner.invoke(app, ["plan", "--documents", "10", "--gpus", "0"]))
    assert "--answer-gpu-tokens-per-s must be > 0" in error_text(
        runner.invoke(app, ["plan", "--documents", "10", "--answer-gpu-tokens-per-s", "0"]))
    assert "--profile must be" in error_text(runner.invoke(app, ["plan", "--documents", "10", "--profile", "huge"]))
