"""Stage logic of question generation: build requests, turn validated replies into table rows.

Pure functions over plain rows (dicts); the Prefect tasks in ``tasks/generation.py`` read and
write the store around them. Every generated row carries its provenance: source ids, prompt
version, model and the sampling parameters of the request that produced it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from synthllm.concepts import concept_id, normalise_concept
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.prompts import Prompt, load_prompt
from synthllm.runs import Failure, utcnow
from synthllm.settings import EngineSettings, SamplingSettings, Settings
from synthllm.store import stable_hash

PROMPTS = {
    "concepts": "extract_concepts",
    "level1": "level1_questions",
    "level2": "level2_questions",
    "level3": "level3_questions",
    "answer": "answer_question",
}


def stage_engine(settings: Settings, stage: str) -> EngineSettings:
    """Answers may use their own model (``answer.engine``); every other stage the generation engine."""
    return settings.answer_engine if stage == "answer" else settings.engine


@dataclass(frozen=True)
class Provenance:
    """What produced a row: the prompt version, the model and the request's sampling params."""

    prompt_version: str
    model: str
    params_json: str


def excerpt(text: str, max_chars: int) -> str:
    """The document's head, cut at a whitespace boundary: prompts stay within the context."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars] + " …"


def request_seed(base_seed: int, stage: str, item_id: str) -> int:
    """A per-item seed: reruns send identical requests (cache hits), items still differ."""
    return int(stable_hash(base_seed, stage, item_id, length=8), 16)


def limit_arrays(schema: dict[str, Any] | None, limits: dict[str, int]) -> dict[str, Any] | None:
    """The schema with ``maxItems`` of the named array properties set from settings: the grammar,
    not only the instructions, bounds how much the model writes (small models loop otherwise)."""
    if schema is None or not limits:
        return schema

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            out = {key: visit(value) for key, value in node.items()}
            for name, bound in limits.items():
                prop = out.get("properties", {}).get(name)
                if isinstance(prop, dict) and prop.get("type") == "array":
                    prop["maxItems"] = bound
                    if prop.get("minItems", 0) > bound:
                        prop["minItems"] = bound
            return out
        if isinstance(node, list):
            return [visit(item) for item in node]
        return node

    return visit(schema)


def make_request(prompt: Prompt, sampling: SamplingSettings, seed: int, n: int = 1,
                 limits: dict[str, int] | None = None, **values: Any) -> ChatRequest:
    return ChatRequest.of(
        prompt.render(**values),
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        n=n,
        seed=seed,
        json_schema=limit_arrays(prompt.schema, limits or {}),
    )


def provenance(prompt: Prompt, model: str, request: ChatRequest) -> Provenance:
    params = {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens,
              "n": request.n, "seed": request.seed}
    return Provenance(prompt.version, model, json.dumps(params, sort_keys=True))


def failure_from_result(stage: str, item_id: str, result: ChatResult, model: str) -> Failure:
    """An engine-level failure (invalid JSON, truncated, dead engine) with the raw output kept."""
    reason, _, detail = (result.error or "no_output").partition(":")
    return Failure(stage, item_id, reason.strip(), detail.strip(), result.text or None, model)


# --------------------------------------------------------------------------- concepts
def concept_request(doc: dict[str, Any], settings: Settings) -> ChatRequest:
    gen = settings.generation
    return make_request(
        load_prompt(PROMPTS["concepts"]), gen.sampling, request_seed(gen.sampling.seed, "concepts", doc["doc_id"]),
        limits={"topics": gen.max_topics, "key_concepts": gen.max_concepts_per_topic},
        domain=settings.filter.domain, document=excerpt(doc["text"], gen.doc_chars),
        max_topics=gen.max_topics, max_concepts=gen.max_concepts_per_topic,
    )


def _usable_concept(name: str) -> bool:
    """Small models emit section numbers and dates as "concepts": a concept has letters."""
    return any(ch.isalpha() for ch in name)


def concept_link_rows(doc_id: str, parsed: dict[str, Any], origin: Provenance) -> list[dict[str, Any]]:
    """One row per (document, topic) and per (document, topic, key concept); junk strings dropped."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None]] = set()
    base = {"doc_id": doc_id, "education_level": (parsed.get("education_level") or "").strip() or None,
            "subject": (parsed.get("subject") or "").strip() or None, "prompt_version": origin.prompt_version,
            "model": origin.model, "params_json": origin.params_json}
    for topic in parsed.get("topics", []):
        topic_name = normalise_concept(topic.get("topic", ""))
        if not _usable_concept(topic_name):
            continue
        topic_key = concept_id("topic", topic_name)
        if (topic_key, None) not in seen:
            seen.add((topic_key, None))
            rows.append({**base, "topic_id": topic_key, "kc_id": None, "topic_surface": topic["topic"].strip(),
                         "kc_surface": None})
        for surface in topic.get("key_concepts", []):
            kc_name = normalise_concept(surface)
            if not _usable_concept(kc_name):
                continue
            kc_key = concept_id("kc", kc_name)
            if (topic_key, kc_key) in seen:
                continue
            seen.add((topic_key, kc_key))
            rows.append({**base, "topic_id": topic_key, "kc_id": kc_key, "topic_surface": topic["topic"].strip(),
                         "kc_surface": surface.strip()})
    return rows


# --------------------------------------------------------------------------- questions
def level1_request(doc: dict[str, Any], settings: Settings) -> ChatRequest:
    gen = settings.generation
    return make_request(
        load_prompt(PROMPTS["level1"]), gen.sampling, request_seed(gen.sampling.seed, "level1", doc["doc_id"]),
        limits={"questions": gen.l1_max_questions},
        domain=settings.filter.domain, document=excerpt(doc["text"], gen.doc_chars), max_questions=gen.l1_max_questions,
    )


def level2_request(doc: dict[str, Any], kc_surfaces: list[str], settings: Settings) -> ChatRequest:
    gen = settings.generation
    return make_request(
        load_prompt(PROMPTS["level2"]), gen.sampling, request_seed(gen.sampling.seed, "level2", doc["doc_id"]),
        domain=settings.filter.domain, document=excerpt(doc["text"], gen.doc_chars),
        concepts="\n".join(f"- {c}" for c in kc_surfaces), max_questions=gen.l2_max_questions,
        limits={"questions": gen.l2_max_questions},
    )


def level3_request(combo: dict[str, Any], reference_texts: list[str], names: dict[str, str], settings: Settings) -> ChatRequest:
    """``names`` maps concept ids to a readable surface form."""
    gen = settings.generation
    half = gen.doc_chars // 2  # two references share the document budget
    refs = [excerpt(t, half) for t in reference_texts] + ["(none)"] * (2 - len(reference_texts))
    return make_request(
        load_prompt(PROMPTS["level3"]), gen.sampling, request_seed(gen.sampling.seed, "level3", combo["combo_id"]),
        domain=settings.filter.domain, reference_1=refs[0], reference_2=refs[1],
        topics="; ".join(names.get(t, t) for t in combo["topics"]),
        concepts="; ".join(names.get(k, k) for k in combo["kcs"]), max_questions=gen.l3_max_questions,
        limits={"questions": gen.l3_max_questions},
    )


def _clean_question(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text).strip()


def question_rows(
    level: int,
    source_key: str,
    parsed: dict[str, Any],
    origin: Provenance,
    doc_ids: list[str],
    combo_id: str | None = None,
    allowed_concepts: dict[str, str] | None = None,
    limit: int = 5,
) -> list[dict[str, Any]]:
    """Questions of one reply. ``allowed_concepts`` maps normalised names to concept ids: the
    concepts a level-2/3 question reports are kept only when they are the prompt's own."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    now = utcnow()
    for item in parsed.get("questions", [])[:limit]:
        text = _clean_question(item.get("question", ""))
        key = text.casefold()
        if len(text) < 10 or key in seen:
            continue
        seen.add(key)
        concepts = None
        if allowed_concepts is not None:
            concepts = sorted({allowed_concepts[n] for n in map(normalise_concept, item.get("concepts", []))
                               if n in allowed_concepts})
        rows.append({
            "question_id": stable_hash(level, source_key, origin.prompt_version, origin.model, origin.params_json,
                                       len(rows)),
            "level": level,
            "question": text,
            "doc_ids": doc_ids,
            "combo_id": combo_id,
            "concepts": concepts,
            "is_original": (item.get("type") == "original") if level == 1 else None,
            "school_level": (item.get("school_level") or "").strip() or None if level == 1 else None,
            "prompt_version": origin.prompt_version,
            "model": origin.model,
            "params_json": origin.params_json,
            "created_at": now,
        })
    return rows


# --------------------------------------------------------------------------- answers
def answer_request(question: dict[str, Any], settings: Settings) -> ChatRequest:
    sampling = settings.answer.sampling
    k = settings.answer.self_consistency
    return make_request(
        load_prompt(PROMPTS["answer"]), sampling, request_seed(sampling.seed, "answer", question["question_id"]), n=k,
        domain=settings.filter.domain, question=question["question"],
    )


_BOXED = "\\boxed{"
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*\$?([^\n$]+?)\$?\s*(?:\.|$)", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_final_answer(text: str) -> str | None:
    """The last ``\\boxed{...}`` (nested braces allowed), else "the answer is X", else the last number."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    stated = _ANSWER_IS.findall(text)
    if stated:
        return stated[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def canonical_answer(answer: str) -> str:
    """Comparable form for voting: no spaces, dollars, trailing dot or thousands commas."""
    text = answer.replace("$", "").replace("\\!", "").replace(" ", "").rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    return text.casefold()


def majority_vote(texts: list[str]) -> tuple[int, str | None, float]:
    """Index of the chosen sample, its final answer and the agreement (votes / samples).

    Samples without a final answer count in the denominator but never win."""
    finals = [extract_final_answer(t) for t in texts]
    votes = Counter(canonical_answer(f) for f in finals if f)
    if not votes:
        return 0, None, 0.0
    winner, count = votes.most_common(1)[0]
    index = next(i for i, f in enumerate(finals) if f and canonical_answer(f) == winner)
    return index, finals[index], count / len(texts)


def answer_row(question_id: str, result: ChatResult, origin: Provenance) -> dict[str, Any] | None:
    texts = [c.text for c in result.completions if c.finish_reason != "length" and c.text.strip()]
    if not texts:
        return None
    index, final, agreement = majority_vote(texts)
    return {
        "question_id": question_id,
        "answer": texts[index].strip(),
        "final_answer": final,
        "confidence": agreement,
        "n_samples": len(result.completions),
        "prompt_version": origin.prompt_version,
        "model": origin.model,
        "params_json": origin.params_json,
        "created_at": utcnow(),
    }
