"""Helpers the LLM stages share: excerpts, per-item seeds, schema-bounded requests, question rows."""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from synthllm.concepts import normalise_concept
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, fetch_source
from synthllm.prompts import Prompt
from synthllm.runs import Failure, utcnow
from synthllm.settings import SamplingSettings, Settings
from synthllm.stages.base import LLMStage, PlanState, Provenance, ShardInputs, Stage
from synthllm.store import Store, stable_hash


def excerpt(text: str, max_chars: int) -> str:
    """The document's head, cut at a whitespace boundary: prompts stay within the context."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars] + " …"


def written_ids(store: Store, table: str, shard_id: str, column: str, where: pl.Expr | None = None) -> list[str]:
    """The ``column`` values of one shard just written (``where`` its rows): what a stage streams
    from an upstream shard, read from that file alone."""
    frame = store.read_table(table, [shard_id])
    if where is not None:
        frame = frame.filter(where)
    return frame.get_column(column).unique(maintain_order=True).to_list()


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


_BOUNDED_SCHEMAS: dict[tuple[str, tuple[tuple[str, int], ...]], dict[str, Any] | None] = {}


def bounded_schema(prompt: Prompt, limits: dict[str, int]) -> dict[str, Any] | None:
    """The prompt's schema with ``limits`` applied, built once per (prompt version, limits): every
    request of a stage then shares one schema object (and the client one validator). Read only."""
    key = (prompt.version, tuple(sorted(limits.items())))
    if key not in _BOUNDED_SCHEMAS:
        _BOUNDED_SCHEMAS[key] = limit_arrays(prompt.schema, limits)
    return _BOUNDED_SCHEMAS[key]


def make_request(prompt: Prompt, sampling: SamplingSettings, seed: int, n: int = 1,
                 limits: dict[str, int] | None = None, **values: Any) -> ChatRequest:
    return ChatRequest.of(
        prompt.render(**values),
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        n=n,
        seed=seed,
        json_schema=bounded_schema(prompt, limits or {}),
    )


def documents(store: Store, stage: Stage, plan: ShardPlan) -> list[dict[str, Any]]:
    """``doc_id`` and ``text`` of a document stage's shard, read from the plan's source shards."""
    return fetch_source(store, stage, plan, "doc_id, text").to_dicts()


class DocumentStage(LLMStage):
    """An LLM stage with one request per document of the run (concepts, level 1): its items are
    the run's documents and a shard's inputs are their texts."""

    item_key = "doc_id"
    source = ("documents", "doc_id")

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        return state.doc_ids

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        return ShardInputs(documents(store, self, plan))


def failure_from_result(stage: str, item_id: str, result: ChatResult, model: str) -> Failure:
    """An engine-level failure (invalid JSON, truncated, dead engine) with the raw output kept."""
    reason, _, detail = (result.error or "no_output").partition(":")
    return Failure(stage, item_id, reason.strip(), detail.strip(), result.text or None, model)


def no_questions(stage: str, item_id: str, text: str) -> Failure:
    return Failure(stage, item_id, "no_questions", "reply held no usable question", text)


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
