"""Concept extraction: each document's topics and key concepts -> ``document_concepts``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from synthllm.concepts import concept_id, normalise_concept
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.runs import Failure
from synthllm.settings import Settings
from synthllm.stages.base import Provenance
from synthllm.stages.common import DocumentStage, excerpt, make_request, request_seed


@lru_cache(maxsize=1 << 17)
def _node_id(kind: str, surface: str) -> str | None:
    """The graph node of a topic or key concept as written, or None for junk: small models emit
    section numbers and dates as "concepts", and a concept has letters. Memoised: replies repeat
    the same names across a run."""
    name = normalise_concept(surface)
    return concept_id(kind, name) if any(ch.isalpha() for ch in name) else None


def concept_link_rows(doc_id: str, parsed: dict[str, Any], origin: Provenance) -> list[dict[str, Any]]:
    """One row per (document, topic) and per (document, topic, key concept); junk strings dropped."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None]] = set()
    base = {"doc_id": doc_id, "education_level": (parsed.get("education_level") or "").strip() or None,
            "subject": (parsed.get("subject") or "").strip() or None, "prompt_version": origin.prompt_version,
            "model": origin.model, "params_json": origin.params_json}
    for topic in parsed.get("topics", []):
        topic_key = _node_id("topic", topic.get("topic", ""))
        if topic_key is None:
            continue
        topic_surface = topic["topic"].strip()
        if (topic_key, None) not in seen:
            seen.add((topic_key, None))
            rows.append({**base, "topic_id": topic_key, "kc_id": None, "topic_surface": topic_surface,
                         "kc_surface": None})
        for surface in topic.get("key_concepts", []):
            kc_key = _node_id("kc", surface)
            if kc_key is None or (topic_key, kc_key) in seen:
                continue
            seen.add((topic_key, kc_key))
            rows.append({**base, "topic_id": topic_key, "kc_id": kc_key, "topic_surface": topic_surface,
                         "kc_surface": surface.strip()})
    return rows


class ConceptsStage(DocumentStage):
    name = "concepts"
    prompt_name = "extract_concepts"
    table = "document_concepts"
    item_column = "doc_id"
    serves_others = True  # levels 2 and 3 are built on concepts; level 1 alone needs none

    def options_key(self, settings: Settings) -> Any:
        gen = settings.generation
        return [gen.doc_chars, gen.max_topics, gen.max_concepts_per_topic, settings.filter.domain]

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        gen = settings.generation
        return make_request(
            self.prompt(), gen.sampling, request_seed(gen.sampling.seed, self.name, item["doc_id"]),
            limits={"topics": gen.max_topics, "key_concepts": gen.max_concepts_per_topic},
            domain=settings.filter.domain, document=excerpt(item["text"], gen.doc_chars),
            max_topics=gen.max_topics, max_concepts=gen.max_concepts_per_topic,
        )

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        links = concept_link_rows(item["doc_id"], result.parsed, origin)
        return links or Failure(self.name, item["doc_id"], "no_concepts", "reply held no usable topic", result.text)
