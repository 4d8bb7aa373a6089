"""Curate and export flows: dedup + decontamination + diversity report, then the dataset files."""

from __future__ import annotations

import math
import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.tracking import tracked
from synthllm.curation.diversity import HISTOGRAMS_FILE, inline_histograms
from synthllm.curation.export import EXPORT_FORMATS
from synthllm.curation.stages import (
    add_decontamination_totals,
    decontaminate_shards,
    question_shards,
    remove_stale_decontamination,
    write_curation_summary,
)
from synthllm.lease import Lease
from synthllm.progress import LIGHT_WEIGHT
from synthllm.runs import open_run
from synthllm.settings import Settings, given_options, resolve_settings, settings_payload
from synthllm.store import Store
from tasks.common import open_payload, task_options
from tasks.curate import dedup_task, diversity_report_task, export_task

# The diversity report loads a sentence-transformers model: no "Loading weights: 100%|...|" bar
# in the run's logs (set before transformers is imported; the worker's own environment wins).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CURATE_STEPS = ("dedup", "decontaminate", "report")
STEP_WEIGHTS = {"dedup": LIGHT_WEIGHT, "decontaminate": LIGHT_WEIGHT, "report": LIGHT_WEIGHT}
DEFAULT_EXPORT_NAME = "synthllm-qa"
HISTOGRAMS_CAPTION = "Question similarity by level"


@task(name="curate-decontaminate-chunk", cache_policy=NO_CACHE)
def decontaminate_chunk(settings_payload: dict[str, Any], run_id: str, shards: list[str]) -> dict[str, Any]:
    """Benchmark checks for a chunk of question shards, with one benchmark index for the chunk."""
    settings, store = open_payload(settings_payload)
    result = decontaminate_shards(store, settings, run_id, shards)
    get_run_logger().info("decontaminate %d shards: %s", len(shards), result)
    return result


def shard_chunks(shards: list[str], chunks: int) -> list[list[str]]:
    """At most ``chunks`` contiguous chunks: as many tasks in flight as task workers, not one per shard."""
    size = max(1, math.ceil(len(shards) / max(chunks, 1)))
    return [shards[i : i + size] for i in range(0, len(shards), size)]


def _check_steps(steps: list[str] | None) -> list[str]:
    chosen = list(steps) if steps else list(CURATE_STEPS)
    unknown = sorted(set(chosen) - set(CURATE_STEPS))
    if unknown:
        raise ValueError(f"unknown curate steps {unknown}; choose from {', '.join(CURATE_STEPS)}")
    return [s for s in CURATE_STEPS if s in chosen]


@flow(name="curate")
def curate_flow(
    store: str | None = None,
    config: str | None = None,
    steps: list[str] | None = None,
    benchmarks: list[str] | None = None,
    curated_only: bool = False,
    overrides: dict[str, Any] | None = None,
    parent_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Recompute the curation table (dedup, decontamination) and the diversity report.

    Args:
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker.
        steps: Any of dedup, decontaminate, report (default: all three).
        benchmarks: Benchmark sets to decontaminate against, e.g. ["builtin:gsm8k", "/data/my-test.jsonl"]
            (default curation.benchmarks).
        curated_only: The diversity report covers only questions no check dropped.
        overrides: Dotted settings on top of the config file, e.g. {"curation.ngram": 10}.
        parent_settings: Resolved settings handed down by a parent run (synthllm-run); leave empty.
    """
    chosen = given_options({"curation.benchmarks": benchmarks})
    settings = resolve_settings(config, {**(overrides or {}), **chosen}, store, parent_settings)
    steps = _check_steps(steps)
    payload = settings_payload(settings)
    options = task_options(settings)
    logger = get_run_logger()
    with (
        open_run("curate", settings, steps=steps, curated_only=curated_only) as run,
        tracked("curate", run.store, {step: STEP_WEIGHTS[step] for step in steps}) as tracker,
        # a second curate or export would rewrite (or remove as stale) the curation shards this
        # run writes, or export a curation table half rewritten
        run.lease("curation", "curation", logger) as lease,
    ):
        target, run_id, summary = run.store, run.run_id, run.summary
        if "dedup" in steps:
            tracker.plan("dedup", 1)
            summary["dedup"] = dedup_task.with_options(**options)(payload, run_id)
            dedup = summary["dedup"]
            tracker.finish_shard("dedup", {"items": dedup.get("questions", 0), "rows": dedup.get("questions", 0),
                                           "failures": 0})
            tracker.close("dedup")
        if "decontaminate" in steps:
            lease.check()
            summary["decontaminate"] = _decontaminate(target, settings, payload, run_id, tracker, options, lease)
        if "dedup" in steps or "decontaminate" in steps:
            lease.check()
            write_curation_summary(target, settings, run_id, summary)
        if "report" in steps:
            lease.check()
            tracker.plan("report", 1)
            report = diversity_report_task.with_options(**options)(payload, curated_only)
            summary["report_files"] = report["files"]
            markdown = report["markdown"]
            plot = next((path for path in report["files"] if path.endswith(HISTOGRAMS_FILE)), None)
            if plot:
                png = target.read_bytes(plot)
                markdown = inline_histograms(markdown, png)
                tracker.report.images[HISTOGRAMS_CAPTION] = png
                tracker.report.image_paths[HISTOGRAMS_CAPTION] = plot
            create_table_artifact(key="diversity-summary", table=report["rows"], description="Question diversity by level")
            create_markdown_artifact(key="diversity-report", markdown=markdown, description="Diversity report")
            tracker.finish_shard("report", {"items": sum(row["questions"] for row in report["rows"])})
            tracker.close("report")
    checks = [{"step": step, **values} for step, values in summary.items() if isinstance(values, dict)]
    if checks:
        create_table_artifact(key="curation-summary", table=checks, description=f"Curation of {target.url}")
    logger.info("curate finished: %s", summary)
    return summary


def _decontaminate(target: Store, settings: Settings, payload: dict[str, Any], run_id: str, tracker,
                   options: dict[str, Any], lease: Lease) -> dict[str, Any]:
    shards = question_shards(target)
    chunks = shard_chunks(shards, settings.orchestration.task_workers)
    tracker.plan("decontaminate", len(chunks))
    totals: dict[str, Any] = {"shards": 0, "questions": 0, "contamination_exact": 0, "contamination_ngram": 0}
    task_ = decontaminate_chunk.with_options(**options)
    for future in as_completed([task_.submit(payload, run_id, chunk) for chunk in chunks]):
        result = future.result()
        totals = add_decontamination_totals(totals, result)
        tracker.finish_shard("decontaminate", {"items": result["questions"], "rows": result["questions"]})
    tracker.close("decontaminate")
    lease.check()  # the shards another run may be writing now are not this run's to remove
    totals["stale_shards_removed"] = remove_stale_decontamination(target, settings)
    return totals


@flow(name="export")
def export_flow(
    store: str | None = None,
    config: str | None = None,
    name: str = DEFAULT_EXPORT_NAME,
    formats: list[str] | None = None,
    out: str | None = None,
    overrides: dict[str, Any] | None = None,
    parent_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the curated QA set to ``exports/<name>/`` (plain and sft layouts, README.md card).

    Args:
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker.
        name: Folder under <store>/exports/ that receives the dataset.
        formats: Any of parquet, jsonl (default: both).
        out: Also copy the dataset (files and card) to this folder or s3://bucket/prefix, e.g. a
            bucket a training job reads (S3 endpoint and credentials as for the store).
        overrides: Dotted settings on top of the config file, e.g. {"answer.min_agreement": 0.6}.
        parent_settings: Resolved settings handed down by a parent run (synthllm-run); leave empty.
    """
    settings = resolve_settings(config, overrides, store, parent_settings)
    formats = list(formats or EXPORT_FORMATS)
    with (
        open_run("export", settings, name=name, formats=formats, out=out) as run,
        tracked("export", run.store, {"export": LIGHT_WEIGHT}) as tracker,
        run.lease("curation", "curation", get_run_logger()) as lease,
    ):
        target, summary = run.store, run.summary
        tracker.plan("export", 1)
        result = export_task.with_options(**task_options(settings))(
            settings_payload(settings), name, formats)
        lease.check()  # a curate run that took over may have changed what was read: export again
        tracker.finish_shard("export", {"items": result["rows"], "rows": result["rows"]})
        folder = target.path("exports", name)
        if out:
            result["copied"] = copy_files(target, folder, result["files"], Store(settings.store.model_copy(
                update={"url": out})))
        summary.update({"name": name, "rows": result["rows"], "per_level": result["per_level"], **result["funnel"]})
        card = target.read_bytes(target.path("exports", name, "README.md")).decode("utf-8")
        tracker.report.export = {"path": out or folder, "rows": result["rows"], "per_level": result["per_level"]}
        tracker.report.card = card
        tracker.close("export")
    create_table_artifact(key="export-summary", table=[summary], description=f"Export {name}")
    create_markdown_artifact(key="export-card", markdown=card, description=f"Dataset card of {name}")
    get_run_logger().info("export %s: %d rows%s", name, result["rows"], f", copied to {out}" if out else "")
    return result


def copy_files(source: Store, folder: str, files: list[str], destination: Store) -> list[str]:
    """Copy ``files`` (under ``folder`` of ``source``) to the same relative paths in ``destination``,
    a chunk at a time (an export's files can be larger than memory)."""
    destination.check_reachable()
    copied = []
    for path in files:
        copied.append(destination.path(path.removeprefix(folder).lstrip("/")))
        source.copy_to(path, destination, copied[-1])
    return copied
