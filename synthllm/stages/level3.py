"""Level 3: questions on a concept combination from a graph walk, grounded in two reference documents."""

from __future__ import annotations

import re
from typing import Any

from synthllm.concepts import normalise_concept
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, fetch_rows, fetch_source
from synthllm.resources import read_sql
from synthllm.runs import Failure
from synthllm.settings import Settings
from synthllm.stages.base import LLMStage, Lookup, PlanState, Provenance, ShardInputs
from synthllm.stages.common import excerpt, make_request, no_questions, question_rows, request_seed
from synthllm.store import Store

_TOPIC_SUFFIX = re.compile(r"\s*\(topic:[^)]*\)\s*$")


def concept_lines(kcs: list[str], kc_topics: list[str | None], names: dict[str, str]) -> str:
    """One line per key concept with its topic, so "from different topics" is something the model can obey."""
    return "\n".join(f"- {names.get(kc, kc)} (topic: {names.get(topic, topic) if topic else 'unknown'})"
                     for kc, topic in zip(kcs, kc_topics, strict=True))


class Level3Stage(LLMStage):
    name = "level3"
    prompt_name = "level3_questions"
    table = "questions"
    item_key = "combo_id"
    source = ("concept_combinations", "combo_id")
    lookups = (Lookup("documents", "doc_id", via="ref_doc_ids"),)  # the reference documents
    item_column = "combo_id"
    row_filter = "level = 3"
    after = ("graph",)
    level = 3
    group_by = "combo"

    def enabled(self, settings: Settings) -> bool:
        return self.level in settings.generation.levels

    def options_key(self, settings: Settings) -> Any:
        return [settings.generation.doc_chars, settings.generation.l3_max_questions, settings.filter.domain]

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        if not state.graph:
            return []
        return store.query(read_sql("graph_combinations.sql"), [state.graph["graph_key"]])["combo_id"].to_list()

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        combos = fetch_source(store, self, plan).to_dicts()
        ref_ids = sorted({d for c in combos for d in c["ref_doc_ids"]})
        texts = dict(fetch_rows(store, "documents", "doc_id", ref_ids, "doc_id, text",
                                plan.shards_of("documents")).iter_rows())
        concept_ids = sorted({c for combo in combos for c in combo["topics"] + combo["kcs"]})
        concepts = fetch_rows(store, "concepts", "concept_id", concept_ids, "concept_id, name, surface_forms")
        names = {cid: (forms[0] if forms else name) for cid, name, forms in concepts.iter_rows()}
        items = []
        for combo in combos:
            kc_topics = combo.get("kc_topics") or [None] * len(combo["kcs"])
            items.append({**combo, "kc_topics": kc_topics, "names": names,
                          "references": [texts[d] for d in combo["ref_doc_ids"] if d in texts]})
        return ShardInputs(items)

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        gen = settings.generation
        half = gen.doc_chars // 2  # two references share the document budget
        refs = [excerpt(t, half) for t in item["references"]] + ["(none)"] * (2 - len(item["references"]))
        return make_request(
            self.prompt(), gen.sampling, request_seed(gen.sampling.seed, self.name, item["combo_id"]),
            domain=settings.filter.domain, reference_1=refs[0], reference_2=refs[1],
            concepts=concept_lines(item["kcs"], item["kc_topics"], item["names"]),
            max_questions=gen.l3_max_questions, limits={"questions": gen.l3_max_questions},
        )

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        names = item["names"]
        allowed = {normalise_concept(names.get(k, k.split(":", 1)[-1])): k for k in item["kcs"]}
        allowed |= {k.split(":", 1)[-1]: k for k in item["kcs"]}
        parsed = {**result.parsed, "questions": [
            {**q, "concepts": [_TOPIC_SUFFIX.sub("", c) for c in q.get("concepts", [])]}
            for q in result.parsed.get("questions", [])]}
        built = question_rows(3, item["combo_id"], parsed, origin, list(item["ref_doc_ids"]),
                              combo_id=item["combo_id"], allowed_concepts=allowed,
                              limit=settings.generation.l3_max_questions)
        return built or no_questions(self.name, item["combo_id"], result.text)
