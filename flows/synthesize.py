"""The SynthLLM pipeline: documents -> concepts -> graph -> questions (3 levels) -> gate -> answers.

``synthesize_flow`` runs the stage registry (``synthllm.stages.registry``) in dependency order,
overlapping the stages: a shard a stage finishes is planned for the stages waiting for it at once
(``synthllm.stages.schedule``), and the task runner (threads, Dask or Ray) spreads them out.
``run_pipeline_flow`` is the whole job: ingest, reference filtering, synthesis, curation, export.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.tracking import UPDATE_EVERY_S, Tracker, tracked
from synthllm.lease import Lease
from synthllm.plans import (
    Planned,
    StageFiles,
    covered_items,
    plan_items,
    plan_stage,
    select_documents,
    upstream_locations,
)
from synthllm.progress import LIGHT_WEIGHT
from synthllm.runs import RunContext, open_run
from synthllm.settings import Settings, resolve_settings, settings_payload, settings_payload_text
from synthllm.stages.base import GRAPH_STEP, LLMStage, PlanState, Stage
from synthllm.stages.registry import enabled_stages, waves
from synthllm.stages.schedule import Schedule
from synthllm.store import Store
from tasks.common import open_task_runner, shard_task_options
from tasks.generation import generate_shard
from tasks.graph import build_concept_graph


class StageRunner:
    """Plans and submits every stage's shards as the schedule allows, and reports each shard as it finishes.

    A finished shard is offered at once to the stages waiting for its stage (streaming, see
    ``synthllm.stages.schedule``), so the next stage's shards queue up while this one drains.
    Shards go to the task runner the settings choose (threads, Dask or Ray), also when the flow
    runs from a deployment, whose flow object carries the default runner. A stage whose store
    lease was lost (``leases``) gets no more shards: the run fails with ``LeaseLost``."""

    def __init__(self, run: RunContext, task_runner, tracker: Tracker, state: PlanState,
                 leases: dict[str, Lease]) -> None:
        self.run, self.task_runner, self.tracker, self.state = run, task_runner, tracker, state
        self.leases = leases
        options = shard_task_options(run.store, run.settings, cached=False, uses_engine=True)
        self.task = generate_shard.with_options(**options)
        self.graph_task = build_concept_graph.with_options(**shard_task_options(run.store, run.settings))
        self.payload = settings_payload(run.settings)
        self.payload_text = settings_payload_text(run.settings)
        self.schedule = Schedule(run.settings)
        self.summaries: list[dict[str, Any]] = []
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.out: dict[Any, tuple[str, str]] = {}  # future -> (stage, shard id)
        self.files: dict[str, StageFiles] = {}  # stage -> its plans and outputs, listed at its first planning

    def run_all(self) -> None:
        while True:
            self._plan_ready()
            if self.schedule.complete:
                return
            future = self._next_finished()
            name, shard_id = self.out.pop(future)
            result = future.result()
            self.schedule.finished(name)
            if self.schedule.stages[name].stage.kind == GRAPH_STEP:
                self.state.graph = self.run.summary["graph"] = result
                self.tracker.finish_shard(name, {})
                continue
            self.summaries.append(result)
            self.tracker.finish_shard(name, result)
            self._stream(name, shard_id)

    def _next_finished(self):
        """The next finished shard's future; the progress artifact catches up while none finishes."""
        while True:
            try:
                return self.finished.get(timeout=UPDATE_EVERY_S)
            except queue.Empty:
                self.tracker.flush()

    def _plan_ready(self) -> None:
        """Close finished stages and plan in full those whose dependencies are all finished."""
        while True:
            for name in self.schedule.settle():
                self.tracker.close(name)
            ready = self.schedule.sweepable()
            if not ready:
                return
            for planning in ready:
                stage = planning.stage
                if stage.kind == GRAPH_STEP:
                    self.tracker.plan(stage.name, 1)
                    links = sorted(self.run.store.shard_ids("document_concepts"))
                    self._submit(stage.name, "graph", self.graph_task, {
                        "settings_payload": self.payload, "run_id": self.run.run_id, "link_shards": links})
                    self.schedule.submitted(stage.name, 1, swept=True)
                    continue
                candidates = stage.candidates(self.run.store, self.run.settings, self.state)
                planned = plan_stage(self.run.store, stage, self.run.settings, candidates,
                                     stage.shard_size(self.run.settings), self._files(stage), skip=planning.planned)
                self._submit_shards(stage, planned, swept=True)

    def _stream(self, upstream_name: str, shard_id: str) -> None:
        """Plan the items ``upstream``'s new shard made ready for the stages waiting for it."""
        store, settings = self.run.store, self.run.settings
        upstream = self.schedule.stages[upstream_name].stage
        for planning in self.schedule.streaming_from(upstream_name):
            ids = planning.stage.streamed_items(store, settings, self.state, upstream, shard_id)
            if not ids:
                continue
            if planning.covered is None:
                planning.covered = covered_items(store, planning.stage, settings)
            pending = [i for i in ids if i not in planning.covered and i not in planning.planned]
            if not pending:
                continue
            planning.planned.update(pending)
            located, looked_up = upstream_locations(store, planning.stage, upstream, shard_id, pending)
            planned = plan_items(store, planning.stage, settings, pending, planning.stage.shard_size(settings),
                                 self._files(planning.stage), located, looked_up)
            self._submit_shards(planning.stage, planned, swept=False)

    def _files(self, stage: Stage) -> StageFiles:
        if stage.name not in self.files:
            self.files[stage.name] = StageFiles.listed(self.run.store, stage)
        return self.files[stage.name]

    def _submit_shards(self, stage: Stage, planned: Planned, swept: bool) -> None:
        """Submit a stage's new shards; ``swept``: they are its full plan (no more streaming)."""
        self.tracker.plan(stage.name, len(planned.shard_ids), planned.items)
        for shard_id in planned.shard_ids:
            self._submit(stage.name, shard_id, self.task, {
                "stage": stage.name, "shard_id": shard_id, "settings_payload": self.payload_text,
                "run_id": self.run.run_id})
        self.schedule.submitted(stage.name, len(planned.shard_ids), swept=swept)

    def _submit(self, name: str, shard_id: str, task, parameters: dict[str, Any]) -> None:
        self.leases[name].check()
        future = self.task_runner.submit(task, parameters)
        self.out[future] = (name, shard_id)
        future.add_done_callback(self.finished.put)


def synthesize_steps(settings: Settings) -> dict[str, float]:
    """The stages this run will go through, LLM stages weighing most in the overall progress."""
    return {stage.name: 1.0 if isinstance(stage, LLMStage) else LIGHT_WEIGHT
            for group in waves(settings) for stage in group}


def stage_totals(summaries: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Shards, items, rows and failures per stage, in the registry's order."""
    totals: dict[str, dict[str, Any]] = {}
    for s in sorted(summaries, key=lambda s: order.index(s["stage"]) if s["stage"] in order else len(order)):
        t = totals.setdefault(s["stage"], {"stage": s["stage"], "shards": 0, "skipped": 0, "items": 0, "rows": 0,
                                           "failures": 0})
        t["shards"] += 1
        t["skipped"] += int(s["skipped"])
        for key in ("items", "rows", "failures"):
            t[key] += s[key]
    return list(totals.values())


@flow(name="synthesize")
def synthesize_flow(store: str | None = None, config: str | None = None, overrides: dict[str, Any] | None = None,
                    parent_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate questions of every configured level, gate them and answer them, on the store's documents.

    Args:
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker.
        overrides: Dotted settings on top of the config file, e.g. {"generation.max_documents": 100,
            "generation.levels": [1, 2]} (docs/orchestration.md lists the common keys).
        parent_settings: Resolved settings handed down by a parent run (synthllm-run); leave empty.
    """
    resolved = resolve_settings(config, overrides, store, parent_settings)
    logger = get_run_logger()
    steps = synthesize_steps(resolved)
    with open_run("synthesize", resolved) as run, tracked("synthesize", run.store, steps) as tracker:
        doc_ids = select_documents(run.store, resolved)
        if not doc_ids:
            raise RuntimeError(f"no documents to generate from in {run.store.url}: ingest a corpus first "
                               "(or check the reference filter's threshold)")
        logger.info("generating from %d documents, levels %s", len(doc_ids), sorted(resolved.generation.levels))
        state = PlanState(doc_ids=doc_ids)
        stages = enabled_stages(resolved)
        with open_task_runner(resolved) as task_runner, stage_leases(run, stages, logger) as leases:
            runner = StageRunner(run, task_runner, tracker, state, leases)
            runner.run_all()
        run.summary["stages"] = stage_totals(runner.summaries, list(steps))
    if run.summary["stages"]:
        create_table_artifact(key="synthesize-stages", table=run.summary["stages"],
                              description="Shards, rows and failures per stage")
    return run.summary


@contextmanager
def stage_leases(run: RunContext, stages: list[Stage], logger) -> Iterator[dict[str, Lease]]:
    """One run at a time plans and runs a stage on a store: a second run waits, then finds the
    work covered (or stops with the holder's name after ``orchestration.lease_wait_s``). The
    leases are taken for the whole run: stages overlap, a shard of any may finish at any time.
    Yields each stage's lease by stage name."""
    leases: dict[str, Lease] = {}
    with ExitStack() as stack:
        for stage in sorted(stages, key=lambda s: s.name):
            leases[stage.name] = stack.enter_context(run.lease(f"stage-{stage.name}", f"stage {stage.name}", logger))
        yield leases


@flow(name="synthllm-run")
def run_pipeline_flow(sources: list[str] | None = None, store: str | None = None, config: str | None = None,
                      overrides: dict[str, Any] | None = None, export_name: str = "synthllm-qa") -> dict[str, Any]:
    """The whole job: ingest (when sources are given), filter, synthesize, curate, export.

    Its run page shows one progress artifact moving shard by shard over every stage and, at the
    end, a summary: steps, failures by reason, tokens, the export, the dataset card, the plots.
    With the embedded model (llamacpp, smollm2-135m-instruct) reference filtering is skipped,
    with a log line saying why and how to turn it on.

    Args:
        sources: Corpus files to ingest first (JSONL, JSONL.gz, Parquet; paths, globs, s3:// URLs).
            Leave empty to work on the documents already in the store.
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker, relative to the repository root
            (e.g. configs/demo.yaml).
        overrides: Dotted settings on top of the config file, e.g. {"generation.max_documents": 100,
            "generation.levels": [1, 2]} (docs/orchestration.md lists the common keys).
        export_name: Folder under <store>/exports/ that receives the dataset.
    """
    from flows.curate import CURATE_STEPS, STEP_WEIGHTS, curate_flow, export_flow
    from flows.filter_references import filter_references_flow, filter_skip_reason, filter_steps
    from flows.ingest import ingest_flow

    resolved = resolve_settings(config, overrides, store)
    payload = settings_payload(resolved)
    skip_filter = filter_skip_reason(resolved)
    steps = {**({"ingest": LIGHT_WEIGHT} if sources else {}),
             **(filter_steps(resolved) if resolved.filter.enabled and not skip_filter else {}),
             **synthesize_steps(resolved), **{step: STEP_WEIGHTS[step] for step in CURATE_STEPS},
             "export": LIGHT_WEIGHT}
    result: dict[str, Any] = {}
    with tracked("synthllm-run", Store(resolved.store), steps) as tracker:
        if sources:
            result["ingest"] = ingest_flow(sources, parent_settings=payload)
        if skip_filter:
            get_run_logger().warning(skip_filter)
            tracker.note(skip_filter)
        elif resolved.filter.enabled:
            result["filter"] = filter_references_flow(parent_settings=payload)
        result["synthesize"] = synthesize_flow(parent_settings=payload)
        result["curate"] = curate_flow(parent_settings=payload)
        exported = export_flow(parent_settings=payload, name=export_name)
        result["export"] = {key: exported[key] for key in ("rows", "per_level") if key in exported}
        result["export"]["path"] = Store(resolved.store).path("exports", export_name)
    return result
