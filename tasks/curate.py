"""Curation tasks: thin wrappers over :mod:`synthllm.curation` (recomputed every run, never cached)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from synthllm.curation.diversity import summary_rows
from synthllm.curation.export import export_dataset
from synthllm.curation.stages import run_decontamination, run_dedup, run_diversity_report
from tasks.common import open_payload


@task(name="curate-dedup", cache_policy=NO_CACHE)
def dedup_task(settings_payload: dict[str, Any], run_id: str) -> dict[str, int]:
    """Exact + near-duplicates over every question: one task, since duplicates cross shards."""
    settings, store = open_payload(settings_payload)
    result = run_dedup(store, settings, run_id)
    get_run_logger().info("dedup: %s", result)
    return result


@task(name="curate-decontaminate", cache_policy=NO_CACHE)
def decontaminate_task(question_shard: str, settings_payload: dict[str, Any], run_id: str) -> dict[str, int]:
    """Benchmark checks for one question shard."""
    settings, store = open_payload(settings_payload)
    result = run_decontamination(store, settings, question_shard, run_id)
    get_run_logger().info("decontaminate %s: %s", question_shard, result)
    return result


@task(name="curate-diversity-report", cache_policy=NO_CACHE)
def diversity_report_task(settings_payload: dict[str, Any], curated_only: bool = False) -> dict[str, Any]:
    """Embed, measure, publish under reports/diversity/; returns the summary rows, markdown and files."""
    settings, store = open_payload(settings_payload)
    published = run_diversity_report(store, settings, curated_only=curated_only)
    return {"rows": summary_rows(published["report"]), "markdown": published["markdown"], "files": published["files"]}


@task(name="curate-export", cache_policy=NO_CACHE)
def export_task(settings_payload: dict[str, Any], name: str, formats: list[str]) -> dict[str, Any]:
    """Write exports/<name>/ (plain + sft layouts, dataset card)."""
    settings, store = open_payload(settings_payload)
    result = export_dataset(store, settings, name, formats)
    get_run_logger().info("export %s: %d rows", name, result["rows"])
    return result
