"""Level 2: questions on one document that combine at least two of its key concepts."""

from __future__ import annotations

from typing import Any

import polars as pl

from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, fetch_rows
from synthllm.resources import read_sql
from synthllm.runs import Failure
from synthllm.settings import Settings
from synthllm.stages.base import LLMStage, Lookup, PlanState, Provenance, ShardInputs, Stage
from synthllm.stages.common import documents, excerpt, make_request, no_questions, question_rows, request_seed
from synthllm.store import Store


class Level2Stage(LLMStage):
    name = "level2"
    prompt_name = "level2_questions"
    table = "questions"
    item_key = "doc_id"
    source = ("documents", "doc_id")
    lookups = (Lookup("document_concepts", "doc_id"),)
    item_column = "doc_ids[1]"
    row_filter = "level = 2"
    after = ("concepts",)
    level = 2
    group_by = "doc"

    def enabled(self, settings: Settings) -> bool:
        return self.level in settings.generation.levels

    def options_key(self, settings: Settings) -> Any:
        return [settings.generation.doc_chars, settings.generation.l2_max_questions, settings.filter.domain]

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        ready = set(store.query(read_sql("documents_with_concepts.sql"))["doc_id"].to_list())
        return [d for d in state.doc_ids if d in ready]

    def streamed_items(self, store: Store, settings: Settings, state: PlanState, upstream: Stage,
                       shard_id: str) -> list[str] | None:
        """The run's documents of a concepts shard with two key concepts or more (a document's
        concept links are all in one shard)."""
        if upstream.name != "concepts":
            return None
        links = store.read_table("document_concepts", [shard_id], columns=["doc_id", "kc_id"]).drop_nulls("kc_id")
        counts = links.group_by("doc_id", maintain_order=True).agg(pl.col("kc_id").n_unique().alias("kcs"))
        return [d for d in counts.filter(pl.col("kcs") >= 2).get_column("doc_id").to_list() if state.has_document(d)]

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        links = fetch_rows(store, "document_concepts", "doc_id", plan.item_ids, "doc_id, kc_id, kc_surface",
                           plan.shards_of("document_concepts"))
        concepts: dict[str, dict[str, str]] = {}
        for doc_id, kc_id, surface in links.drop_nulls("kc_id").iter_rows():
            concepts.setdefault(doc_id, {}).setdefault(kc_id, surface)
        items, failures = [], []
        for doc in documents(store, self, plan):
            known = concepts.get(doc["doc_id"], {})
            if len(known) >= 2:
                items.append({**doc, "concepts": known})
            else:
                failures.append(Failure(self.name, doc["doc_id"], "too_few_concepts",
                                        f"{len(known)} key concepts; level 2 needs 2"))
        return ShardInputs(items, failures)

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        gen = settings.generation
        return make_request(
            self.prompt(), gen.sampling, request_seed(gen.sampling.seed, self.name, item["doc_id"]),
            domain=settings.filter.domain, document=excerpt(item["text"], gen.doc_chars),
            concepts="\n".join(f"- {c}" for c in item["concepts"].values()), max_questions=gen.l2_max_questions,
            limits={"questions": gen.l2_max_questions},
        )

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        # a kc id is "kc:<normalised name>" (concept_id): no need to normalise the surfaces again
        allowed = {k.split(":", 1)[-1]: k for k in item["concepts"]}
        built = question_rows(2, item["doc_id"], result.parsed, origin, [item["doc_id"]],
                              allowed_concepts=allowed, limit=settings.generation.l2_max_questions)
        return built or no_questions(self.name, item["doc_id"], result.text)
