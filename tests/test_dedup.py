"""Dedup: normalisation that sees maths, near-duplicates, a keep-choice fixed by content."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from synthllm.curation.dedup import MinHasher, candidate_pairs, dedup, keep_first, lsh_bands
from synthllm.curation.text import WordBatch, normalized_texts, word_lists
from synthllm.settings import CurationSettings

T0 = datetime(2025, 3, 1, 12, 0, 0)
LONG_QUESTION = (
    "A farmer plants 12 rows of tomatoes with 15 plants in each row. Each plant yields 4 kilograms of "
    "tomatoes over the summer, and the farmer sells every kilogram at the weekly market for 3 dollars. "
    "How much money does the farmer earn from the whole harvest?"
)
OTHER = "Find the least common multiple of 18 and 24, then divide it by their greatest common divisor."
# a long question whose operator pair differs in one character: shingle Jaccard ~0.9
LONG_EQUATION = (
    "Consider the linear equation 4x {op} 9 = 2x + 31 that appears in a worksheet about solving equations with "
    "one unknown on both sides. First move every term that contains x to the left-hand side, then move every "
    "constant to the right-hand side, combine like terms, divide by the coefficient of x and check the value "
    "you found by substituting it back into the original equation."
)


def _questions(rows: list[tuple]) -> pl.DataFrame:
    """rows: (question_id, level, question, minutes after T0)"""
    return pl.DataFrame(
        [
            {"question_id": q, "level": level, "question": text, "created_at": T0 + timedelta(minutes=m)}
            for q, level, text, m in rows
        ]
    )


def _tokens(text: str) -> list[str]:
    return word_lists([text]).to_list()[0]


def _shingle_jaccard(first: str, second: str, size: int) -> float:
    def shingles(words: list[str]) -> set[tuple[str, ...]]:
        return {tuple(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}

    a, b = shingles(_tokens(first)), shingles(_tokens(second))
    return len(a & b) / len(a | b)


def _by_check(rows: pl.DataFrame, check: str) -> dict[str, dict]:
    return {r["question_id"]: r for r in rows.filter(pl.col("check_name") == check).iter_rows(named=True)}


def _dropped(rows: pl.DataFrame) -> set[str]:
    return set(rows.filter(~pl.col("kept"))["question_id"])


def test_normalisation_keeps_operators_relations_decimals_and_latex() -> None:
    assert _tokens("Solve x + 3 = 7") == ["solve", "x", "+", "3", "=", "7"]
    assert _tokens("Solve x − 3 = 7") == ["solve", "x", "-", "3", "=", "7"]  # Unicode minus is '-'
    assert _tokens(r"Is $\frac{1}{2} \le 0.75$? x ≥ 2, y ≠ 3×4 ÷ 6 / 2 ^ 2 * 1 < 9 > 1.") == [
        "is", r"\frac", "1", "2", r"\le", "0.75", "x", "≥", "2", "y", "≠", "3", "×", "4", "÷", "6", "/", "2",
        "^", "2", "*", "1", "<", "9", ">", "1",
    ]
    assert _tokens("The answer is 3.5.") == ["the", "answer", "is", "3.5"]
    assert _tokens(r"\sqrt{2}") != _tokens("2")
    # spacing, case and other punctuation still do not count
    keys = normalized_texts(["Solve  x+3=7!", "solve X + 3 = 7", "Solve x − 3 = 7", "Solve x - 3 = 7"]).to_list()
    assert keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[2]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Solve x + 3 = 7", "Solve x − 3 = 7"),
        ("Solve x + 3 = 7", "Solve x × 3 = 7"),
        ("Is 2.5 < 3?", "Is 25 < 3?"),
        ("Is 7 > 3 true?", "Is 7 < 3 true?"),
        (r"Compute $\sqrt{16}$.", r"Compute $\frac{16}$."),
        (LONG_EQUATION.format(op="+"), LONG_EQUATION.format(op="−")),
    ],
)
def test_both_members_of_an_operator_pair_survive_exact_and_near_dedup(first: str, second: str) -> None:
    rows = dedup(_questions([("q-a", 1, first, 0), ("q-b", 1, second, 1)]), CurationSettings())
    assert _dropped(rows) == set()
    assert set(_by_check(rows, "near_dup")) == {"q-a", "q-b"}  # near-dup did look at both


def test_long_operator_pair_is_lexically_a_near_duplicate() -> None:
    """What the near-dup check must see past: one operator in a long text leaves shingles alike."""
    plus, minus = LONG_EQUATION.format(op="+"), LONG_EQUATION.format(op="−")
    assert _shingle_jaccard(plus, minus, CurationSettings().minhash_shingle) >= CurationSettings().minhash_threshold


def test_minhash_signatures_equal_datasketch_minhash() -> None:
    texts = [LONG_QUESTION, "Solve for x.", "", OTHER, r"Compute $\dbinom{8}{4}$."]
    hasher = MinHasher(num_perm=64, shingle=5)
    words = WordBatch.from_texts(texts)
    signatures = hasher.signatures(words)
    hashes, owners = hasher.shingle_hashes(words)
    for row in range(len(texts)):
        reference = MinHash(num_perm=64, seed=hasher.seed, hashfunc=int)
        reference.update_batch([int(h) for h in hashes[owners == row]])
        assert np.array_equal(reference.hashvalues, signatures[row]), texts[row]


def test_lsh_bands_match_datasketch_parameters() -> None:
    from datasketch import MinHashLSH

    for threshold in (0.7, 0.8, 0.9):
        lsh = MinHashLSH(threshold=threshold, num_perm=128, weights=(0.1, 0.9))
        assert lsh_bands(threshold, 128) == (lsh.b, lsh.r)


def test_candidate_pairs_of_a_large_band_group_stay_linear() -> None:
    bands = np.zeros((1000, 2), dtype=np.uint64)  # every row shares every band key
    earlier, later = candidate_pairs(bands, neighbours=3)
    assert np.all(earlier < later)
    assert len(earlier) <= 1000 * 4  # not the 499,500 pairs of the whole group
    assert set(zip(earlier[later == 999].tolist(), [999] * 4, strict=False)) >= {(0, 999), (998, 999)}


def test_exact_and_near_duplicates_are_dropped_and_distinct_questions_kept() -> None:
    near_copy = LONG_QUESTION + " Show your work."
    edited_numbers = LONG_QUESTION.replace("12 rows", "9 rows").replace("4 kilograms", "7 kilograms")
    questions = _questions(
        [
            ("l1-a-original", 1, LONG_QUESTION, 0),
            ("l1-b-exact", 1, "  " + LONG_QUESTION.upper().replace(".", " ."), 5),
            ("l1-near", 1, near_copy, 6),
            ("l1-numbers", 1, edited_numbers, 7),
            ("l1-other", 1, OTHER, 8),
            # across levels: the level-2 copy is dropped although it was created first
            ("l2-copy-of-other", 2, OTHER + "!", -60),
            ("l2-near-original", 2, "Note: " + LONG_QUESTION, 1),
        ]
    )
    settings = CurationSettings()
    rows = dedup(questions, settings)
    exact, near = _by_check(rows, "exact_dup"), _by_check(rows, "near_dup")

    assert set(exact) == set(questions["question_id"])
    # same text: ties go to the smaller question_id, whatever was created first
    assert {q for q, r in exact.items() if not r["kept"]} == {"l1-b-exact", "l2-copy-of-other"}
    assert exact["l1-b-exact"]["matched_id"] == "l1-a-original"
    assert exact["l2-copy-of-other"]["matched_id"] == "l1-other"
    assert exact["l2-copy-of-other"]["detail"] == "level 2 duplicates level 1"
    assert "l1-b-exact" not in near and "l2-copy-of-other" not in near

    expected = _shingle_jaccard(LONG_QUESTION, near_copy, settings.minhash_shingle)
    assert expected >= settings.minhash_threshold  # the planted pair really is a near-duplicate
    dropped_near = {q for q, r in near.items() if not r["kept"]}
    # within level 1 the content order decides which of the pair stays; exactly one does
    assert len(dropped_near & {"l1-a-original", "l1-near"}) == 1
    loser = (dropped_near & {"l1-a-original", "l1-near"}).pop()
    winner = ({"l1-a-original", "l1-near"} - {loser}).pop()
    assert near[loser]["matched_id"] == winner
    assert near[loser]["score"] == pytest.approx(expected)
    assert near["l2-near-original"]["kept"] is False
    assert near["l2-near-original"]["detail"] == "level 2 near-duplicates level 1"
    assert near["l1-numbers"]["kept"] and near["l1-other"]["kept"]


def test_kept_set_depends_on_content_only_not_created_at_or_input_order() -> None:
    rng = random.Random(3)
    texts = []
    for i in range(60):
        base = f"{LONG_QUESTION} Variant {i} asks about {rng.choice(['apples', 'pears', 'plums'])} too."
        texts += [base, base + " Show your work.", base.upper()]
    rows = [(f"q{i:03d}", 1 + i % 2, text, i) for i, text in enumerate(texts)]
    first = dedup(_questions(rows), CurationSettings())
    assert len(_dropped(first)) >= 60
    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        minutes = random.Random(seed + 10).sample(range(1000), len(shuffled))
        again = dedup(_questions([(q, lv, t, m) for (q, lv, t, _), m in zip(shuffled, minutes, strict=True)]),
                      CurationSettings())
        assert _dropped(again) == _dropped(first)
        assert again.sort("question_id", "check_name").equals(first.sort("question_id", "check_name"))


def test_empty_and_tokenless_questions() -> None:
    rows = dedup(_questions([("a", 1, "", 0), ("b", 1, "?!", 1), ("c", 1, OTHER, 2)]), CurationSettings())
    exact, near = _by_check(rows, "exact_dup"), _by_check(rows, "near_dup")
    assert exact["b"]["matched_id"] == "a"  # both normalise to no tokens
    assert near["a"]["detail"] == "no words after normalisation" and near["a"]["kept"]
    assert near["c"]["kept"] and near["c"]["detail"] is None
    empty = pl.DataFrame(schema={"question_id": pl.String, "level": pl.Int64, "question": pl.String})
    assert dedup(empty, CurationSettings()).is_empty()


def test_a_pair_at_exactly_the_threshold_is_a_near_duplicate() -> None:
    """``minhash_threshold`` is reached, not exceeded: 4 of 5 shingles shared is 0.8. Of a chain
    a ~ b ~ c, only b goes (c's match, b, is not kept; a and c are not similar)."""
    earlier, later = np.array([0, 1, 0]), np.array([1, 2, 2])
    kept, matched, best = keep_first(3, earlier, later, np.array([0.8, 0.9, 0.79]), threshold=0.8)
    assert kept.tolist() == [True, False, True] and matched.tolist() == [-1, 0, -1] and best[1] == 0.8
