"""Answers: k samples per question that passed the gate, a verified self-consistency vote."""

from __future__ import annotations

import atexit
import threading
from typing import Any

import polars as pl

from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.plans import ShardPlan, fetch_source
from synthllm.resources import read_sql
from synthllm.answers import EquivalencePool, vote_batch
from synthllm.runs import Failure, utcnow
from synthllm.settings import AnswerSettings, EngineSettings, SamplingSettings, Settings
from synthllm.stages.base import LLMStage, PlanState, Provenance, ShardInputs, Stage
from synthllm.stages.common import make_request, request_seed, written_ids
from synthllm.stages.question_gate import verdicts_in_force
from synthllm.store import Store


class AnswerStage(LLMStage):
    name = "answer"
    prompt_name = "answer_question"
    table = "answers"
    item_key = "question_id"
    source = ("questions", "question_id")
    item_column = "question_id"
    after = ("question_gate", "llm_judge")

    def engine(self, settings: Settings) -> EngineSettings:
        """Answers may use their own model (``answer.engine``)."""
        return settings.answer_engine

    def sampling(self, settings: Settings) -> SamplingSettings:
        return settings.answer.sampling

    def samples(self, settings: Settings) -> int:
        return settings.answer.self_consistency

    def options_key(self, settings: Settings) -> Any:
        return settings.filter.domain

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        return store.query(read_sql("answer_candidates.sql"), list(verdicts_in_force(settings, store)),
                           tables=["questions", "curation"])["question_id"].to_list()

    def streamed_items(self, store: Store, settings: Settings, state: PlanState, upstream: Stage,
                       shard_id: str) -> list[str] | None:
        """The questions the last gate kept in the shard it just wrote (the judge's when it runs,
        else the rules'); with no gate at all, answers wait for every question."""
        last_gate = "llm_judge" if settings.gate.judge_enabled else "question_gate" if settings.gate.enabled else None
        if upstream.name != last_gate:
            return None
        return written_ids(store, "curation", shard_id, "question_id",
                           (pl.col("check_name") == last_gate) & pl.col("kept"))

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        return ShardInputs(fetch_source(store, self, plan, "question_id, question").to_dicts())

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        sampling = self.sampling(settings)
        return make_request(
            self.prompt(), sampling, request_seed(sampling.seed, self.name, item["question_id"]),
            n=self.samples(settings), domain=settings.filter.domain, question=item["question"],
        )

    def shard_rows(self, settings: Settings, items: list[dict[str, Any]], results: list[ChatResult],
                   origins: list[Provenance]) -> list[list[dict[str, Any]] | Failure]:
        """One verified vote per question; the shard's undecided comparisons go to math-verify together."""
        asked = self.samples(settings)
        votes = vote_batch([([(c.text, c.finish_reason) for c in r.completions], asked) for r in results],
                           settings.answer, equivalence_pool(settings.answer))
        out: list[list[dict[str, Any]] | Failure] = []
        now = utcnow()
        for item, result, origin, verdict in zip(items, results, origins, votes, strict=True):
            if verdict.index is None:
                out.append(Failure(self.name, item["question_id"], "no_output", "no usable sample", result.text))
                continue
            out.append([{
                "question_id": item["question_id"], "answer": result.completions[verdict.index].text.strip(),
                **verdict.columns(), "n_samples": asked, "prompt_version": origin.prompt_version,
                "model": origin.model, "params_json": origin.params_json, "created_at": now,
            }])
        return out


_POOLS: dict[tuple[int, float], EquivalencePool] = {}
_POOLS_LOCK = threading.Lock()


def equivalence_pool(settings: AnswerSettings) -> EquivalencePool:
    """One math-verify worker pool per process (starting workers costs seconds), closed at exit."""
    key = (settings.verify_workers, float(settings.verify_timeout_s))
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = pool = EquivalencePool.from_settings(settings)
            atexit.register(pool.close)
        return _POOLS[key]
