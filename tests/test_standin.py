"""The stand-in engine (``engine.backend: standin``): schema-valid replies for every prompt, so a
synthesize run built from settings alone yields all three levels and answers."""

from __future__ import annotations

import polars as pl
from test_pipeline import ingest_sample

from flows.synthesize import synthesize_flow
from synthllm.engines.base import ChatResult, Completion
from synthllm.engines.client import check_result
from synthllm.engines.registry import engine_model_id, make_engine
from synthllm.engines.standin import StandInEngine, reply
from synthllm.prompts import load_prompt
from synthllm.settings import EngineSettings, SamplingSettings
from synthllm.stages.common import make_request
from synthllm.store import Store

DOCUMENT = ("Solve the quadratic equation x^2 - 5x + 6 = 0 by factoring. Quadratic equations have "
            "roots found through factoring, completing squares or the quadratic formula. Discriminant "
            "analysis tells whether roots are real. Polynomial division and synthetic substitution follow.")


def _valid(prompt_name: str, **values) -> ChatResult:
    request = make_request(load_prompt(prompt_name), SamplingSettings(), seed=1, **values)
    return check_result(ChatResult([Completion(reply(request), "stop")]), request)


def test_every_schema_prompt_gets_a_valid_reply() -> None:
    concepts = _valid("extract_concepts", domain="mathematics", document=DOCUMENT, max_topics=3, max_concepts=6)
    assert concepts.ok and concepts.parsed["topics"][0]["key_concepts"]
    level1 = _valid("level1_questions", domain="mathematics", document=DOCUMENT, max_questions=3)
    assert level1.ok and level1.parsed["suitable"] and len(level1.parsed["questions"]) == 3
    level2 = _valid("level2_questions", domain="mathematics", document=DOCUMENT, max_questions=3,
                    concepts="- quadratic roots\n- discriminant sign\n- polynomial division")
    assert level2.ok and level2.parsed["questions"][0]["concepts"] == ["quadratic roots", "discriminant sign"]
    level3 = _valid("level3_questions", domain="mathematics", reference_1=DOCUMENT, reference_2="(none)",
                    max_questions=3, concepts="- roots (topic: algebra)\n- angles (topic: geometry)")
    assert level3.ok and level3.parsed["questions"][0]["concepts"] == ["roots", "angles"]
    assert _valid("rate_document", domain="mathematics", document=DOCUMENT).parsed["rating"] == 9
    judged = _valid("judge_question", domain="mathematics", question="What is 2 + 2?")
    assert judged.ok and judged.parsed["score"] <= 10 and judged.parsed["clarity"] <= 5
    answer = reply(make_request(load_prompt("answer_question"), SamplingSettings(), seed=1,
                                domain="mathematics", question="What is 2 + 2?"))
    assert "\\boxed{" in answer


def test_built_from_settings_and_deterministic() -> None:
    settings = EngineSettings(backend="standin")
    engine = make_engine(settings)
    assert isinstance(engine, StandInEngine) and engine.model_id == engine_model_id(settings)
    request = make_request(load_prompt("answer_question"), SamplingSettings(), seed=1, n=3,
                           domain="mathematics", question="What is 7 times 6?")
    first, second = engine.generate([request]), engine.generate([request])
    assert len(first[0].completions) == 3 and first[0].text == second[0].text


def test_synthesize_with_standin_yields_every_level_and_answers(prefect_harness, store_url, sample_dir) -> None:
    ingest_sample(store_url, sample_dir)
    overrides = {"engine.backend": "standin", "filter.enabled": False, "generation.max_documents": 12,
                 "generation.shard_size": 5, "generation.max_combinations": 10}
    summary = synthesize_flow(store=store_url, overrides=overrides)
    store = Store(store_url)
    questions, answers = store.read_table("questions"), store.read_table("answers")
    assert sorted(questions["level"].unique().to_list()) == [1, 2, 3]
    assert questions.filter(pl.col("level") > 1)["concepts"].list.len().min() >= 2
    gate = store.read_table("curation")
    kept = set(gate.filter(pl.col("kept"))["question_id"])
    assert kept and set(answers["question_id"]) == kept
    assert answers["final_answer"].null_count() == 0
    assert questions["model"].unique().to_list() == ["standin:smollm2-135m-instruct"]
    assert {s["stage"] for s in summary["stages"]} >= {"concepts", "level1", "level2", "level3", "answer"}
