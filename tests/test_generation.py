"""Stage logic: replies (real SmolLM2 text and malformed) -> rows, answers, votes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthllm.answers import extract_final_answer, vote
from synthllm.engines.base import ChatResult, Completion
from synthllm.settings import load_settings
from synthllm.stages.answer import AnswerStage
from synthllm.stages.base import Provenance
from synthllm.stages.common import question_rows
from synthllm.stages.concepts import ConceptsStage, concept_link_rows
from synthllm.stages.level1 import Level1Stage

REPLIES = json.loads((Path(__file__).parent / "data" / "smollm2_replies.json").read_text())
ORIGIN = Provenance("level1_questions@1", "smollm2", '{"seed": 1}')


def reply(prompt: str, index: int = 0) -> dict:
    return [r for r in REPLIES if r["prompt"] == prompt][index]


def test_concepts_from_real_reply_keep_surface_forms_and_drop_junk() -> None:
    parsed = json.loads(reply("extract_concepts", 0)["text"])
    rows = concept_link_rows("doc-1", parsed, ORIGIN)
    topics = [r for r in rows if r["kc_id"] is None]
    assert [r["topic_surface"] for r in topics] == ["Bácadera de la Calculadora"]
    assert topics[0]["topic_id"].startswith("topic:")
    # the key concepts were dates ("2023_10_24"): no letters, not concepts
    assert [r for r in rows if r["kc_id"]] == []
    assert topics[0]["subject"] == "Calculadora" and topics[0]["prompt_version"] == "level1_questions@1"


def test_concepts_normalise_and_dedupe_links() -> None:
    parsed = {"education_level": " high school ", "subject": "Algebra", "topics": [
        {"topic": "Linear Equations", "key_concepts": ["Slopes", "slope", "  Y-intercept ", "1.2.3"]},
        {"topic": "linear equations!", "key_concepts": ["slope"]},
        {"topic": "   ", "key_concepts": ["orphan"]},
    ]}
    rows = concept_link_rows("d", parsed, ORIGIN)
    pairs = [(r["topic_id"], r["kc_id"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    kcs = sorted({r["kc_id"] for r in rows if r["kc_id"]})
    assert len(kcs) == 2  # slope(s) once, y-intercept once, "1.2.3" dropped
    assert {r["topic_id"] for r in rows} == {rows[0]["topic_id"]}
    assert rows[0]["education_level"] == "high school"


def test_level1_rows_from_real_reply() -> None:
    parsed = json.loads(reply("level1_questions", 1)["text"])
    rows = question_rows(1, "doc-7", parsed, ORIGIN, ["doc-7"])
    assert len(rows) == 2
    assert all(r["level"] == 1 and r["doc_ids"] == ["doc-7"] and r["is_original"] is False for r in rows)
    assert rows[0]["school_level"] == "high school" and rows[1]["school_level"] == "middle school"
    again = question_rows(1, "doc-7", parsed, ORIGIN, ["doc-7"])
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in again]
    assert len({r["question_id"] for r in rows}) == 2


def test_question_rows_drop_short_duplicate_and_extra_items() -> None:
    parsed = {"questions": [
        {"question": "Compute  the slope\tof y = 3x + 2.", "concepts": ["Slope", "linear function", "ghost"]},
        {"question": "compute the slope of y = 3x + 2.", "concepts": ["slope", "slope"]},
        {"question": "Why?", "concepts": ["slope", "linear function"]},
        {"question": "Find the y-intercept of y = 3x + 2 and the slope.", "concepts": ["y intercept", "slopes"]},
    ]}
    allowed = {"slope": "kc:slope", "linear function": "kc:linear function", "y intercept": "kc:y intercept"}
    rows = question_rows(2, "doc", parsed, ORIGIN, ["doc"], allowed_concepts=allowed, limit=5)
    assert [r["question"] for r in rows] == ["Compute the slope of y = 3x + 2.",
                                              "Find the y-intercept of y = 3x + 2 and the slope."]
    assert rows[0]["concepts"] == ["kc:linear function", "kc:slope"]
    assert rows[1]["concepts"] == ["kc:slope", "kc:y intercept"]
    assert rows[0]["is_original"] is None
    assert len(question_rows(2, "doc", parsed, ORIGIN, ["doc"], allowed_concepts=allowed, limit=1)) == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("So x = 4.\n\\boxed{4}", "4"),
    ("First \\boxed{3}, corrected: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("The final answer is $12$.", "12"),
    ("Answer: 7 apples", "7 apples"),
    ("we get 3, then 5, then 42", "42"),
    ("no numbers here", None),
    ("unclosed \\boxed{3", "3"),
])
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


def test_real_answer_text_has_final_answer() -> None:
    assert extract_final_answer(reply("answer_question")["text"]) == "18"


def test_vote_counts_every_sample_asked_and_answer_rows_carry_it() -> None:
    texts = ["so \\boxed{1,000}", "\\boxed{1000}", "\\boxed{999}", "I give up"]
    settings = load_settings(overrides={"answer.self_consistency": 5})
    verdict = vote([(t, "stop") for t in texts] + [("\\boxed{5", "length")], 5, settings.answer)
    assert (verdict.index, verdict.final_answer, verdict.votes, verdict.confidence) == (0, "1,000", 2, 0.4)
    result = ChatResult(completions=[Completion(t, "stop") for t in texts])
    [[row]] = AnswerStage().shard_rows(settings, [{"question_id": "q1"}], [result], [ORIGIN])
    assert row["n_samples"] == 5 and row["confidence"] == 0.4 and row["final_answer"] == "1,000"
    assert row["answer"] == texts[0] and row["rejection"] is None
    truncated = ChatResult(completions=[])
    [failure] = AnswerStage().shard_rows(settings, [{"question_id": "q1"}], [truncated], [ORIGIN])
    assert failure.reason == "no_output"


def test_requests_are_deterministic_and_put_documents_first() -> None:
    settings = load_settings(overrides={"generation.doc_chars": 200})
    doc = {"doc_id": "d1", "text": "word " * 500}
    first, second = Level1Stage().request(doc, settings), Level1Stage().request(doc, settings)
    assert first == second and first.json_schema["properties"]["questions"]["maxItems"] == 5
    user = first.messages[-1]["content"]
    assert user.startswith("<document>") and user.index("</document>") < user.index("up to 5 questions")
    assert len(user) < 200 + 1500
    other = Level1Stage().request({"doc_id": "d2", "text": doc["text"]}, settings)
    assert other.seed != first.seed
    answer = AnswerStage().request({"question_id": "q", "question": "1+1?"},
                                load_settings(overrides={"answer.self_consistency": 4}))
    assert answer.n == 4 and answer.json_schema is None and answer.messages[-1]["content"] == "1+1?"


def test_settings_bound_the_output_schema() -> None:
    settings = load_settings(overrides={"generation.max_topics": 2, "generation.max_concepts_per_topic": 4,
                                        "generation.l1_max_questions": 3})
    concepts = ConceptsStage().request({"doc_id": "d", "text": "t"}, settings).json_schema
    topics = concepts["properties"]["topics"]
    assert topics["maxItems"] == 2 and topics["items"]["properties"]["key_concepts"]["maxItems"] == 4
    level1 = Level1Stage().request({"doc_id": "d", "text": "t"}, settings).json_schema
    assert level1["properties"]["questions"]["maxItems"] == 3
    # the prompt file itself is untouched
    from synthllm.prompts import load_prompt

    assert load_prompt("extract_concepts").schema["properties"]["topics"]["maxItems"] == 5
