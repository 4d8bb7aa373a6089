"""Scaling-law flow: fit both laws per series, publish the report into the store and as artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from synthllm.runs import open_run
from synthllm.scaling import (
    ScalingInputError,
    ScalingOptions,
    fit_all,
    gather_points,
    png_data_uri,
    report_files,
    report_markdown,
)
from synthllm.settings import load_settings
import tasks.common  # noqa: F401 - trims Prefect's costs (tasks.prefect_costs): its flow runs end with their work


@flow(name="scaling-fit")
def scaling_fit_flow(
    source: str | None = None,
    store: str | None = None,
    config: str | None = None,
    series: list[str] | None = None,
    one_series: str | None = None,
    options: ScalingOptions | None = None,
    report_name: str | None = None,
) -> dict[str, Any]:
    """Fit points from ``source`` (a file) or the store's training_results; write the report under
    ``reports/scaling/<report_name or run id>/`` and publish tables and plots as artifacts.

    Args:
        source: CSV, JSON, JSON lines or Parquet file of measured points on the worker or in S3
            (default: the store's training_results table).
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker.
        series: Fit only these series (default: every series).
        one_series: Treat every row as one series with this name (the file has no series column).
        options: Any scaling setting (columns, metric_kind, holdout, budgets, n_bootstrap, ...);
            fields left empty come from the settings.
        report_name: Folder name under reports/scaling/ (default: the run id).
    """
    settings = load_settings(config, (options or ScalingOptions()).overrides(), store)
    logger = get_run_logger()
    with open_run("scaling-fit", settings, source=source, series=series, one_series=one_series,
                  report_name=report_name) as run:
        target, run_id, summary = run.store, run.run_id, run.summary
        points = gather_points(settings.scaling, source=source, store=target, series=series, one_series=one_series)
        report = fit_all(points, settings.scaling)
        if not report.series:
            raise ScalingInputError(f"no series could be fitted: {report.skipped}")
        folder = f"reports/scaling/{report_name or run_id}"
        files = report_files(report)
        paths = {name: target.path(folder, name) for name in files}
        for name, data in files.items():
            target.write_bytes(paths[name], data)
        summary.update(series=len(report.series), skipped=report.skipped, report=paths["report.json"])
    for name, reason in report.skipped.items():
        logger.warning("skipped series %s: %s", name, reason)

    create_table_artifact(
        key="scaling-fits", table=report.fit_rows(), description=f"Scaling-law fits, {paths['report.json']}"
    )
    create_table_artifact(
        key="scaling-predictions", table=report.prediction_rows(), description="Predicted metric at token budgets"
    )
    plots = report.plot_names
    images = {series_name: png_data_uri(files[plot]) for series_name, plot in plots.items()}
    markdown = report_markdown(report, images)
    stored = "\n".join(f"- {series_name}: `{paths[plot]}`" for series_name, plot in plots.items())
    create_markdown_artifact(
        key="scaling-report",
        markdown=f"{markdown}\n## Files\n\n- report: `{paths['report.json']}`\n{stored}\n",
        description="Scaling-law report with plots",
    )
    logger.info("scaling report written to %s", paths["report.json"])
    return {
        "report": paths["report.json"],
        "markdown": paths["report.md"],
        "plots": {series_name: paths[plot] for series_name, plot in plots.items()},
        "preferred": {r.series.name: r.comparison.preferred for r in report.series},
        "skipped": report.skipped,
    }
