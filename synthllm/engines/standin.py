"""The ``standin`` backend: an instant, deterministic engine for benchmarks and dry runs.

Why: the coordinator, the store and the flows must be measured (and a config checked end to
end) without a model. ``engine.backend: standin`` answers every SynthLLM prompt at once with a
reply that passes the prompt's schema -- concepts, level 1/2/3 questions whose concepts are
copied from the prompt, judge scores and ratings -- or a boxed answer for free text. It is built
from settings like any backend, so Dask and Ray worker processes create their own. Replies are
derived from the prompt text (no randomness), so questions and the concept graph vary with the
documents. Never use it for a dataset: the text is filler.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import zlib
from typing import Any

from synthllm.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    OnResult,
    check_stop,
)
from synthllm.engines.scripted import CHARS_PER_TOKEN, estimate_tokens
from synthllm.settings import EngineSettings

_WORD = re.compile(r"[A-Za-z]{5,}")
_STOP = frozenset({"which", "their", "there", "these", "those", "about", "would", "could", "should", "where",
                   "while", "after", "before", "other", "using", "document", "because"})
_LISTED = re.compile(r"^- (.+)$", re.MULTILINE)
_LISTED_WITH_TOPIC = re.compile(r"^- (.+?) \(topic: (.+)\)$", re.MULTILINE)


def _digest(text: str) -> int:
    return zlib.crc32(text.encode())


def _words(text: str, limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOP:
            seen.setdefault(word, None)
            if len(seen) >= limit:
                break
    return list(seen)


def _between(text: str, start: str, end: str) -> str:
    _, found, tail = text.partition(start)
    return tail.split(end, 1)[0] if found else ""


def _max_items(schema: dict[str, Any], name: str, default: int) -> int:
    prop = schema.get("properties", {}).get(name, {})
    return int(prop.get("maxItems", default)) if isinstance(prop, dict) else default


def _concepts(document: str, schema: dict[str, Any]) -> dict[str, Any]:
    words = _words(document, 40) or ["general", "content"]
    topic_schema = schema["properties"]["topics"].get("items", {})
    max_topics = _max_items(schema, "topics", 3)
    max_kcs = _max_items(topic_schema, "key_concepts", 6)
    topics = []
    for t in range(min(max_topics, 3, max(1, len(words) // 10))):
        kcs = [f"{words[(t * 7 + i) % len(words)]} {words[(t * 7 + i + 3) % len(words)]}"
               for i in range(min(6, max_kcs))]
        topics.append({"topic": f"{words[t % len(words)]} methods", "key_concepts": kcs})
    return {"education_level": "high school", "subject": "algebra", "topics": topics}


def _level1(document: str) -> dict[str, Any]:
    words = _words(document, 6)
    if len(words) < 3:
        return {"suitable": False, "questions": []}
    return {"suitable": True, "questions": [
        {"question": f"If a {w} costs {_digest(w) % 50 + 2} dollars, what do 3 of them cost?",
         "type": "new" if i % 2 else "original", "school_level": "middle school"}
        for i, w in enumerate(words[:3])]}


def _combined(user: str, limit: int) -> dict[str, Any]:
    """Level 2 (concepts listed after the document) or level 3 (concepts with their topics)."""
    if "each with its topic:" in user:
        listed = _LISTED_WITH_TOPIC.findall(_between(user, "each with its topic:\n", "\n\n"))
        across = [(a[0], b[0]) for i, a in enumerate(listed) for b in listed[i + 1:] if a[1] != b[1]]
        pairs = across or [(a[0], b[0]) for a, b in zip(listed[::2], listed[1::2])]
    else:
        names = [c for c in _LISTED.findall(user.rsplit("</document>", 1)[-1]) if c]
        pairs = [(names[i], names[i + 1]) for i in range(0, max(0, len(names) - 1), 2)]
    return {"questions": [
        {"question": f"Combine {a} with {b} to compute {_digest(a + b) % 97}.", "concepts": [a, b]}
        for a, b in pairs[:limit]]}


def _scores(document: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Ratings and judge scores: every required integer field, high for mathematical text."""
    high = bool(re.search(r"\d\s*[+\-=x×]\s*\d|equation|solve", document, re.IGNORECASE))
    out: dict[str, Any] = {}
    for name in schema.get("required", list(schema.get("properties", {}))):
        prop = schema["properties"].get(name, {})
        low, top = prop.get("minimum", 1), prop.get("maximum", 10)
        if prop.get("type") == "integer" or prop.get("type") == "number":
            out[name] = max(low, min(top, 9 if high else 2))
        elif prop.get("type") == "boolean":
            out[name] = high
        elif "enum" in prop:
            out[name] = prop["enum"][0]
        else:
            out[name] = "standin"
    return out


def reply(request: ChatRequest) -> str:
    """The stand-in's reply text to one SynthLLM request."""
    user = request.messages[-1]["content"]
    schema = request.json_schema
    if schema is None:
        return f"Work it out step by step.\nThe result is \\boxed{{{_digest(user) % 1000}}}"
    properties = schema.get("properties", {})
    document = _between(user, "<document>", "</document>") or user
    if "topics" in properties:
        return json.dumps(_concepts(document, schema))
    if "suitable" in properties:
        return json.dumps(_level1(document))
    if "questions" in properties:
        return json.dumps(_combined(user, _max_items(schema, "questions", 3)))
    return json.dumps(_scores(document, schema))


class ReplyClock:
    """CPU seconds this process's stand-in engines spent writing replies: the work a real engine
    does on its GPU, which a benchmark subtracts to see the coordinator's own CPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds


REPLY_CPU = ReplyClock()


class StandInEngine:
    """:class:`~synthllm.engines.base.Engine` answering at once (``engine.backend: standin``)."""

    backend = "standin"

    def __init__(self, settings: EngineSettings) -> None:
        self.model_id = f"standin:{settings.model}"

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[ChatResult]:
        results = []
        for index, request in enumerate(requests):
            check_stop(f"standin batch of {len(requests)} requests ({index} answered)")
            started = time.thread_time()
            text = reply(request)
            prompt_chars = sum(len(m.get("content", "")) for m in request.messages)
            result = ChatResult(completions=[Completion(text, "stop") for _ in range(request.n)],
                                prompt_tokens=math.ceil(prompt_chars / CHARS_PER_TOKEN),
                                completion_tokens=request.n * estimate_tokens(text))
            REPLY_CPU.add(time.thread_time() - started)
            results.append(result)
            if on_result is not None:
                on_result(index, result)
        return results

    def close(self) -> None:
        """Nothing to release."""
