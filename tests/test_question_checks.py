"""The question gate's rule checks: each junk kind the demo exported gets its reason code."""

from __future__ import annotations

import pytest

from synthllm.question_checks import (
    CUT_OFF,
    EMPTY,
    HEADER,
    NO_TASK,
    NOT_SELF_CONTAINED,
    NOT_VERDICT_SETTINGS,
    REASONS,
    REPETITION,
    SINGLE_TOPIC,
    TOO_FEW_CONCEPTS,
    TOO_LONG,
    TOO_SHORT,
    check_question,
    check_questions,
    verdict_version,
)
from synthllm.settings import GateSettings, load_settings

GATE = GateSettings()
GOOD = [
    "Solve x + 3 = 7.",
    "A shirt costs $25. How much do 3 shirts cost?",
    "If f(x) = x^2 + 1, find f(3)",
    "Prove that there are infinitely many primes.",
    "Let $x$ be the largest prime below 100. Determine $x \\bmod 7$.",
    "Find the maximum of $f(x) = x(1 - x)$ on the interval [0, 1).",
    "What is 1 + 1 + 1 + 1 + 1?",
    "Compute the area of the region above the x-axis and below $y = 4 - x^2$.",
    "Evaluate the integral of x from 0 to 1",
]


@pytest.mark.parametrize("question", GOOD)
def test_good_questions_pass(question: str) -> None:
    assert check_question({"question": question}, 1, GATE) is None


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        ("", EMPTY),
        ("   ", EMPTY),
        ("Question 1", HEADER),
        ("1.", HEADER),
        ("Q2:", HEADER),
        ("Problem 3)", HEADER),
        ("(a)", HEADER),
        ("Find x.", TOO_SHORT),
        ("Find " + "the sum of a and b and c, " * 150 + "in total.", TOO_LONG),
        ("What is the difference between", CUT_OFF),
        ("Compute the sum of $x^2 + y^2", CUT_OFF),
        ("Find the roots of the polynomial (x - 1)(x + 2", CUT_OFF),
        ("Evaluate the following expression:", CUT_OFF),
        ("According to the passage, what is the speed of the train?", NOT_SELF_CONTAINED),
        ("Using the figure above, find the shaded area.", NOT_SELF_CONTAINED),
        ("What does the author mean by a limit?", NOT_SELF_CONTAINED),
        ("Based on the text, how many solutions does the equation have?", NOT_SELF_CONTAINED),
        ("The derivative of x^2 is 2x for every real number x.", NO_TASK),
        ("Let f be a continuous function on the real line.", NO_TASK),
        ("Find the value of the value of the value of the value of x.", REPETITION),
        ("Solve " + "0 " * 12 + "= x.", REPETITION),
    ],
)
def test_junk_gets_its_reason(question: str, reason: str) -> None:
    assert check_question({"question": question}, 1, GATE) == reason


def test_level_2_needs_known_concepts() -> None:
    row = {"question": "Solve x^2 - 5x + 6 = 0 and find the sum of the roots.", "concepts": []}
    assert check_question(row, 2, GATE) == TOO_FEW_CONCEPTS
    assert check_question({**row, "concepts": ["kc:quadratic"]}, 2, GATE) == TOO_FEW_CONCEPTS
    assert check_question({**row, "concepts": ["kc:quadratic", "kc:quadratic"]}, 2, GATE) == TOO_FEW_CONCEPTS
    assert check_question({**row, "concepts": ["kc:quadratic", "kc:vieta"]}, 2, GATE) is None


def test_level_3_needs_concepts_from_two_topics() -> None:
    row = {"question": "Find the probability that a random root of x^2 - 5x + 6 is even.",
           "concepts": ["kc:quadratic", "kc:vieta"], "level": 3, "combo_id": "c1"}
    same_topic = {"kc:quadratic": "topic:algebra", "kc:vieta": "topic:algebra", "kc:event": "topic:probability"}
    assert check_question(row, 3, GATE, same_topic) == SINGLE_TOPIC
    mixed = {**row, "concepts": ["kc:quadratic", "kc:event"]}
    assert check_question(mixed, 3, GATE, same_topic) is None
    # A KC listed under several topics can stand for either: two KCs, two topics available.
    shared = {"kc:quadratic": ["topic:algebra"], "kc:vieta": ["topic:algebra", "topic:number theory"]}
    assert check_question(row, 3, GATE, shared) is None
    unknown = {**row, "concepts": ["kc:quadratic", "kc:invented"]}
    assert check_question(unknown, 3, GATE, same_topic) == SINGLE_TOPIC
    with pytest.raises(ValueError, match="concept_topics"):
        check_question(row, 3, GATE)


def test_batch_form_matches_single_checks_and_needs_level_3_topics() -> None:
    rows = [{"question": q, "level": 1} for q in GOOD + ["Question 1", "The answer is 7."]]
    rows.append({"question": "Find x + y if x, y are the two roots of x^2 - 3x + 2.", "level": 3,
                 "concepts": ["kc:a", "kc:b"], "combo_id": "c"})
    reasons = check_questions(rows, GATE, {"c": {"kc:a": "topic:1", "kc:b": "topic:2"}})
    assert reasons == [None] * len(GOOD) + [HEADER, NO_TASK, None]
    assert set(reasons) <= {None, *REASONS}
    with pytest.raises(ValueError, match="no concept topics for combination 'c'"):
        check_questions(rows, GATE)


def test_gate_settings_come_from_the_settings_file_layer() -> None:
    settings = load_settings(overrides={"gate.min_chars": 40, "gate.max_repeats": 5})
    assert check_question({"question": "Solve x + 3 = 7."}, 1, settings.gate) == TOO_SHORT
    assert settings.gate.judge_enabled is False
    with pytest.raises(ValueError, match="gate.min_chars"):
        load_settings(overrides={"gate.min_chars": 50, "gate.max_chars": 40})


def test_judge_prompt_asks_for_a_structured_score() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from synthllm.prompts import load_prompt

    prompt = load_prompt("judge_question")
    assert prompt.placeholders == {"domain", "question"}
    assert "Solve x + 3 = 7." in prompt.render(domain="mathematics", question="Solve x + 3 = 7.")[-1]["content"]
    reply = {"self_contained": 5, "well_posed": 4, "reasoning": 3, "clarity": 5, "score": 8, "reason": "ok"}
    jsonschema.validate(reply, prompt.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**reply, "score": 11}, prompt.schema)
    assert 1 <= GATE.judge_threshold <= 10


def _repeats_brute_force(text: str, max_repeats: int) -> bool:
    """The rule as stated: some unit of 1..10 tokens followed by more than ``max_repeats`` copies
    of itself (three times as many for a unit without a word), every start tried."""
    tokens = text.casefold().split()
    for size in range(1, 11):
        for start in range(len(tokens)):
            unit = tokens[start:start + size]
            if len(unit) < size:
                break
            limit = max_repeats if any(t.isalpha() for t in unit) else 3 * max_repeats
            copies = 1
            while tokens[start + copies * size:start + (copies + 1) * size] == unit:
                copies += 1
            if copies > limit:
                return True
    return False


def test_repetition_check_agrees_with_the_rule_on_random_texts() -> None:
    """The one-pass-per-size loop check finds exactly the loops the rule describes."""
    import random

    from synthllm.question_checks import _has_loop

    rng = random.Random(7)
    vocabulary = ["a", "b", "the", "1", "+", "=", "x", "2"]
    found = 0
    for _ in range(3000):
        tokens = [rng.choice(vocabulary[:rng.randint(1, 8)]) for _ in range(rng.randint(0, 30))]
        if tokens and rng.random() < 0.5:  # plant a repeated unit
            position, unit = rng.randint(0, len(tokens)), tokens[:rng.randint(1, 4)]
            tokens[position:position] = unit * rng.randint(2, 12)
        text, max_repeats = " ".join(tokens), rng.randint(1, 4)
        expected = _repeats_brute_force(text, max_repeats)
        assert _has_loop(text, max_repeats) == expected, (text, max_repeats)
        found += expected
    assert 500 < found < 2500  # both kinds of text were tried


def test_missing_material_prefilter_keeps_every_regex_match() -> None:
    from synthllm.question_checks import _NOT_SELF_CONTAINED, _refers_to_missing_material

    texts = ["As shown in the figure, find x.", "Using the passage above, what is x?", "The ABOVE-mentioned sum.",
             "the Aforementioned limit", "described earlier", "the following Essay", "Find x.", *GOOD]
    for text in texts:
        assert _refers_to_missing_material(text) == bool(_NOT_SELF_CONTAINED.search(text)), text


def test_the_gate_version_follows_every_rule_setting_and_nothing_else() -> None:
    """A setting a verdict depends on gives a new version (so the gate checks every question
    again); shard size, on/off and the judge's settings do not (no needless re-check)."""
    base = verdict_version(GateSettings())
    changed = {"min_chars": 20, "max_chars": 2000, "max_repeats": 4, "min_concepts": 3, "min_topics": 3}
    assert set(changed) | NOT_VERDICT_SETTINGS == set(GateSettings.model_fields)
    for name, value in changed.items():
        assert verdict_version(GateSettings(**{name: value})) != base, name
    for name, value in {"enabled": False, "shard_size": 7, "judge_enabled": True, "judge_threshold": 8.0,
                        "judge_sampling": {"temperature": 0.5}}.items():
        assert verdict_version(GateSettings(**{name: value})) == base, name
    assert verdict_version(GateSettings(), "question_rules@2") != base
