"""Concept-name normalisation: one node per concept however the model spells it."""

from __future__ import annotations

import pytest

from synthllm.concepts import MAX_CONCEPT_CHARS, concept_id, normalise_concept, singular


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Quadratic Equations", "quadratic equation"),
        ("  quadratic\tequation. ", "quadratic equation"),
        ("QUADRATIC  EQUATION!", "quadratic equation"),
        ("Systems of Linear Equations", "system of linear equation"),
        ("Probabilities", "probability"),
        ("Classes", "class"),
        ("Boxes", "box"),
        ("Branches", "branch"),
        ("Cases", "case"),
        ("Laws", "law"),
        ("Vertices", "vertex"),
        ("Axes", "axis"),
        ("Analysis", "analysis"),
        ("Calculus", "calculus"),
        ("Series", "series"),
        ("Statistics", "statistics"),
        ("gas", "gas"),
        ("Newton's Laws of Motion", "newton law of motion"),
        ("Newton\u2019s second law", "newton second law"),
        ("Bayes' theorem", "bayes theorem"),
        ("C++ templates", "c++ template"),
        ("C#", "c#"),
        ("x^2 + 1", "x^2 + 1"),
        ("3.14 approximations", "3.14 approximation"),
        ("1,000 numbers", "1000 number"),
        ("1/2 fractions", "1/2 fraction"),
        ("x-axis", "x axis"),
        ("\uff21\uff22\uff23 conjecture", "abc conjecture"),  # full-width letters, NFKC
        ("Stra\u00dfe", "strasse"),  # case folding, not just lower()
    ],
)
def test_normalise_concept(raw: str, expected: str) -> None:
    assert normalise_concept(raw) == expected


@pytest.mark.parametrize("junk", ["", "   ", "---", "N/A", "none", "Unknown", "?!", "x" * (MAX_CONCEPT_CHARS + 1)])
def test_junk_gives_empty_name(junk: str) -> None:
    assert normalise_concept(junk) == ""


def test_spellings_of_one_concept_meet() -> None:
    spellings = ["Pythagorean Theorem", "pythagorean theorem.", " Pythagorean  theorems ", "PYTHAGOREAN THEOREM"]
    assert {normalise_concept(s) for s in spellings} == {"pythagorean theorem"}


def test_normalising_twice_changes_nothing() -> None:
    for raw in ["Newton's Laws", "Probabilities and Statistics", "C++ classes", "1/2 fractions", "Bayes' theorem"]:
        once = normalise_concept(raw)
        assert normalise_concept(once) == once


def test_singular_leaves_short_and_non_alphabetic_words() -> None:
    assert singular("bus") == "bus"
    assert singular("2ds") == "2ds"
    assert singular("ties") == "tie"


def test_non_string_is_refused() -> None:
    with pytest.raises(TypeError):
        normalise_concept(None)  # type: ignore[arg-type]


def test_concept_id() -> None:
    assert concept_id("topic", "algebra") == "topic:algebra"
    assert concept_id("kc", "quadratic formula") == "kc:quadratic formula"
    with pytest.raises(ValueError):
        concept_id("skill", "algebra")
    with pytest.raises(ValueError):
        concept_id("kc", "")


@pytest.mark.parametrize(
    ("plural", "singular_form"),
    [
        ("gases", "gas"),
        ("Ideal gases", "ideal gas"),
        ("biases", "bias"),
        ("lenses", "lens"),
        ("convex lenses", "convex lens"),
        ("bases", "basis"),  # vector-space bases: the plural of "basis"
        ("buses", "bus"),
        ("radiuses", "radius"),
        ("caches", "cache"),
        ("syntheses", "synthesis"),
        ("databases", "database"),  # only the whole word "bases" is the plural of "basis"
        ("phases", "phase"),
    ],
)
def test_plurals_meet_their_singular(plural: str, singular_form: str) -> None:
    """Issue 12: "gases" gave "gase" (a node apart from "gas"), "bases" gave "base" (apart from "basis")."""
    assert normalise_concept(plural) == singular_form
    assert normalise_concept(singular_form) == singular_form


@pytest.mark.parametrize(
    "spellings",
    [
        ["non-linear equations", "nonlinear equation", "Non linear equations", "non\u2013linear equation"],
        ["co-prime numbers", "coprime numbers", "co prime number"],
        ["sub-groups", "subgroup", "Sub groups"],
        ["multi-variable calculus", "multivariable calculus"],
    ],
)
def test_hyphen_and_space_spellings_meet(spellings: list[str]) -> None:
    assert len({normalise_concept(s) for s in spellings}) == 1


def test_hyphens_between_ordinary_words_stay_a_space() -> None:
    assert normalise_concept("x-axis") == normalise_concept("x axis") == "x axis"
    assert normalise_concept("non") == "non"


def test_normalise_concept_is_memoised() -> None:
    """Issue 13: 245,585 calls for 10k replies; repeated names must not be normalised again."""
    normalise_concept.cache_clear()
    for _ in range(1000):
        normalise_concept("Quadratic Equations")
    info = normalise_concept.cache_info()
    assert (info.misses, info.hits) == (1, 999)


def test_punctuation_rule_is_the_per_character_rule_over_all_of_unicode() -> None:
    """The one-regex pass that blanks punctuation keeps exactly the characters the documented
    rule keeps (alphanumeric, "+#^", the number placeholders) for every code point."""
    import sys

    from synthllm import concepts

    kept = concepts._KEPT_SYMBOLS + concepts._POINT + concepts._SLASH
    text = "".join(chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF)
    expected = "".join(ch if ch.isalnum() or ch in kept else " " for ch in text)
    assert concepts._NOT_KEPT.sub(" ", text) == expected
    assert [bool(concepts._ALNUM.search(ch)) for ch in text[:70000]] == [ch.isalnum() for ch in text[:70000]]
