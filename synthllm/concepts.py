"""Normalised names for topics and key concepts (KCs).

The extraction model spells one concept many ways ("Quadratic Equations", "quadratic equation.",
"quadratic  equation"); the concept graph needs one node per concept, so every string is mapped
to a normalised name before it becomes a node. The normalisation is deliberately simple and
predictable (no lemmatiser, no model): the raw surface forms are kept by the caller, so nothing
is lost and a reader can always see what the model wrote.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

CONCEPT_KINDS = ("topic", "kc")

# Longer strings are sentences, not concept names.
MAX_CONCEPT_CHARS = 100

# Symbols that carry meaning inside a concept name ("c++", "c#", "x^2") and are kept.
_KEPT_SYMBOLS = "+#^"
# Apostrophe look-alikes, folded to "'" before possessives are removed.
_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc\u00b4`]")
_POSSESSIVE = re.compile(r"(?<=\w)'s\b|(?<=s)'(?=\s|$)")
# '.', ',' and '/' between digits belong to a number ("3.14", "1,000", "1/2").
_NUMBER_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_NUMBER_SLASH = re.compile(r"(?<=\d)/(?=\d)")
# Private-use placeholders protect number punctuation while other punctuation is removed.
_POINT, _SLASH = "\ue000", "\ue001"
_WHITESPACE = re.compile(r"\s+")
# What becomes a space: a character neither alphanumeric (``\w`` is ``str.isalnum`` plus "_")
# nor kept nor a placeholder. One regex pass instead of a Python test per character.
_NOT_KEPT = re.compile(f"[^\\w{re.escape(_KEPT_SYMBOLS)}{_POINT}{_SLASH}]|_")
_ALNUM = re.compile(r"[^\W_]")

# Strings a model writes when it has nothing to say.
_JUNK = frozenset({"none", "null", "nil", "nan", "n a", "na", "unknown", "unspecified", "not applicable"})

# Words the plural rules would damage: field names, invariant plurals, Latin plurals, names.
_INVARIANT = frozenset({
    "series", "species", "means", "news", "physics", "mathematics", "statistics", "economics",
    "mechanics", "dynamics", "kinematics", "optics", "ethics", "genetics", "logistics",
    "electronics", "thermodynamics", "linguistics", "politics", "aerodynamics", "acoustics",
    "chaos", "cosmos", "ethos", "pathos", "bayes",
    "pythagoras", "archimedes", "descartes", "always", "sometimes", "perhaps", "whereas", "does",
    "goes",
})
# Singular nouns ending in "s" whose plural only adds "es" ("gases", "biases", "lenses"): the
# generic rule would leave "gase"; these words are also never stripped themselves.
_S_SINGULARS = frozenset({
    "gas", "bias", "lens", "bus", "atlas", "canvas", "alias", "iris", "virus", "status", "bonus",
    "census", "campus", "plus", "minus", "radius", "modulus", "torus", "rhombus", "annulus",
    "syllabus", "stimulus", "corpus", "chorus", "apparatus", "nexus", "consensus", "circus",
    "cactus", "fungus", "abacus", "calculus", "surplus", "focus", "locus", "nucleus", "octopus",
    "prospectus", "thesaurus", "omnibus", "isthmus", "impetus", "hiatus",
})
# Singular nouns ending in "che" ("caches" -> "cache", not "cach" like "branches" -> "branch").
_CHE_SINGULARS = frozenset({
    "cache", "niche", "ache", "headache", "avalanche", "cliche", "psyche", "quiche", "creche",
    "moustache", "mustache", "panache",
})
_IRREGULAR = {
    "vertices": "vertex", "matrices": "matrix", "indices": "index", "apices": "apex",
    "axes": "axis", "radii": "radius", "foci": "focus", "loci": "locus", "nuclei": "nucleus",
    "hypotheses": "hypothesis", "analyses": "analysis", "theses": "thesis",
    "parentheses": "parenthesis", "criteria": "criterion", "phenomena": "phenomenon",
    "polyhedra": "polyhedron", "children": "child", "men": "man", "women": "woman",
    "people": "person", "feet": "foot", "teeth": "tooth", "halves": "half", "leaves": "leaf",
    # In mathematics "bases" is mostly the plural of "basis" (vector-space bases).
    "bases": "basis", "diagnoses": "diagnosis", "prognoses": "prognosis", "crises": "crisis",
    "oases": "oasis", "quizzes": "quiz",
}
# Prefixes written closed, hyphenated or spaced ("nonlinear", "non-linear", "non linear"): joined
# to the next word so the three spellings give one name.
_PREFIXES = frozenset({
    "non", "anti", "semi", "multi", "sub", "co", "quasi", "pseudo", "inter", "intra", "bi", "tri",
    "poly", "counter", "hyper", "micro", "macro", "mono", "pre",
})
# Words shorter than this keep their form: "gas", "bus", "its" are not plurals to strip.
_MIN_PLURAL_CHARS = 4


@lru_cache(maxsize=1 << 16)
def singular(word: str) -> str:
    """Simple English plural -> singular for one lower-case word; anything unsure stays as is.

    Rules, in order: irregular table; invariant words, singulars ending in "s" and words ending
    in "ics" (field names) stay; "<singular in s>es" -> the singular ("gases" -> "gas");
    "-eses"/"-yses" -> "-esis"/"-ysis" ("syntheses", "analyses"); "ies" -> "y"; "sses" -> "ss";
    "xes"/"ches"/"shes" -> drop "es" (these only in words over four letters, so "ties" -> "tie";
    "caches" -> "cache" from a small table); a trailing "s" not after "s", "u" or "i" is dropped
    ("cases" -> "case", "sizes" -> "size", "laws" -> "law"). Words of three letters or fewer
    ("gas", "bus") and words that are not purely alphabetic are left alone.
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if (len(word) < _MIN_PLURAL_CHARS or not word.isalpha() or word in _INVARIANT or word in _S_SINGULARS
            or word.endswith("ics")):
        return word
    if word.endswith("es") and word[:-2] in _S_SINGULARS:
        return word[:-2]
    if len(word) > _MIN_PLURAL_CHARS:
        if word.endswith(("eses", "yses")) and len(word) > 5:
            return word[:-2] + "is"
        if word.endswith("ies"):
            return word[:-3] + "y"
        if word.endswith("sses"):
            return word[:-2]
        if word.endswith("ches") and word[:-1] in _CHE_SINGULARS:
            return word[:-1]
        if word.endswith(("xes", "ches", "shes")):
            return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _join_prefixes(words: list[str]) -> list[str]:
    """"non linear" -> "nonlinear": a prefix word is attached to the word after it."""
    joined: list[str] = []
    for word in words:
        if joined and joined[-1] in _PREFIXES:
            joined[-1] += word
        else:
            joined.append(word)
    return joined


@lru_cache(maxsize=1 << 17)
def normalise_concept(text: str) -> str:
    """The normalised name of a topic or KC, or "" when the string is no concept.

    NFKC, case-folded; possessives dropped ("Newton's laws" -> "newton law"); punctuation other
    than "+", "#", "^" and number punctuation ("3.14", "1/2") becomes a space; whitespace
    collapsed; prefixes joined ("non-linear" -> "nonlinear"); every word made singular
    (:func:`singular`). Junk ("", "N/A", "none", pure punctuation, strings over
    ``MAX_CONCEPT_CHARS``) gives "". Memoised: one reply repeats a concept many times, and a
    run normalises the same few thousand names hundreds of thousands of times.
    """
    if not isinstance(text, str):
        raise TypeError(f"a concept name must be a string, got {type(text).__name__}")
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = _APOSTROPHES.sub("'", folded)
    folded = _POSSESSIVE.sub("", folded)
    folded = _NUMBER_COMMA.sub("", folded)
    folded = _NUMBER_POINT.sub(_POINT, folded)
    folded = _NUMBER_SLASH.sub(_SLASH, folded)
    kept = _NOT_KEPT.sub(" ", folded).replace(_POINT, ".").replace(_SLASH, "/")
    words = _join_prefixes([word for word in _WHITESPACE.sub(" ", kept).strip().split(" ") if word])
    name = " ".join(singular(word) for word in words)
    if not _ALNUM.search(name) or name in _JUNK or len(name) > MAX_CONCEPT_CHARS:
        return ""
    return name


def concept_id(kind: str, name: str) -> str:
    """The graph node id of a normalised concept: ``"<kind>:<name>"`` (kind: topic or kc)."""
    if kind not in CONCEPT_KINDS:
        raise ValueError(f"concept kind must be one of {CONCEPT_KINDS}, got {kind!r}")
    if not name:
        raise ValueError("a concept id needs a non-empty normalised name")
    return f"{kind}:{name}"
