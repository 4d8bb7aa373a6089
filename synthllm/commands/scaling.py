"""``synthllm scaling``: import measured points, fit and extrapolate the scaling laws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from synthllm.runs import new_run_id
from synthllm.scaling import (
    ScalingInputError,
    add_training_results,
    fit_all,
    gather_points,
    report_files,
)
from synthllm.settings import Settings, load_settings
from synthllm.store import Store

app = typer.Typer(help="Fit L(D) = B/(D_l + D^beta) + E and B/D^beta + E to measured points.", no_args_is_help=True)
console = Console()

StoreOption = Annotated[str | None, typer.Option("--store", help="Store URL: a folder or s3://bucket/prefix.")]
ConfigOption = Annotated[str | None, typer.Option("--config", help="YAML or TOML settings file.")]
SeriesCol = Annotated[str | None, typer.Option(help="Column naming the series (one curve each).")]
OneSeries = Annotated[
    str | None, typer.Option("--one-series", help="Treat all rows as one series with this name (no series column).")
]
TokensCol = Annotated[str | None, typer.Option(help="Column with training tokens D.")]
MetricCol = Annotated[str | None, typer.Option(help="Column with the metric L.")]
MetricKindOption = Annotated[
    str | None, typer.Option(help="error | accuracy | loss. Accuracy is turned into error; >1 means percent.")
]
TokensPerUnit = Annotated[
    float | None, typer.Option(help="Multiply the tokens column by this (e.g. 600 when it counts examples).")
]


def _settings(config: str | None, store: str | None, **scaling: Any) -> Settings:
    try:
        return load_settings(config, {f"scaling.{key}": value for key, value in scaling.items()}, store)
    except ValidationError as exc:
        raise _fail(str(exc)) from exc


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error[/]: {message}")
    return typer.Exit(code=1)


@app.command()
def add(
    source: Annotated[str, typer.Argument(help="CSV, JSON (records), JSON lines or Parquet file of points.")],
    store: StoreOption = None,
    config: ConfigOption = None,
    series_col: SeriesCol = None,
    one_series: OneSeries = None,
    tokens_col: TokensCol = None,
    metric_col: MetricCol = None,
    metric_kind: MetricKindOption = None,
    tokens_per_unit: TokensPerUnit = None,
    notes: Annotated[str | None, typer.Option(help="Free text stored with every row.")] = None,
) -> None:
    """Import measured points into the store's training_results table (re-adding a file is a no-op)."""
    settings = _settings(
        config, store, series_col=series_col, tokens_col=tokens_col, metric_col=metric_col,
        metric_kind=metric_kind, tokens_per_unit=tokens_per_unit,
    )
    try:
        series = gather_points(settings.scaling, source=source, one_series=one_series)
    except ScalingInputError as exc:
        raise _fail(str(exc)) from exc
    target = Store(settings.store)
    shard_id, rows = add_training_results(target, series, new_run_id(), notes)
    console.print(f"added {rows} points of {len(series)} series to {target.url} (training_results/{shard_id})")


@app.command()
def fit(
    source: Annotated[
        str | None, typer.Argument(help="Points file; default: the store's training_results table.")
    ] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
    series: Annotated[list[str] | None, typer.Option("--series", help="Fit only this series (repeatable).")] = None,
    series_col: SeriesCol = None,
    one_series: OneSeries = None,
    tokens_col: TokensCol = None,
    metric_col: MetricCol = None,
    metric_kind: MetricKindOption = None,
    tokens_per_unit: TokensPerUnit = None,
    holdout: Annotated[int | None, typer.Option(help="Largest token counts held out to validate (0: none).")] = None,
    budget: Annotated[
        list[float] | None, typer.Option("--budget", help="Token budget to predict at (repeatable).")
    ] = None,
    plateau_gain: Annotated[
        float | None, typer.Option(help="Report the tokens where a doubling gains less than this (metric units).")
    ] = None,
    within: Annotated[
        float | None, typer.Option(help="Report the tokens to get within this of the asymptote E (metric units).")
    ] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap refits for the intervals (0: none).")] = None,
    confidence: Annotated[float | None, typer.Option(help="Interval confidence level.")] = None,
    seed: Annotated[int | None, typer.Option(help="Bootstrap seed.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md and one PNG per series.")] = Path(
        "scaling-report"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of tables.")] = False,
) -> None:
    """Fit both laws per series, validate on held-out points, extrapolate; write JSON, Markdown and PNGs."""
    settings = _settings(
        config, store, series_col=series_col, tokens_col=tokens_col, metric_col=metric_col,
        metric_kind=metric_kind, tokens_per_unit=tokens_per_unit, holdout=holdout, budgets=budget or None,
        plateau_gain=plateau_gain, within=within, n_bootstrap=bootstrap, confidence=confidence, seed=seed,
    )
    try:
        points = gather_points(
            settings.scaling, source=source, store=Store(settings.store), series=series or None, one_series=one_series
        )
    except ScalingInputError as exc:
        raise _fail(str(exc)) from exc

    report = fit_all(points, settings.scaling)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in report_files(report).items():
        (out / name).write_bytes(data)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_rows("fits", report.fit_rows())
        _print_rows("predictions", report.prediction_rows())
        for one in report.series:
            c = one.comparison
            console.print(
                f"[bold]{one.series.name}[/]: {c.preferred} law preferred "
                f"(Δ{c.label} = {c.delta:.2f}, weight {c.weight:.2f})"
            )
            for law, law_fit in c.fits.items():
                for warning in law_fit.warnings:
                    console.print(f"  [yellow]{law}[/]: {warning}")
        console.print(f"report: {out / 'report.json'}, plots and report.md in {out}")
    for name, reason in report.skipped.items():
        console.print(f"[bold red]skipped[/] {name}: {reason}")
    if report.skipped:
        raise typer.Exit(code=1)


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("series", "law") else "right", overflow="fold")
    for row in rows:
        table.add_row(*[_cell(value) for value in row.values()])
    console.print(table)


def _cell(value: Any) -> str:
    if value is True:
        return "✓"
    if value is False or value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
