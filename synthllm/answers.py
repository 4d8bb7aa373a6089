"""Verified answers: final-answer extraction, equivalence and the self-consistency vote.

A question gets k sampled solutions. Each sample's final answer is extracted (``\\boxed{}``,
"the answer is X", a closing "= X", else the last number) and reduced to a comparable form
(LaTeX spacing, ``\\dfrac``, thousands separators and units removed; numbers as exact
fractions). Samples are clustered by equivalence and the largest cluster wins:
confidence = agreeing samples / samples asked, so truncated or empty samples count against it.

Equivalence is cheap first: equal comparable forms, or equal numbers, decide most questions
without sympy. Only when a question's cheap forms differ and one of them is not a plain number
does math-verify (sympy) compare them, in worker processes with a hard time limit: math-verify
can hang on some inputs, so a stuck worker is killed and replaced, and the comparison counts
as "not equal" and is recorded (``Vote.timeouts``, rejection ``verify_timeout``).
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from typing import Any, Callable

from pebble import ProcessExpired, ProcessPool

from synthllm.settings import AnswerSettings

NO_OUTPUT = "no_output"  # the engine returned no sample at all
TRUNCATED = "truncated"  # no complete sample had a final answer; some were cut by max_tokens
NO_FINAL_ANSWER = "no_final_answer"  # complete samples, none with a final answer
LOW_CONFIDENCE = "low_confidence"  # below ``answer.min_agreement``
VERIFY_TIMEOUT = "verify_timeout"  # below it, and a comparison timed out (the vote may be undercounted)
REJECTIONS = (NO_OUTPUT, TRUNCATED, NO_FINAL_ANSWER, LOW_CONFIDENCE, VERIFY_TIMEOUT)

# Relative tolerance of the numeric comparison (0.333333 and 1/3 agree, 0.33 and 1/3 do not).
NUMERIC_TOLERANCE = 1e-6
# An "= X" closing line gives an answer only when X is this short; longer is a derivation.
_MAX_CLOSING_CHARS = 40
# Extra seconds a worker gets beyond its comparisons' limits before it is killed.
_KILL_GRACE_S = 2.0

Sample = tuple[str, str | None]  # (text, finish_reason)

# --------------------------------------------------------------------------- extraction
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|was|:|=)\s*[:=]?\s*(.*)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")
_SENTENCE_END = re.compile(r"[.!](?=\s|$)|\s+(?:because|since|which|as|so|for|where)\b")
# A stated "answer" longer than this, or of more words without a digit or LaTeX, is a sentence
# about the answer ("the answer: first we add ..."), not the answer.
_MAX_STATED_CHARS = 60
_MAX_STATED_WORDS = 3
_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at ``text[start - 1]``; None when unclosed."""
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start:j]
    return None


def _last_boxed(text: str) -> str | None:
    for match in reversed(list(_BOXED.finditer(text))):
        content = _braced(text, match.end())
        if content is not None and content.strip():
            return content.strip()
    return None


def _strip_math(text: str) -> str:
    """``$x$``, ``\\(x\\)``, ``**x**`` -> ``x``; a leading math span wins over what follows it."""
    text = text.strip().strip("*").strip()
    for opening, closing in _MATH_SPANS:
        if text.startswith(opening):
            end = text.find(closing, len(opening))
            if end > 0:
                return text[len(opening):end].strip()
    return text


def _stated(rest: str) -> str | None:
    """The X of "the answer is X": its math span, or its words up to the sentence's end or a
    "because"; None when that reads as a sentence rather than an answer."""
    rest = _strip_math(rest)
    if not rest.startswith(("\\", "{")):
        end = _SENTENCE_END.search(rest)
        rest = rest[: end.start()] if end else rest
    rest = rest.strip().rstrip(".").strip()
    if not rest or len(rest) > _MAX_STATED_CHARS:
        return None
    mathematical = any(ch.isdigit() or ch == "\\" for ch in rest)
    return rest if mathematical or len(rest.split()) <= _MAX_STATED_WORDS else None


def _closing_value(text: str) -> str | None:
    """X of a last line "... = X" (short X only)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or "=" not in lines[-1]:
        return None
    value = _strip_math(lines[-1].rsplit("=", 1)[1].strip().rstrip(".").strip())
    value = value.rstrip("$").removesuffix("\\]").removesuffix("\\)").strip().rstrip(".")
    return value if value and len(value) <= _MAX_CLOSING_CHARS else None


def extract_final_answer(text: str) -> str | None:
    """The final answer as written (units kept): the last ``\\boxed{}``/``\\fbox{}`` (nested
    braces allowed), else the last "the (final) answer is X", else a closing "= X", else the
    last number (decimals and thousands separators kept whole)."""
    if not text or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        stated = _stated(match.group(1))
        if stated:
            return stated
    closing = _closing_value(text)
    if closing:
        return closing
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


# --------------------------------------------------------------------------- normalisation
_LATEX_NOISE = re.compile(r"\\(?:left|right|displaystyle)\b|\\[!,;:\s]|~")
_FRAC_ALIASES = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
_PERCENT = re.compile(r"\\?%")
_TEXT_COMMAND = re.compile(r"\\(?:text|textrm|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)$")
_NUMERIC = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_NUMBER_THEN_UNIT = re.compile(
    rf"^(?P<number>{_NUMERIC}|-?\\frac\{{-?\d+\}}\{{-?\d+\}}|-?\d+/\d+)"
    r"(?P<space>\s*)(?P<unit>[A-Za-zµ]+(?:\^?\{?[23]\}?|[²³])?(?:\s*/\s*[A-Za-z]+(?:\^?\{?[23]\}?|[²³])?)?"
    r"(?:\s+[A-Za-z]+)*)$"
)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRACTION_FORMS = (
    re.compile(r"(?P<sign>-?)\\frac\{(?P<num>-?\d+(?:\.\d+)?)\}\{(?P<den>-?\d+(?:\.\d+)?)\}"),
    re.compile(r"(?P<sign>-?)\\frac(?P<num>\d)(?P<den>\d)"),
    re.compile(r"(?P<sign>)(?P<num>-?\d+(?:\.\d+)?)/(?P<den>-?\d+(?:\.\d+)?)"),
)
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_SCIENTIFIC = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+")  # "1e3", "6.02E-23": a number, not 1 "e3"


@dataclass(frozen=True)
class FinalAnswer:
    """One sample's final answer: as written, as math-verify reads it, and as voting compares it."""

    display: str  # as extracted, units kept ("12 cm")
    math: str  # LaTeX for math-verify: wrappers, units and "x =" removed ("12")
    key: str  # comparable form: no spaces, canonical number ("12", "0.5", "1/3")
    value: Fraction | None  # exact value when the answer is a plain number


def _number(text: str) -> Fraction | None:
    """The exact value of a plain number: "3", "-2.5", "1/2", "\\frac{1}{2}", "\\frac12"."""
    if _DECIMAL.fullmatch(text) or _SCIENTIFIC.fullmatch(text):
        return Fraction(text)
    for form in _FRACTION_FORMS:
        match = form.fullmatch(text)
        if match:
            den = Fraction(match["den"])
            if den == 0:
                return None
            value = Fraction(match["num"]) / den
            return -value if match["sign"] else value
    return None


def _number_key(value: Fraction) -> str:
    """Finite decimals as decimals ("0.5", "12"), other rationals as "p/q" ("1/3")."""
    numerator, den = value.numerator, value.denominator
    if den == 1:
        return str(numerator)
    twos = fives = 0
    rest = den
    while rest % 2 == 0:
        rest //= 2
        twos += 1
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest != 1:
        return f"{numerator}/{den}"
    places = max(twos, fives)  # value = numerator * (10^places / den) / 10^places, exactly
    digits = str(abs(numerator) * 10**places // den).rjust(places + 1, "0")
    whole, fraction = digits[:-places], digits[-places:].rstrip("0")
    return ("-" if numerator < 0 else "") + whole + ("." + fraction if fraction else "")


@lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str) -> FinalAnswer:
    """The comparable forms of one extracted final answer (see :class:`FinalAnswer`). Cached: a
    question's samples mostly agree, so the same final answers come again and again."""
    math = _strip_math(answer)
    math = _LATEX_NOISE.sub(" ", math)
    math = _FRAC_ALIASES.sub(r"\\frac", math)
    math = _DEGREES.sub("", math)
    math = _PERCENT.sub("", math)
    math = math.replace("\\$", "").lstrip("$").strip()
    math = _TEXT_COMMAND.sub(lambda m: f" {m.group(1).strip()}", math).strip()
    assignment = _ASSIGNMENT.match(math)
    if assignment:
        math = assignment.group(1).strip()
    with_unit = None if _SCIENTIFIC.fullmatch(math) else _NUMBER_THEN_UNIT.match(math)
    if with_unit and (with_unit["space"] or len(with_unit["unit"]) > 1):
        math = with_unit["number"]
    math = math.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(math):
        math = math.replace(",", "")
    compact = re.sub(r"\s+", "", math)
    value = _number(compact)
    if value is not None:
        key = _number_key(value)
    else:
        key = compact if "\\" in compact else compact.casefold()
    return FinalAnswer(display=answer.strip(), math=math, key=key, value=value)


def _numbers_agree(a: Fraction, b: Fraction) -> bool:
    return a == b or abs(a - b) <= NUMERIC_TOLERANCE * max(1, abs(a), abs(b))


# --------------------------------------------------------------------------- math-verify workers
class _Deadline(BaseException):
    """Raised by SIGALRM inside a worker; a BaseException so math-verify's handlers let it through."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Deadline


_TIMED_OUT = object()


def _within(timeout_s: float, call: Callable[[], Any]) -> Any:
    """``call()``, or ``_TIMED_OUT`` when it runs past ``timeout_s`` (needs the SIGALRM handler)."""
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return call()
    except _Deadline:
        return _TIMED_OUT
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def math_verify_pairs(forms: Sequence[str], pairs: Sequence[tuple[int, int]], timeout_s: float) -> list[bool | None]:
    """Per pair: math-verify's verdict, ``None`` when parsing or comparing ran past ``timeout_s``
    (worker process only: it uses SIGALRM). The earlier form is the gold side (math-verify is not
    symmetric). Each form is parsed once; a form whose parse or comparison timed out is not
    tried again (its later pairs are ``None`` at once): one hanging answer costs one time limit."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeout is off
    config = (LatexExtractionConfig(), ExprExtractionConfig())
    parsed: dict[int, Any] = {}
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    verdicts: list[bool | None] = []
    try:
        for a, b in pairs:
            for index in (a, b):
                if index not in parsed:
                    parsed[index] = _within(timeout_s, lambda: parse(f"${forms[index]}$", config, parsing_timeout=None))
            gold, target = parsed[a], parsed[b]
            if gold is _TIMED_OUT or target is _TIMED_OUT:
                verdicts.append(None)
            elif not gold or not target:
                verdicts.append(False)  # nothing math-verify could read
            else:
                verdict = _within(timeout_s, lambda: verify(gold, target, timeout_seconds=None))
                if verdict is _TIMED_OUT:
                    parsed[a] = parsed[b] = _TIMED_OUT  # either may be the one that hangs
                verdicts.append(None if verdict is _TIMED_OUT else bool(verdict))
    finally:
        signal.signal(signal.SIGALRM, previous)
    return verdicts


Comparer = Callable[[Sequence[str], Sequence[tuple[int, int]], float], list[bool | None]]


class EquivalencePool:
    """Worker processes that run math-verify with a hard time limit per question.

    Started on first use (most shards never need it) with the ``spawn`` start method, so it is
    safe inside threaded Prefect workers. A worker past its limit is killed and replaced by
    pebble; its comparisons count as timed out. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, workers: int, timeout_s: float, compare: Comparer = math_verify_pairs) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.compare = compare
        self.questions_sent = 0  # questions that needed math-verify (the rest were decided cheaply)
        self._pool: ProcessPool | None = None
        self._start_lock = threading.Lock()  # shard threads share one pool

    @classmethod
    def from_settings(cls, settings: AnswerSettings) -> "EquivalencePool":
        return cls(settings.verify_workers, settings.verify_timeout_s)

    def __enter__(self) -> "EquivalencePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def compare_many(self, jobs: Sequence[tuple[Sequence[str], Sequence[tuple[int, int]]]]) -> list[list[bool | None]]:
        """Verdicts per job (forms, pairs), all jobs in parallel; a killed job's pairs are ``None``."""
        if not jobs:
            return []
        with self._start_lock:
            if self._pool is None:
                self._pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("spawn"))
        futures = [
            self._pool.schedule(self.compare, args=(list(forms), list(pairs), self.timeout_s),
                                timeout=self.timeout_s * (len(pairs) + 1) + _KILL_GRACE_S)
            for forms, pairs in jobs
        ]
        self.questions_sent += len(jobs)
        verdicts: list[list[bool | None]] = []
        for future, (_, pairs) in zip(futures, jobs, strict=True):
            try:
                verdicts.append(future.result())
            except (FutureTimeout, ProcessExpired):  # killed past its limit, or died
                verdicts.append([None] * len(pairs))
        return verdicts


# --------------------------------------------------------------------------- the vote
@dataclass(frozen=True)
class Vote:
    """The self-consistency verdict on one question's samples.

    ``index`` is the chosen sample (the first of the winning cluster; 0 when no sample has a
    final answer, None when there is no sample). ``rejection`` is None when the answer is
    accepted, else one of :data:`REJECTIONS`. ``timeouts`` counts comparisons that timed out.
    """

    index: int | None
    final_answer: str | None
    normalized_answer: str | None
    votes: int
    asked: int
    confidence: float
    rejection: str | None
    timeouts: int = 0

    def columns(self) -> dict[str, Any]:
        """The ``answers`` table columns this vote fills."""
        return {"final_answer": self.final_answer, "normalized_answer": self.normalized_answer,
                "votes": self.votes, "confidence": self.confidence, "rejection": self.rejection}


@dataclass
class _Ballot:
    """One question in flight: its answers grouped by comparable key, groups merged by equivalence."""

    samples: Sequence[Sample]
    asked: int
    groups: list[tuple[FinalAnswer, list[int]]]  # (representative, sample indices) in first-seen order
    parent: list[int]
    pairs: list[tuple[int, int]]
    timeouts: int = 0

    def root(self, group: int) -> int:
        while self.parent[group] != group:
            group = self.parent[group]
        return group

    def merge(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earlier group stays the representative


def _ballot(samples: Sequence[Sample], asked: int) -> _Ballot:
    """Cheap pass: exact comparable keys and numbers; lists the pairs left for math-verify."""
    by_key: dict[str, int] = {}
    groups: list[tuple[FinalAnswer, list[int]]] = []
    for i, (text, finish_reason) in enumerate(samples):
        if finish_reason == "length":
            continue  # a cut-off solution's last number is no answer; it still counts as asked
        final = extract_final_answer(text or "")
        if final is None:
            continue
        answer = normalize_answer(final)
        if answer.key in by_key:
            groups[by_key[answer.key]][1].append(i)
        else:
            by_key[answer.key] = len(groups)
            groups.append((answer, [i]))
    ballot = _Ballot(samples, max(asked, len(samples)), groups, list(range(len(groups))), [])
    for b in range(len(groups)):
        for a in range(b):
            va, vb = groups[a][0].value, groups[b][0].value
            if va is not None and vb is not None:
                if _numbers_agree(va, vb):
                    ballot.merge(a, b)
            else:
                ballot.pairs.append((a, b))
    return ballot


def _decide(ballot: _Ballot, min_agreement: float) -> Vote:
    if not ballot.samples:
        return Vote(None, None, None, 0, ballot.asked, 0.0, NO_OUTPUT)
    if not ballot.groups:
        truncated = any(reason == "length" for _, reason in ballot.samples)
        return Vote(0, None, None, 0, ballot.asked, 0.0, TRUNCATED if truncated else NO_FINAL_ANSWER)
    clusters: dict[int, list[int]] = {}
    for g, (_, members) in enumerate(ballot.groups):
        clusters.setdefault(ballot.root(g), []).extend(members)
    # Most votes wins; ties go to the cluster seen first (clusters are keyed by their first group).
    winner = max(clusters, key=lambda root: (len(clusters[root]), -root))
    answer = ballot.groups[winner][0]
    votes = len(clusters[winner])
    confidence = votes / ballot.asked
    rejection = None
    if confidence < min_agreement:
        rejection = VERIFY_TIMEOUT if ballot.timeouts else LOW_CONFIDENCE
    return Vote(min(clusters[winner]), answer.display, answer.key, votes, ballot.asked, confidence, rejection,
                ballot.timeouts)


def vote_batch(
    items: Sequence[tuple[Sequence[Sample], int]],
    settings: AnswerSettings,
    pool: EquivalencePool | None = None,
) -> list[Vote]:
    """Votes for many questions: ``items`` are (samples, samples asked) per question, samples
    being (text, finish_reason). Questions the cheap pass cannot decide go to ``pool`` together
    (one temporary pool from ``settings`` when None, started only if some question needs it)."""
    ballots = [_ballot(samples, asked) for samples, asked in items]
    undecided = [b for b in ballots if b.pairs]
    if undecided:
        own_pool = pool is None
        pool = pool or EquivalencePool.from_settings(settings)
        try:
            jobs = [([group[0].math for group in b.groups], b.pairs) for b in undecided]
            for ballot, verdicts in zip(undecided, pool.compare_many(jobs), strict=True):
                for (a, b), verdict in zip(ballot.pairs, verdicts, strict=True):
                    if verdict:
                        ballot.merge(a, b)
                    ballot.timeouts += verdict is None
        finally:
            if own_pool:
                pool.close()
    return [_decide(b, settings.min_agreement) for b in ballots]


def vote(samples: Sequence[Sample], asked: int, settings: AnswerSettings, pool: EquivalencePool | None = None) -> Vote:
    """The vote on one question's samples (see :func:`vote_batch`)."""
    return vote_batch([(samples, asked)], settings, pool)[0]
