"""Curate and export flows: dedup + decontamination + diversity report, then the dataset files."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from synthllm.curation.export import EXPORT_FORMATS
from synthllm.curation.stages import question_shards, remove_stale_decontamination, write_curation_summary
from synthllm.runs import public_params, recorded_run
from synthllm.settings import Settings, load_settings, settings_payload
from synthllm.store import Store
from tasks.curate import decontaminate_task, dedup_task, diversity_report_task, export_task

CURATE_STEPS = ("dedup", "decontaminate", "report")
DEFAULT_EXPORT_NAME = "synthllm-qa"


def _retry_options(settings: Settings) -> dict[str, Any]:
    return {"retries": settings.orchestration.task_retries, "retry_delay_seconds": settings.orchestration.retry_delay_s}


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
) -> dict[str, Any]:
    """Recompute the curation table (dedup-all, decontam-<question shard>) and the diversity report.

    ``steps``: any of dedup, decontaminate, report (default: all). ``benchmarks`` overrides
    ``curation.benchmarks``. ``curated_only``: the report covers only questions no check dropped.
    ``overrides``: dotted settings (``{"curation.ngram": 10}``) on top of the config file.
    """
    settings = load_settings(config, {**(overrides or {}), "curation.benchmarks": benchmarks}, store)
    steps = _check_steps(steps)
    target = Store(settings.store)
    target.check_reachable()
    payload = settings_payload(settings)
    retry = _retry_options(settings)
    logger = get_run_logger()
    params = public_params(settings, steps=steps, curated_only=curated_only)
    with recorded_run(target, "curate", params) as (run_id, summary):
        if "dedup" in steps:
            summary["dedup"] = dedup_task.with_options(**retry)(payload, run_id)
        if "decontaminate" in steps:
            shards = question_shards(target)
            futures = decontaminate_task.with_options(**retry).map(shards, unmapped(payload), unmapped(run_id))
            totals = {"shards": len(shards), "questions": 0, "contamination_exact": 0, "contamination_ngram": 0}
            for result in futures.result():
                for key, value in result.items():
                    totals[key] += value
            totals["stale_shards_removed"] = remove_stale_decontamination(target, settings)
            summary["decontaminate"] = totals
        if "dedup" in steps or "decontaminate" in steps:
            write_curation_summary(target, settings, run_id, summary)
        if "report" in steps:
            report = diversity_report_task.with_options(**retry)(payload, curated_only)
            summary["report_files"] = report["files"]
            create_table_artifact(key="diversity-summary", table=report["rows"], description="Question diversity by level")
            create_markdown_artifact(key="diversity-report", markdown=report["markdown"], description="Diversity report")
    checks = [{"step": step, **values} for step, values in summary.items() if isinstance(values, dict)]
    if checks:
        create_table_artifact(key="curation-summary", table=checks, description=f"Curation of {target.url}")
    target.write_catalog()
    logger.info("curate finished: %s", summary)
    return summary


@flow(name="export")
def export_flow(
    store: str | None = None,
    config: str | None = None,
    name: str = DEFAULT_EXPORT_NAME,
    formats: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the curated QA set to ``exports/<name>/`` (plain and sft layouts, README.md card)."""
    settings = load_settings(config, overrides, store)
    target = Store(settings.store)
    target.check_reachable()
    formats = list(formats or EXPORT_FORMATS)
    params = public_params(settings, name=name, formats=formats)
    with recorded_run(target, "export", params) as (_run_id, summary):
        result = export_task.with_options(**_retry_options(settings))(settings_payload(settings), name, formats)
        summary.update({"name": name, "rows": result["rows"], "per_level": result["per_level"], **result["funnel"]})
    card = target.read_bytes(target.path("exports", name, "README.md")).decode("utf-8")
    create_table_artifact(key="export-summary", table=[summary], description=f"Export {name}")
    create_markdown_artifact(key="export-card", markdown=card, description=f"Dataset card of {name}")
    get_run_logger().info("export %s: %d rows", name, result["rows"])
    return result
