"""Level 3: questions on a concept combination from a graph walk, grounded in two reference documents."""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from synthllm.concepts import normalise_concept
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, fetch_rows, fetch_source, inputs_path, read_plan
from synthllm.resources import read_sql
from synthllm.runs import Failure
from synthllm.settings import Settings
from synthllm.stages.base import LLMStage, Lookup, PlanState, Provenance, ShardInputs
from synthllm.stages.common import excerpt, make_request, no_questions, question_rows, request_seed
from synthllm.store import Store

_TOPIC_SUFFIX = re.compile(r"\s*\(topic:[^)]*\)\s*$")
# Reference documents held at once while preparing level-3 shards (heads of doc_chars characters:
# about 300 MB at the default 3,000); more pending shards take more passes over the documents.
REFERENCES_PER_PASS = 100_000


def concept_lines(kcs: list[str], kc_topics: list[str | None], names: dict[str, str]) -> str:
    """One line per key concept with its topic, so "from different topics" is something the model can obey."""
    return "\n".join(f"- {names.get(kc, kc)} (topic: {names.get(topic, topic) if topic else 'unknown'})"
                     for kc, topic in zip(kcs, kc_topics, strict=True))


def concept_names(store: Store, concept_ids: list[str]) -> pl.DataFrame:
    """(concept_id, name): the first surface form, as written in the documents, else the canonical name."""
    concepts = fetch_rows(store, "concepts", "concept_id", concept_ids, "concept_id, name, surface_forms")
    return pl.DataFrame({"concept_id": concepts["concept_id"].to_list(),
                         "name": [forms[0] if forms else name for _, name, forms in concepts.iter_rows()]},
                        schema={"concept_id": pl.String, "name": pl.String})


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

    def prepare(self, store: Store, settings: Settings, shard_ids: list[str]) -> None:
        """The head of each reference document and the names of the concepts, written beside
        each new plan: a shard's combinations cite documents and concepts from the whole corpus,
        so reading them per shard would open every documents shard and scan the concepts table.
        Planning reads both once per batch of shards instead."""
        todo = [s for s in shard_ids if not store.exists(inputs_path(store, self.name, s, "names"))]
        while todo:
            batch, refs, concepts, held = [], {}, {}, 0
            while todo and held < REFERENCES_PER_PASS:
                plan = read_plan(store, self.name, todo.pop(0))
                combos = fetch_source(store, self, plan, "ref_doc_ids, topics, kcs").to_dicts()
                refs[plan.shard_id] = sorted({d for c in combos for d in c["ref_doc_ids"]})
                concepts[plan.shard_id] = sorted({k for c in combos for k in c["topics"] + c["kcs"]})
                held += len(refs[plan.shard_id])
                batch.append(plan)
            shards = sorted({s for plan in batch for s in plan.shards_of("documents") or ()}) or None
            heads = fetch_rows(store, "documents", "doc_id", sorted({d for ids in refs.values() for d in ids}),
                               "doc_id, text", shards)
            heads = heads.with_columns(pl.col("text").str.slice(0, settings.generation.doc_chars))
            names = concept_names(store, sorted({k for ids in concepts.values() for k in ids}))
            for plan in batch:  # names last: their file marks the shard prepared
                store.write_parquet(inputs_path(store, self.name, plan.shard_id, "references"),
                                    heads.filter(pl.col("doc_id").is_in(refs[plan.shard_id])).to_arrow())
                store.write_parquet(inputs_path(store, self.name, plan.shard_id, "names"),
                                    names.filter(pl.col("concept_id").is_in(concepts[plan.shard_id])).to_arrow())

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        combos = fetch_source(store, self, plan).to_dicts()
        self.prepare(store, settings, [plan.shard_id])  # a plan written before inputs were prepared
        texts, names = (dict(pl.from_arrow(store.read_parquet_files([
            inputs_path(store, self.name, plan.shard_id, part)])).iter_rows()) for part in ("references", "names"))
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
