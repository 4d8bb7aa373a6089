"""The SynthLLM pipeline: documents -> concepts -> graph -> questions (3 levels) -> answers.

``synthesize_flow`` runs the generation stages in dependency order; each stage is a set of
shard tasks submitted together so the task runner (threads, Dask or Ray) spreads them out.
``run_pipeline_flow`` is the whole job: ingest, reference filtering, synthesis, curation, export.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from synthllm.generation import PROMPTS, stage_engine
from synthllm.pipeline import engine_model_id, pending_items, plan_shards, select_documents
from synthllm.prompts import load_prompt
from synthllm.resources import read_sql
from synthllm.runs import public_params, recorded_run
from synthllm.settings import Settings, load_settings, settings_payload
from synthllm.store import Store
from tasks.common import shard_task_options, make_task_runner
from tasks.generation import generate_shard
from tasks.graph import build_concept_graph


def stage_key(settings: Settings, stage: str) -> dict[str, Any]:
    """What makes a stage's output differ: prompt version, model and sampling parameters."""
    engine = stage_engine(settings, stage)
    sampling = settings.answer.sampling if stage == "answer" else settings.generation.sampling
    return {
        "prompt": load_prompt(PROMPTS[stage]).version,
        "backend": engine.backend,
        "model": engine.model,
        "sampling": sampling.model_dump(),
        "n": settings.answer.self_consistency if stage == "answer" else 1,
        "generation": settings.generation.model_dump(exclude={"levels", "max_documents", "max_combinations", "shard_size"}),
    }


class StageRunner:
    """Submits the shards of one or more stages together and follows their progress
    (one progress step per :meth:`run`: concepts + level 1, level 2, level 3, answers).

    Shards go to the task runner the settings choose (threads, Dask or Ray), also when the flow
    runs from a deployment, whose flow object carries the default runner."""

    def __init__(self, store: Store, settings: Settings, run_id: str, total_stages: int, task_runner) -> None:
        self.store, self.settings, self.run_id = store, settings, run_id
        self.task_runner = task_runner
        self.task = generate_shard.with_options(**shard_task_options(store, settings, cached=False))
        self.payload = settings_payload(settings)
        self.total_stages, self.done_stages = total_stages, 0
        self.progress = create_progress_artifact(progress=0.0, key="synthesize-progress",
                                                 description="Share of generation stages finished")
        self.summaries: list[dict[str, Any]] = []

    def plan(self, stage: str, item_ids: list[str]) -> list[tuple[str, str]]:
        """Shards of the items this stage has not dealt with yet (for this prompt and model)."""
        key = stage_key(self.settings, stage)
        engine = stage_engine(self.settings, stage)
        pending = pending_items(self.store, stage, item_ids, key["prompt"], engine_model_id(self.store, engine))
        shards = plan_shards(self.store, stage, pending, self.settings.generation.shard_size, key)
        return [(stage, shard_id) for shard_id in shards]

    def run(self, *stage_shards: list[tuple[str, str]]) -> None:
        planned = [pair for group in stage_shards for pair in group]
        futures = [
            self.task_runner.submit(self.task, {"stage": stage, "shard_id": shard_id,
                                                "settings_payload": self.payload, "run_id": self.run_id})
            for stage, shard_id in planned
        ]
        self.summaries.extend(future.result() for future in futures)
        self.done_stages += 1
        update_progress_artifact(self.progress, progress=100.0 * self.done_stages / self.total_stages)


def _stage_totals(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for s in summaries:
        t = totals.setdefault(s["stage"], {"stage": s["stage"], "shards": 0, "skipped": 0, "items": 0, "rows": 0,
                                           "failures": 0})
        t["shards"] += 1
        t["skipped"] += int(s["skipped"])
        for key in ("items", "rows", "failures"):
            t[key] += s[key]
    return list(totals.values())


@flow(name="synthesize")
def synthesize_flow(store: str | None = None, config: str | None = None,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate questions of every configured level and answer them, on the store's documents."""
    settings = load_settings(config, overrides, store)
    target = Store(settings.store)
    target.check_reachable()
    levels = set(settings.generation.levels)
    logger = get_run_logger()
    with recorded_run(target, "synthesize", public_params(settings)) as (run_id, summary):
        doc_ids = select_documents(target, settings)
        if not doc_ids:
            raise RuntimeError(f"no documents to generate from in {target.url}: ingest a corpus first "
                               "(or check the reference filter's threshold)")
        logger.info("generating from %d documents, levels %s", len(doc_ids), sorted(levels))
        with make_task_runner(settings) as task_runner:
            stages = _run_stages(StageRunner(target, settings, run_id, 2 + len(levels & {2, 3}), task_runner), doc_ids,
                                 levels, summary)
        summary["stages"] = stages
    target.write_catalog()
    if stages:
        create_table_artifact(key="synthesize-stages", table=stages, description="Shards, rows and failures per stage")
    return summary


def _run_stages(runner: StageRunner, doc_ids: list[str], levels: set[int], summary: dict[str, Any]) -> list[dict]:
    """Concepts and level 1 together, then level 2, the graph and level 3, then answers."""
    target, settings, run_id = runner.store, runner.settings, runner.run_id
    needs_concepts = bool(levels & {2, 3})
    runner.run(runner.plan("concepts", doc_ids) if needs_concepts else [],
               runner.plan("level1", doc_ids) if 1 in levels else [])
    if 2 in levels:
        ready = set(target.query(read_sql("documents_with_concepts.sql"))["doc_id"].to_list())
        runner.run(runner.plan("level2", [d for d in doc_ids if d in ready]))
    if 3 in levels:
        graph = build_concept_graph.with_options(**shard_task_options(target, settings))(
            runner.payload, run_id, sorted(target.shard_ids("document_concepts")))
        combos = target.query(read_sql("graph_combinations.sql"), [graph["graph_key"]])["combo_id"].to_list()
        if settings.generation.max_combinations is not None:
            combos = combos[: settings.generation.max_combinations]
        summary["graph"] = graph
        runner.run(runner.plan("level3", combos))
    questions = target.query("SELECT question_id FROM questions ORDER BY level, question_id")["question_id"]
    runner.run(runner.plan("answer", questions.to_list()))
    return _stage_totals(runner.summaries)


@flow(name="synthllm-run")
def run_pipeline_flow(sources: list[str] | None = None, store: str | None = None, config: str | None = None,
                      overrides: dict[str, Any] | None = None, export_name: str = "synthllm-qa") -> dict[str, Any]:
    """The whole job: ingest (when sources are given), filter, synthesize, curate, export."""
    from flows.curate import curate_flow, export_flow
    from flows.filter_references import filter_references_flow
    from flows.ingest import ingest_flow

    settings = load_settings(config, overrides, store)
    url = settings.store.url
    result: dict[str, Any] = {}
    if sources:
        result["ingest"] = ingest_flow(sources, store=url, config=config)
    if settings.filter.enabled:
        result["filter"] = filter_references_flow(store=url, config=config, overrides=overrides)
    result["synthesize"] = synthesize_flow(store=url, config=config, overrides=overrides)
    result["curate"] = curate_flow(store=url, config=config, overrides=overrides)
    exported = export_flow(store=url, config=config, overrides=overrides, name=export_name)
    result["export"] = {key: exported[key] for key in ("rows", "per_level") if key in exported}
    result["export"]["path"] = Store(settings.store).path("exports", export_name)
    return result
