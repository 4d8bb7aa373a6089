"""The optional LLM judge: a rubric score per question that passed the rules -> ``curation`` rows."""

from __future__ import annotations

from typing import Any

import polars as pl

from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, fetch_source
from synthllm.runs import Failure
from synthllm.settings import SamplingSettings, Settings
from synthllm.stages.base import LLMStage, PlanState, Provenance, ShardInputs, Stage
from synthllm.stages.common import make_request, request_seed, written_ids
from synthllm.stages.question_gate import GATE_CHECK, gate_row, verdicts_in_force
from synthllm.store import Store

JUDGE_CHECK = "llm_judge"


class LLMJudgeStage(LLMStage):
    name = JUDGE_CHECK
    prompt_name = "judge_question"
    table = "curation"
    item_key = "question_id"
    source = ("questions", "question_id")
    item_column = "question_id"
    row_filter = f"check_name = '{JUDGE_CHECK}'"
    after = (GATE_CHECK,)

    def enabled(self, settings: Settings) -> bool:
        return settings.gate.judge_enabled

    def sampling(self, settings: Settings) -> SamplingSettings:
        return settings.gate.judge_sampling

    def options_key(self, settings: Settings) -> Any:
        return [settings.gate.judge_threshold, settings.filter.domain]

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        gate_version = verdicts_in_force(settings, store).gate_version
        if gate_version is None:
            return store.query("SELECT question_id FROM questions", tables=["questions"])["question_id"].to_list()
        sql = (f"SELECT question_id FROM curation WHERE check_name = '{GATE_CHECK}' AND kept AND prompt_version = $1 "
               "ORDER BY question_id")
        return store.query(sql, [gate_version], tables=["curation"])["question_id"].to_list()

    def streamed_items(self, store: Store, settings: Settings, state: PlanState, upstream: Stage,
                       shard_id: str) -> list[str] | None:
        """The questions a gate shard kept (or, with no gate, a question shard's questions)."""
        if upstream.name == GATE_CHECK:
            return written_ids(store, "curation", shard_id, "question_id",
                               (pl.col("check_name") == GATE_CHECK) & pl.col("kept"))
        if upstream.level is not None and not settings.gate.enabled:
            return written_ids(store, "questions", shard_id, "question_id")
        return None

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        return ShardInputs(fetch_source(store, self, plan, "question_id, level, question").to_dicts())

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        sampling = self.sampling(settings)
        return make_request(self.prompt(), sampling, request_seed(sampling.seed, self.name, item["question_id"]),
                            domain=settings.filter.domain, question=item["question"])

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        score = float(result.parsed["score"])
        reason = None if score >= settings.gate.judge_threshold else "judge_below_threshold"
        return [gate_row(item["question_id"], JUDGE_CHECK, reason, origin, score=score)]
