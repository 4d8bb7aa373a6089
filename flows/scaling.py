"""Scaling-law flow: fit both laws per series, publish the report into the store and as artifacts."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from synthllm.runs import public_params, recorded_run
from synthllm.scaling import ScalingInputError, fit_all, gather_points, png_data_uri, report_files, report_markdown
from synthllm.settings import load_settings
from synthllm.store import Store


@flow(name="scaling-fit")
def scaling_fit_flow(
    source: str | None = None,
    store: str | None = None,
    config: str | None = None,
    series: list[str] | None = None,
    one_series: str | None = None,
    series_col: str | None = None,
    tokens_col: str | None = None,
    metric_col: str | None = None,
    metric_kind: Literal["error", "accuracy", "loss"] | None = None,
    tokens_per_unit: float | None = None,
    holdout: int | None = None,
    budgets: list[float] | None = None,
    plateau_gain: float | None = None,
    within: float | None = None,
    n_bootstrap: int | None = None,
    confidence: float | None = None,
    seed: int | None = None,
    report_name: str | None = None,
) -> dict[str, Any]:
    """Fit points from ``source`` (a file) or the store's training_results; write the report under
    ``reports/scaling/<report_name or run id>/`` and publish tables and plots as artifacts.
    Parameters left None come from the settings (``scaling`` section)."""
    overrides = {
        "series_col": series_col, "tokens_col": tokens_col, "metric_col": metric_col, "metric_kind": metric_kind,
        "tokens_per_unit": tokens_per_unit, "holdout": holdout, "budgets": budgets, "plateau_gain": plateau_gain,
        "within": within, "n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed,
    }
    settings = load_settings(config, {f"scaling.{k}": v for k, v in overrides.items()}, store)
    target = Store(settings.store)
    target.check_reachable()
    logger = get_run_logger()
    params = public_params(settings, source=source, series=series, one_series=one_series, report_name=report_name)
    with recorded_run(target, "scaling-fit", params) as (run_id, summary):
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
