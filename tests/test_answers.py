"""Verified answers: extraction, comparable forms, equivalence and the self-consistency vote."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from collections.abc import Sequence

import pytest

from synthllm.answers import (
    LOW_CONFIDENCE,
    NO_FINAL_ANSWER,
    NO_OUTPUT,
    TRUNCATED,
    VERIFY_TIMEOUT,
    EquivalencePool,
    extract_final_answer,
    normalize_answer,
    vote,
    vote_batch,
)
from synthllm.settings import AnswerSettings


def stuck_on_marker(forms: Sequence[str], pairs: Sequence[tuple[int, int]], timeout_s: float) -> list[bool | None]:
    """A comparer that hangs past every limit on answers containing "stuck" (like math-verify can)."""
    if any("stuck" in form for form in forms):
        time.sleep(120)
    return [forms[a] == forms[b] for a, b in pairs]


@pytest.fixture(scope="module")
def pool():
    with EquivalencePool(workers=1, timeout_s=5.0) as shared:
        yield shared


def samples(*texts: str, reason: str = "stop") -> list[tuple[str, str | None]]:
    return [(text, reason) for text in texts]


# --------------------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Issue 12: the old fallback regex cut decimals.
        ("The answer is 3.5.", "3.5"),
        ("The answer is: 0.75", "0.75"),
        ("So the final answer is $2.25$.", "2.25"),
        ("First \\boxed{1}, then \\boxed{\\frac{a}{\\sqrt{b^{2}}}}.", "\\frac{a}{\\sqrt{b^{2}}}"),
        ("The result is \\fbox{42}", "42"),
        ("**Answer:** 12 cm", "12 cm"),
        ("Answer: $x = \\dfrac{1}{2}$", "x = \\dfrac{1}{2}"),
        ("Adding them up:\n3 + 4 = 7.", "7"),
        ("$$\\text{Area} = 12\\text{ cm}^2$$", "12\\text{ cm}^2"),
        ("There were 1,250 apples in all", "1,250"),
        ("She pays -2.5 per unit", "-2.5"),
        ("The answer is 12 cm because the perimeter is 12.", "12 cm"),
        ("To get the answer: we first add the numbers and then multiply them.\nSo 7 + 1 = 8", "8"),
        ("No number at all", None),
        ("", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ("\\dfrac{1}{2}", "0.5"),
        ("\\frac{1}{2}", "0.5"),
        ("\\tfrac12", "0.5"),
        ("0.50", "0.5"),
        ("1/2", "0.5"),
        ("-\\frac{3}{4}", "-0.75"),
        ("\\frac{1}{3}", "1/3"),
        ("12 cm", "12"),
        ("12\\text{ cm}^2", "12"),
        ("30^\\circ", "30"),
        ("50\\%", "50"),
        ("\\$1,200.50", "1200.5"),
        ("x = 5", "5"),
        ("1\\,000", "1000"),
        ("5x", "5x"),  # one letter, no space: an expression, not a unit
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("Yes", "yes"),
        ("\\frac{3}{1024}", "0.0029296875"),  # every digit of a finite decimal (was rounded to 0.002929688)
        ("-0.000", "0"),
        ("1e3", "1000"),  # scientific notation is a number (was read as 1 with the unit "e3")
        ("6.02E-3", "0.00602"),
        ("-12345678901234567890.125", "-12345678901234567890.125"),
    ],
)
def test_normalize_answer_key(answer: str, key: str) -> None:
    assert normalize_answer(answer).key == key


def test_units_are_kept_for_display_and_stripped_for_comparison() -> None:
    answer = normalize_answer("12 cm")
    assert (answer.display, answer.math, answer.key) == ("12 cm", "12", "12")


# --------------------------------------------------------------------------- the vote
def test_truncated_samples_count_as_asked() -> None:
    """Issue 12: with k=5 and 4 truncated samples the old vote reported confidence 1.0."""
    replies = samples("The answer is \\boxed{7}.") + samples("Step 1: 3 + 4", reason="length") * 4
    result = vote(replies, 5, AnswerSettings())
    assert (result.votes, result.confidence, result.rejection) == (1, 0.2, None)
    strict = vote(replies, 5, AnswerSettings(min_agreement=0.5))
    assert strict.rejection == LOW_CONFIDENCE and strict.final_answer == "7"


def test_samples_that_never_came_back_count_against_agreement_and_the_bar_is_inclusive() -> None:
    """2 of 4 samples asked came back, both 9: confidence 0.5 (not 1.0), which meets a 0.5 bar."""
    replies = samples("\\boxed{9}", "The answer is 9.")
    at_bar = vote(replies, 4, AnswerSettings(min_agreement=0.5))
    assert (at_bar.votes, at_bar.confidence, at_bar.rejection, at_bar.final_answer) == (2, 0.5, None, "9")
    assert vote(replies, 4, AnswerSettings(min_agreement=0.6)).rejection == LOW_CONFIDENCE


def test_decimals_do_not_agree_with_their_integer_part() -> None:
    """The old regex read "The answer is 3.5." as 3, so it agreed with a sample that said 3."""
    result = vote(samples("The answer is 3.5.", "The answer is 3.", "The answer is 3.5"), 3, AnswerSettings())
    assert (result.normalized_answer, result.votes, result.index) == ("3.5", 2, 0)


def test_fraction_spellings_are_one_answer_without_math_verify() -> None:
    """Issue 12: \\dfrac{1}{2}, \\frac{1}{2} and 0.5 counted as three answers."""
    spare = EquivalencePool(workers=1, timeout_s=1.0)
    replies = samples("\\boxed{\\dfrac{1}{2}}", "\\boxed{\\frac{1}{2}}", "The answer is 0.5.", "\\boxed{2}")
    result = vote(replies, 4, AnswerSettings(), spare)
    assert (result.votes, result.confidence, result.final_answer, result.normalized_answer) == (3, 0.75, "\\dfrac{1}{2}", "0.5")
    assert spare.questions_sent == 0  # numbers are compared exactly, no worker started


def test_ties_go_to_the_answer_seen_first() -> None:
    result = vote(samples("\\boxed{4}", "\\boxed{5}", "\\boxed{5}", "\\boxed{4}"), 4, AnswerSettings())
    assert (result.index, result.normalized_answer, result.votes) == (0, "4", 2)


@pytest.mark.parametrize(
    ("replies", "asked", "rejection"),
    [
        ([], 3, NO_OUTPUT),
        (samples("Let me think about 2 + 2", reason="length") * 3, 3, TRUNCATED),
        (samples("I cannot solve this.", "   "), 2, NO_FINAL_ANSWER),
    ],
)
def test_why_an_answer_is_rejected(replies, asked: int, rejection: str) -> None:
    result = vote(replies, asked, AnswerSettings())
    assert (result.rejection, result.votes, result.confidence, result.final_answer) == (rejection, 0, 0.0, None)
    assert result.columns()["rejection"] == rejection


def test_columns_fill_the_answers_table() -> None:
    result = vote(samples("\\boxed{12 cm}", "\\boxed{12}"), 2, AnswerSettings())
    assert result.columns() == {"final_answer": "12 cm", "normalized_answer": "12", "votes": 2, "confidence": 1.0,
                                "rejection": None}


# --------------------------------------------------------------------------- math-verify
def test_math_verify_merges_equivalent_expressions(pool: EquivalencePool) -> None:
    replies = samples("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\boxed{\\frac{1}{\\sqrt{2}}}", "\\boxed{\\sqrt{2}}")
    result = vote(replies, 3, AnswerSettings(), pool)
    assert (result.votes, result.index, result.timeouts) == (2, 0, 0)
    expanded = vote(samples("\\boxed{x^2+2x+1}", "\\boxed{(x+1)^2}", "\\boxed{x^2+1}"), 3, AnswerSettings(), pool)
    assert (expanded.votes, expanded.final_answer) == (2, "x^2+2x+1")


def test_batch_sends_only_undecided_questions_to_the_pool(pool: EquivalencePool) -> None:
    before = pool.questions_sent
    items = [(samples(f"\\boxed{{{n}}}", f"The answer is {n}.", "\\boxed{0}"), 3) for n in range(1, 200)]
    items.append((samples("\\boxed{2\\sqrt{3}}", "\\boxed{\\sqrt{12}}"), 2))
    votes = vote_batch(items, AnswerSettings(), pool)
    assert [v.votes for v in votes] == [2] * 199 + [2]
    assert [v.normalized_answer for v in votes[:3]] == ["1", "2", "3"]
    assert pool.questions_sent - before == 1


def test_a_stuck_comparison_is_killed_counted_and_the_pool_recovers() -> None:
    """math-verify can hang; the worker is killed past the limit and the comparison is "not equal"."""
    settings = AnswerSettings(min_agreement=0.6)
    with EquivalencePool(workers=1, timeout_s=0.2, compare=stuck_on_marker) as stuck_pool:
        started = time.monotonic()
        hung, fine = vote_batch(
            [(samples("\\boxed{\\alpha stuck}", "\\boxed{\\alpha stuck2}", "\\boxed{\\beta}"), 3),
             (samples("\\boxed{\\gamma}", "\\boxed{\\gamma }", "\\boxed{\\delta}"), 3)],
            settings, stuck_pool,
        )
        assert time.monotonic() - started < 30
        assert (hung.votes, hung.timeouts, hung.rejection) == (1, 3, VERIFY_TIMEOUT)
        assert (fine.votes, fine.rejection) == (2, None)  # its job ran on the replacement worker
        again = vote(samples("\\boxed{\\pi}", "\\boxed{\\pi}", "\\boxed{e}"), 3, settings, stuck_pool)
        assert (again.votes, again.timeouts, again.rejection) == (2, 0, None)


def test_vote_columns_fit_the_answers_table() -> None:
    from synthllm.store import conform

    result = vote(samples("\\boxed{\\dfrac{1}{2}}", "oops"), 2, AnswerSettings(min_agreement=0.9))
    row = {"question_id": "q", "answer": "…", "n_samples": 2, "prompt_version": "answer_question@1", "model": "m",
           "params_json": "{}", "shard_id": "s", "run_id": "r", "created_at": datetime.now(timezone.utc),
           **result.columns()}
    table = conform("answers", [row]).to_pylist()[0]
    assert (table["normalized_answer"], table["votes"], table["confidence"], table["rejection"]) == (
        "0.5", 1, 0.5, LOW_CONFIDENCE)


def test_a_real_small_model_answer_gives_its_last_number() -> None:
    import json
    from pathlib import Path

    replies = json.loads((Path(__file__).parent / "data" / "smollm2_replies.json").read_text(encoding="utf-8"))
    text = next(r["text"] for r in replies if r["prompt"] == "answer_question")
    assert extract_final_answer(text) == "18"
