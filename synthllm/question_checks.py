"""Rule checks of the question gate: why a generated question is no training question.

Pure functions over question rows (dicts with ``question``, ``level``, ``concepts`` and, for
level 3, ``combo_id``); the gate stage writes one ``curation`` row per question with the reason
code (``None``: passed). Checks run in a fixed order and the first failing one names the reason,
so a question has exactly one reason and the funnel adds up. Small models produce the junk these
rules catch: headers ("Question 1"), replies cut off by ``max_tokens``, references to the source
document ("According to the passage…"), statements with nothing to solve, token loops, and
level-2/3 questions whose reported concepts are invented.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from synthllm.settings import GateSettings
from synthllm.store import stable_hash

# The rule code's version: a change to the checks below re-runs the gate.
RULES_VERSION = "question_rules@1"
# Gate settings that do not change a rule verdict (the rest do: see ``verdict_version``).
NOT_VERDICT_SETTINGS = frozenset({"enabled", "shard_size", "judge_enabled", "judge_threshold", "judge_sampling"})


def verdict_version(gate: GateSettings, code_version: str = RULES_VERSION) -> str:
    """What gate rows carry as ``prompt_version``: the rule code's version and a digest of the
    settings the verdicts depend on. Coverage is per version, so tightening ``gate.min_concepts``
    re-checks every stored question, and a setting put back finds its verdicts stored."""
    return f"{code_version}+{stable_hash(gate.model_dump(mode='json', exclude=set(NOT_VERDICT_SETTINGS)), length=8)}"


EMPTY = "empty"
HEADER = "header"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
REPETITION = "repetition"
CUT_OFF = "cut_off"
NOT_SELF_CONTAINED = "not_self_contained"
NO_TASK = "no_task"
TOO_FEW_CONCEPTS = "too_few_concepts"
SINGLE_TOPIC = "single_topic"
REASONS = (EMPTY, HEADER, TOO_SHORT, TOO_LONG, REPETITION, CUT_OFF, NOT_SELF_CONTAINED, NO_TASK,
           TOO_FEW_CONCEPTS, SINGLE_TOPIC)

# "Question 1", "1.", "Q2:", "Problem 3)", "(a)", "Exercise IV", "Part b:" and nothing else.
_HEADER = re.compile(
    r"(?:(?:question|problem|exercise|example|task|part|q)\s*(?:no\.?|#)?\s*)?"
    r"[(\[]?\s*(?:\d+(?:\.\d+)*|[ivxlc]+|[a-z])?\s*[)\].:]?",
    re.IGNORECASE,
)
# Words a sentence cannot end on: the model ran out of tokens in the middle of it.
_DANGLING = frozenset({
    "a", "an", "the", "of", "and", "or", "nor", "but", "to", "between", "with", "without", "for",
    "in", "on", "at", "by", "from", "into", "onto", "over", "under", "than", "as", "is", "are",
    "was", "were", "be", "been", "that", "which", "whose", "who", "if", "when", "where", "while",
    "because", "such", "each", "every", "per", "via", "about", "among", "its", "their", "this",
    "these", "those", "then", "so", "let", "given", "called", "equals", "plus", "minus", "times",
})
# A text ending on one of these is cut off: an operator, an opening bracket, a comma or colon.
_DANGLING_END = ("+", "-", "*", "/", "=", "\\", ",", ":", ";", "(", "[", "{", "^", "_")
_LAST_WORD = re.compile(r"([A-Za-z]+)\W*$")
_ESCAPED_DOLLAR = re.compile(r"\\\$")
# "$25" or "$2.50" followed by a space or punctuation: a price, not the start of LaTeX maths.
_PRICE = re.compile(r"\$\d[\d,]*(?:\.\d+)?(?=[\s.,;:!?)]|$)")

# References to material the reader of a self-contained question does not have.
# The material words the phrases below end on (or contain): the same tuples give the regex and
# its prefilter, so a word added to one is in the other.
_MATERIAL = ("passage", "text", "document", "article", "excerpt", "paragraph", "reading", "essay", "author",
             "lecture", "notes")
_PICTURES = ("figure", "diagram", "picture", "image", "illustration")
_EARLIER = ("above", "earlier", "previously")
_NOT_SELF_CONTAINED = re.compile(
    rf"\b(?:the|this|that|above|given|following|preceding|previous)\s+(?:{'|'.join(_MATERIAL)})\b"
    rf"|\b(?:the|this|given|following|accompanying|above)\s+(?:{'|'.join(_PICTURES)})\b"
    r"|\b(?:shown|given|described|mentioned|stated|listed|defined|discussed|presented|provided)\s+"
    rf"(?:{'|'.join(_EARLIER)})\b"
    r"|\b(?:as\s+shown|shown\s+below|shown\s+in\s+the)\b"
    r"|\bthe\s+above\b|\babove[- ]mentioned\b|\baforementioned\b",
    re.IGNORECASE,
)
# Every match of _NOT_SELF_CONTAINED contains one of these (case-folded): the regex runs only then.
_NOT_SELF_CONTAINED_WORDS = (*_MATERIAL, *_PICTURES, *_EARLIER, "shown", "aforementioned")
# What makes a statement a task: a question mark, "how many/much", or an instruction verb where
# an instruction starts (text start, after a sentence, a comma, "and", "then" or "to").
_TASK = re.compile(
    r"\?|\bhow\s+(?:many|much)\b"
    r"|(?:^|[.!;:,]\s*|\b(?:and|then|to|please)\s+)"
    r"(?:find|solve|compute|prove|show|calculate|determine|evaluate|simplify|derive|express|estimate|"
    r"explain|describe|write|give|state|list|identify|verify|factor|factori[sz]e|expand|sketch|graph|"
    r"plot|convert|rewrite|construct|compare|justify|approximate|minimi[sz]e|maximi[sz]e|integrate|"
    r"differentiate|use|apply|demonstrate|classify|round|check|decide|analy[sz]e|arrange|complete|"
    r"name|define)\b",
    re.IGNORECASE,
)
# The longest token run checked for back-to-back repetition.
_MAX_LOOP_TOKENS = 10


def _is_header(text: str) -> bool:
    return not any(ch.isalpha() for ch in text) or _HEADER.fullmatch(text) is not None


def _is_cut_off(text: str) -> bool:
    """Ends on an operator, comma or dangling word, or leaves a bracket or ``$`` open."""
    if text.endswith(_DANGLING_END):
        return True
    if not text.endswith((".", "?", "!", ")", "]", "}", "$", '"', "'")):
        last = _LAST_WORD.search(text)
        if last and last.group(1).casefold() in _DANGLING:
            return True
    # Round and square brackets together: half-open intervals like "[0, 1)" are balanced.
    if text.count("(") + text.count("[") != text.count(")") + text.count("]"):
        return True
    if text.count("{") != text.count("}"):
        return True
    # An odd number of "$" leaves maths open, unless prices make the count ambiguous.
    dollars = _ESCAPED_DOLLAR.sub("", text)
    return dollars.count("$") % 2 == 1 and not _PRICE.search(dollars)


def _has_loop(text: str, max_repeats: int) -> bool:
    """Some run of 1..10 tokens repeated more than ``max_repeats`` times back to back.

    Runs without a word ("1 +" in "1 + 1 + 1 + 1 + 1") may repeat three times as often: sums
    and sequences repeat symbols, looping models repeat phrases. A unit of ``size`` tokens
    repeated ``k`` times is a stretch where each token equals the one ``size`` places on, for
    ``(k - 1) * size`` positions in a row; every unit inside it has the same tokens (rotated),
    so one pass per size finds it."""
    tokens = text.casefold().split()
    for size in range(1, _MAX_LOOP_TOKENS + 1):
        equal_run = 0
        for position in range(len(tokens) - size):
            if tokens[position] != tokens[position + size]:
                equal_run = 0
                continue
            equal_run += 1
            if equal_run < max_repeats * size:
                continue
            unit = tokens[position + 1 - equal_run:position + 1 - equal_run + size]
            if any(t.isalpha() for t in unit) or equal_run >= 3 * max_repeats * size:
                return True
    return False


def _refers_to_missing_material(text: str) -> bool:
    """``_NOT_SELF_CONTAINED`` matches; the regex (~20 µs a question) runs only where a word it
    needs occurs, which most questions lack."""
    folded = text.casefold()
    return any(word in folded for word in _NOT_SELF_CONTAINED_WORDS) and bool(_NOT_SELF_CONTAINED.search(text))


def _topics_of(kc_id: str, concept_topics: Mapping[str, str | Collection[str]]) -> frozenset[str]:
    topics = concept_topics.get(kc_id, ())
    return frozenset([topics] if isinstance(topics, str) else topics)


def _spans_topics(concepts: list[str], concept_topics: Mapping[str, str | Collection[str]], needed: int) -> bool:
    """Whether the concepts come from ``needed`` different topics (a KC may sit under several)."""
    topic_sets = [_topics_of(kc, concept_topics) for kc in concepts]
    topic_sets = [t for t in topic_sets if t]
    if len(topic_sets) < needed:
        return False
    # Greedy assignment of distinct topics, scarcest KC first: exact for the 2-3 KCs a question uses.
    chosen: set[str] = set()
    for topics in sorted(topic_sets, key=len):
        free = sorted(topics - chosen)
        if free:
            chosen.add(free[0])
    return len(chosen) >= needed


def check_question(
    row: Mapping[str, Any],
    level: int,
    settings: GateSettings,
    concept_topics: Mapping[str, str | Collection[str]] | None = None,
) -> str | None:
    """The reason code (one of :data:`REASONS`) why the question fails the gate, else ``None``.

    ``concept_topics`` maps the combination's KC ids to their topic id (or ids); level 3 needs it
    to check that a question's concepts come from different topics.
    """
    text = (row.get("question") or "").strip()
    if not text:
        return EMPTY
    if _is_header(text):
        return HEADER
    if len(text) < settings.min_chars:
        return TOO_SHORT
    if len(text) > settings.max_chars:
        return TOO_LONG
    if _has_loop(text, settings.max_repeats):
        return REPETITION
    if _is_cut_off(text):
        return CUT_OFF
    if _refers_to_missing_material(text):
        return NOT_SELF_CONTAINED
    if "?" not in text and not _TASK.search(text):  # "?" is _TASK's first alternative, at C speed
        return NO_TASK
    if row.get("concepts") is not None:  # a stage that asks for concepts (levels 2 and 3) reports them
        concepts = list(row["concepts"])
        if len(set(concepts)) < settings.min_concepts:
            return TOO_FEW_CONCEPTS
        if level == 3:
            if concept_topics is None:
                raise ValueError(f"question {row.get('question_id')!r}: level-3 checks need the combination's concept_topics")
            if not _spans_topics(sorted(set(concepts)), concept_topics, settings.min_topics):
                return SINGLE_TOPIC
    return None


def check_questions(
    rows: Iterable[Mapping[str, Any]],
    settings: GateSettings,
    topics_by_combo: Mapping[str, Mapping[str, str | Collection[str]]] | None = None,
) -> list[str | None]:
    """:func:`check_question` over a shard of rows (each with its ``level``); ``topics_by_combo``
    maps a level-3 row's ``combo_id`` to its combination's KC -> topic mapping."""
    topics_by_combo = topics_by_combo or {}
    reasons: list[str | None] = []
    for row in rows:
        level = int(row["level"])
        concept_topics = None
        if level == 3:
            combo_id = row.get("combo_id")
            if combo_id not in topics_by_combo:
                raise ValueError(f"question {row.get('question_id')!r}: no concept topics for combination {combo_id!r}")
            concept_topics = topics_by_combo[combo_id]
        reasons.append(check_question(row, level, settings, concept_topics))
    return reasons
