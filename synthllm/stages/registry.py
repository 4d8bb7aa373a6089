"""Every stage, in one list: the flows walk it in dependency order.

Adding a stage is a prompt file, one module under ``synthllm/stages/`` and one line here
(``docs/stages.md`` walks through an example). ``registered`` adds one for a test or a notebook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from synthllm.settings import Settings
from synthllm.stages.answer import AnswerStage
from synthllm.stages.base import GRAPH_STEP, Stage
from synthllm.stages.concepts import ConceptsStage
from synthllm.stages.level1 import Level1Stage
from synthllm.stages.level2 import Level2Stage
from synthllm.stages.level3 import Level3Stage
from synthllm.stages.llm_judge import LLMJudgeStage
from synthllm.stages.question_gate import QuestionGateStage
from synthllm.stages.rate import RateStage


class GraphStep(Stage):
    """The concept graph, walks and grounding: one task over all concept links, not shards."""

    name = "graph"
    kind = GRAPH_STEP
    table = "concept_combinations"
    after = ("concepts",)
    serves_others = True


STAGES: list[Stage] = [
    ConceptsStage(),
    Level1Stage(),
    Level2Stage(),
    GraphStep(),
    Level3Stage(),
    QuestionGateStage(),
    LLMJudgeStage(),
    AnswerStage(),
    RateStage(),
]


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(stage_names())}")


def stage_names(flow: str | None = None) -> list[str]:
    return [s.name for s in STAGES if flow is None or s.flow == flow]


def question_levels() -> dict[int, Stage]:
    """Question stages by the level they write."""
    return {s.level: s for s in STAGES if s.level is not None}


def enabled_stages(settings: Settings, flow: str = "synthesize") -> list[Stage]:
    """Stages enabled by their own settings, plus the stages they run after that serve others."""
    stages = [s for s in STAGES if s.flow == flow]
    serving = {s.name for s in stages if s.serves_others}
    needed = {s.name for s in stages if not s.serves_others and s.enabled(settings)}
    grown = True
    while grown:
        wanted = {dep for s in stages if s.name in needed for dep in s.after if dep in serving}
        grown = not wanted <= needed
        needed |= wanted
    return [s for s in stages if s.name in needed and s.enabled(settings)]


def dependencies(settings: Settings, flow: str = "synthesize") -> dict[str, set[str]]:
    """The enabled stages each enabled stage waits for; a disabled one passes on its own
    dependencies (no gate: answers still wait for the questions)."""
    enabled = enabled_stages(settings, flow)
    names = {s.name for s in enabled}
    by_name = {s.name: s for s in STAGES}

    def waits_for(stage: Stage) -> set[str]:
        found: set[str] = set()
        for dep in stage.after:
            found |= {dep} if dep in names else waits_for(by_name[dep]) if dep in by_name else set()
        return found

    return {s.name: waits_for(s) for s in enabled}


def waves(settings: Settings, flow: str = "synthesize") -> list[list[Stage]]:
    """The flow's enabled stages in dependency order, grouped so each group's stages could run together."""
    deps = dependencies(settings, flow)
    done: set[str] = set()
    groups: list[list[Stage]] = []
    remaining = enabled_stages(settings, flow)
    while remaining:
        ready = [s for s in remaining if deps[s.name] <= done]
        if not ready:
            raise ValueError(f"stage dependencies form a cycle: {[s.name for s in remaining]}")
        groups.append(ready)
        done.update(s.name for s in ready)
        remaining = [s for s in remaining if s not in ready]
    return groups


@contextmanager
def registered(extra: Stage, before: str | None = None) -> Iterator[Stage]:
    """Register ``extra`` for the duration of the block (tests, notebooks)."""
    index = STAGES.index(stage(before)) if before else len(STAGES)
    STAGES.insert(index, extra)
    try:
        yield extra
    finally:
        STAGES.remove(extra)
