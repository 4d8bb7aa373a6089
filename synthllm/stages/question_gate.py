"""The question gate: rule checks on every question -> one ``curation`` row each (kept, reason).

Runs before answers, so junk questions ("Question 1", cut-off text, "according to the passage")
cost no answer request, and the dataset card can count every reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from synthllm.plans import ShardPlan, fetch_rows, fetch_source
from synthllm.question_checks import RULES_VERSION, check_questions, verdict_version
from synthllm.runs import Failure
from synthllm.settings import Settings
from synthllm.stages.base import PlanState, Provenance, RuleStage, ShardInputs, Stage
from synthllm.stages.common import written_ids
from synthllm.store import Store

GATE_CHECK = "question_gate"


def gate_row(question_id: str, check_name: str, reason: str | None, origin: Provenance,
             score: float | None = None) -> dict[str, Any]:
    return {"question_id": question_id, "check_name": check_name, "kept": reason is None, "matched_id": None,
            "score": score, "detail": reason, "prompt_version": origin.prompt_version, "model": origin.model}


class Verdicts(NamedTuple):
    """The gate verdicts that count downstream (judge, answers, dedup, export, funnel, card), as
    SQL parameters: the rule gate's version in force; the judge's threshold in force (its stored
    scores are held against it, so a new threshold needs no new request), and the judge in force
    (its prompt version and model: a new judge scores every question again, and the scores of
    another judge count for nothing). None where that check is off: then none of its verdicts count."""

    gate_version: str | None
    judge_threshold: float | None
    judge_version: str | None
    judge_model: str | None


def verdicts_in_force(settings: Settings, store: Store) -> Verdicts:
    from synthllm.stages.llm_judge import LLMJudgeStage  # the judge's module builds on the gate's

    gate = settings.gate
    gate_version = QuestionGateStage().version(settings) if gate.enabled else None
    if not gate.judge_enabled:
        return Verdicts(gate_version, None, None, None)
    judge = LLMJudgeStage()
    return Verdicts(gate_version, gate.judge_threshold, judge.version(settings), judge.model(store, settings))


class QuestionGateStage(RuleStage):
    name = GATE_CHECK
    rules_version = RULES_VERSION
    table = "curation"
    item_key = "question_id"
    source = ("questions", "question_id")
    item_column = "question_id"
    row_filter = f"check_name = '{GATE_CHECK}'"
    after = ("level1", "level2", "level3")

    def enabled(self, settings: Settings) -> bool:
        return settings.gate.enabled

    def version(self, settings: Settings) -> str:
        """The rules and the gate settings in force (``question_checks.verdict_version``)."""
        return verdict_version(settings.gate, self.rules_version)

    def shard_size(self, settings: Settings) -> int:
        return settings.gate.shard_size

    def plan_key(self, settings: Settings) -> dict[str, Any]:
        return {"version": self.version(settings), "gate": settings.gate.model_dump(mode="json")}

    def candidates(self, store: Store, settings: Settings, state: PlanState) -> list[str]:
        return store.query("SELECT question_id FROM questions ORDER BY level, question_id",
                           tables=["questions"])["question_id"].to_list()

    def streamed_items(self, store: Store, settings: Settings, state: PlanState, upstream: Stage,
                       shard_id: str) -> list[str] | None:
        """A question shard's questions, gated as soon as it is written."""
        return written_ids(store, "questions", shard_id, "question_id") if upstream.level is not None else None

    def load(self, store: Store, settings: Settings, plan: ShardPlan) -> ShardInputs:
        questions = fetch_source(store, self, plan, "question_id, level, question, concepts, combo_id").to_dicts()
        combo_ids = sorted({q["combo_id"] for q in questions if q["combo_id"]})
        topics: dict[str, dict[str, str]] = dict.fromkeys(combo_ids, {})
        if combo_ids:
            combos = fetch_rows(store, "concept_combinations", "combo_id", combo_ids, "combo_id, kcs, kc_topics")
            for combo_id, kcs, kc_topics in combos.iter_rows():
                topics[combo_id] = {kc: t for kc, t in zip(kcs, kc_topics or [], strict=False) if t}
        return ShardInputs(questions, context={"topics_by_combo": topics})

    def process(self, settings: Settings, inputs: ShardInputs, origin: Provenance
                ) -> tuple[list[dict[str, Any]], list[Failure]]:
        reasons = check_questions(inputs.items, settings.gate, inputs.context["topics_by_combo"])
        return [gate_row(q["question_id"], GATE_CHECK, reason, origin)
                for q, reason in zip(inputs.items, reasons, strict=True)], []
