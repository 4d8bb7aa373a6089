"""The reference rater (stage 1): the LLM rates a round's sample of documents -> ``document_scores``.

Rounds decide what is rated (``flows/filter_references.py`` draws each round's sample), so a
rating stage is made per round and its shards are planned by the filter flow, not by coverage.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from synthllm import filtering as F
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, plan_path
from synthllm.runs import Failure
from synthllm.settings import SamplingSettings, Settings
from synthllm.stages.base import LLMStage, PlanState, Provenance, ShardInputs
from synthllm.stages.common import make_request
from synthllm.store import Store


class RateStage(LLMStage):
    name = "rate"
    prompt_name = F.RATE_PROMPT
    table = "document_scores"
    item_key = "doc_id"
    item_column = "doc_id"
    row_filter = "llm_rating IS NOT NULL"
    flow = "filter"

    def __init__(self, round_index: int = 1) -> None:
        self.round_index = round_index

    def sampling(self, settings: Settings) -> SamplingSettings:
        return settings.filter.rater_sampling

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        return F.rating_sample(store, settings.filter, self.round_index)

    def plan(self, store: Store, settings: Settings, doc_ids: list[str]) -> str:
        """One rating shard of this round (the flow chunks the round's sample)."""
        label = f"{settings.engine.backend}:{settings.engine.model}"
        shard_id = F.rating_shard_id(self.round_index, doc_ids, settings.filter, label)
        path = plan_path(store, self.name, shard_id)
        if not store.exists(path):
            store.write_parquet(path, pa.table({"item_id": pa.array(list(doc_ids), pa.string())}))
        return shard_id

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        texts = F.document_texts(store, plan.item_ids, settings.filter.rater_chars)
        missing = [Failure(self.name, doc_id, "missing_document", "not in the documents table")
                   for doc_id in plan.item_ids if doc_id not in texts]
        return ShardInputs([{"doc_id": d, "text": t} for d, t in texts.items()], missing)

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        fs = settings.filter
        return make_request(self.prompt(), fs.rater_sampling, fs.rater_sampling.seed, domain=fs.domain,
                            document=item["text"][: fs.rater_chars])

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        rating = result.parsed
        if not isinstance(rating, dict):
            return Failure(self.name, item["doc_id"], "schema_mismatch", "the rating is not an object", result.text)
        return [{
            "doc_id": item["doc_id"], "round": self.round_index, "llm_rating": float(rating["rating"]),
            "relevance": float(rating["relevance"]), "clarity": float(rating["clarity"]),
            "language": float(rating["language"]), "classifier_score": None,
            "kept": rating["rating"] > settings.filter.threshold, "is_synthetic": False,
            "prompt_version": origin.prompt_version, "model": origin.model,
        }]
