"""When each stage of a run is planned, so the engines never drain at a stage boundary.

A stage is planned in full (its *sweep*: every candidate not covered) once every stage it waits
for has finished. Before that, each shard a stage it waits for writes is offered to it
(``Stage.streamed_items``): the items that shard made ready are planned and run at once, while
the rest of the upstream stage is still running. Answers start with the first gated question
shard, level 2 with the first concepts shard. The sweep then plans only what streaming did not
(items of shards written by an earlier run, or of stages that do not stream).

This module is the bookkeeping only (no Prefect): the synthesize flow submits what it says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synthllm.settings import Settings
from synthllm.stages.base import Stage
from synthllm.stages.registry import dependencies, enabled_stages


@dataclass
class StagePlanning:
    """One stage in one run: what it waits for, what was planned, how many shards are out."""

    stage: Stage
    waits_for: set[str]
    planned: set[str] = field(default_factory=set)  # items planned by streaming in this run
    covered: set[str] | None = None  # coverage when streaming began; this run holds the stage's lease
    running: int = 0  # shards submitted and not finished
    swept: bool = False
    done: bool = False


class Schedule:
    """The run's stages in registry order, and which may be planned now."""

    def __init__(self, settings: Settings, flow: str = "synthesize") -> None:
        waits = dependencies(settings, flow)
        self.stages = {s.name: StagePlanning(s, waits[s.name]) for s in enabled_stages(settings, flow)}

    def sweepable(self) -> list[StagePlanning]:
        """Stages not planned in full yet whose every dependency has finished."""
        return [p for p in self.stages.values()
                if not p.swept and all(self.stages[w].done for w in p.waits_for)]

    def streaming_from(self, upstream: str) -> list[StagePlanning]:
        """Stages waiting for ``upstream`` that may still plan items from its shards."""
        return [p for p in self.stages.values() if not p.swept and upstream in p.waits_for]

    def submitted(self, name: str, shards: int, swept: bool = False) -> None:
        planning = self.stages[name]
        planning.running += shards
        planning.swept = planning.swept or swept

    def finished(self, name: str) -> None:
        self.stages[name].running -= 1

    def settle(self) -> list[str]:
        """Mark finished the stages planned in full with no shard out; their names, newly finished."""
        finished = [p.stage.name for p in self.stages.values() if p.swept and not p.done and p.running == 0]
        for name in finished:
            self.stages[name].done = True
        return finished

    @property
    def complete(self) -> bool:
        return all(p.done for p in self.stages.values())
