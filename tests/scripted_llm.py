"""A scripted stand-in for an LLM that answers every SynthLLM prompt plausibly.

Replies are derived from the prompt text (deterministic, no randomness), so graph structure,
questions and answers vary with the documents. ``bad_documents`` get malformed JSON, to drive
the failure paths.
"""

from __future__ import annotations

import hashlib
import json
import re

from synthllm.engines.base import ChatRequest

WORD = re.compile(r"[A-Za-z]{5,}")
STOP = {"which", "their", "there", "these", "those", "about", "would", "could", "should", "where", "while",
        "after", "before", "other", "using", "document", "because"}


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _words(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in WORD.findall(text.lower()):
        if word not in STOP:
            seen.setdefault(word, None)
    return list(seen)


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0] if start in text else ""


class PipelineResponder:
    def __init__(self, bad_documents: tuple[str, ...] = ()) -> None:
        self.bad_documents = bad_documents

    def __call__(self, request: ChatRequest) -> str:
        user = request.messages[-1]["content"]
        properties = (request.json_schema or {}).get("properties", {})
        document = _between(user, "<document>", "</document>")
        if any(marker and marker in document for marker in self.bad_documents):
            return '{"questions": [{"question": "unterminated'
        if "topics" in properties:
            return self._concepts(document)
        if "suitable" in properties:
            return self._level1(document)
        if "questions" in properties:
            return self._combined(user)
        if "rating" in properties:
            score = 9 if re.search(r"\d\s*[+\-=x×]\s*\d|equation|solve", document, re.I) else 2
            return json.dumps({"relevance": score, "clarity": 7, "language": 7, "rating": score})
        return self._answer(user)

    @staticmethod
    def _concepts(document: str) -> str:
        words = _words(document)[:40] or ["general", "content"]
        topics = []
        for t in range(min(3, max(1, len(words) // 10))):
            kcs = [f"{words[(t * 7 + i) % len(words)]} {words[(t * 7 + i + 3) % len(words)]}" for i in range(6)]
            topics.append({"topic": f"{words[t % len(words)]} methods", "key_concepts": kcs})
        return json.dumps({"education_level": "high school", "subject": "algebra", "topics": topics})

    @staticmethod
    def _level1(document: str) -> str:
        words = _words(document)[:6]
        if len(words) < 3:
            return json.dumps({"suitable": False, "questions": []})
        questions = [{"question": f"If a {w} costs {_digest(w) % 50 + 2} dollars, what do 3 cost?",
                      "type": "new" if i % 2 else "original", "school_level": "middle school"}
                     for i, w in enumerate(words[:3])]
        return json.dumps({"suitable": True, "questions": questions})

    @staticmethod
    def _combined(user: str) -> str:
        if "each with its topic:" in user:
            return PipelineResponder._across_topics(user)
        instructions = user.rsplit("</document>", 1)[-1]
        listed = re.findall(r"^- (.+)$", instructions, re.M) or [c.strip() for c in
                                                         _between(user, "Key concepts:", "\n").split(";")]
        listed = [c for c in listed if c]
        questions = []
        for i in range(0, max(0, len(listed) - 1), 2)[:3]:
            pair = listed[i : i + 2]
            questions.append({"question": f"Combine {pair[0]} with {pair[1]} to compute {_digest(''.join(pair)) % 97}.",
                              "concepts": pair})
        return json.dumps({"questions": questions})

    @staticmethod
    def _across_topics(user: str) -> str:
        """Level 3: pairs of listed key concepts whose topics differ, as the prompt asks."""
        block = _between(user, "each with its topic:\n", "\n\n")
        listed = re.findall(r"^- (.+?) \(topic: (.+)\)$", block, re.M)
        pairs = [(a, b) for i, a in enumerate(listed) for b in listed[i + 1:] if a[1] != b[1]][:3]
        questions = [{"question": f"Combine {a[0]} with {b[0]} to compute {_digest(a[0] + b[0]) % 97}.",
                      "concepts": [a[0], b[0]]} for a, b in pairs]
        return json.dumps({"questions": questions})

    @staticmethod
    def _answer(question: str) -> str:
        return f"Work it out step by step.\nThe result is \\boxed{{{_digest(question) % 1000}}}"
