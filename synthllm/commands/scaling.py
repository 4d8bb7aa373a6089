"""``synthllm scaling``: import measured points, fit and extrapolate the scaling laws."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from synthllm.commands.options import ConfigOption, StoreOption
from synthllm.runs import new_run_id
from synthllm.scaling import (
    POINT_OPTIONS,
    ScalingInputError,
    ScalingOptions,
    add_training_results,
    fit_all,
    gather_points,
    report_files,
)
from synthllm.settings import Settings, SettingsError, describe_errors, load_settings
from synthllm.store import Store

app = typer.Typer(help="Fit L(D) = B/(D_l + D^beta) + E and B/D^beta + E to measured points.", no_args_is_help=True)
console = Console()

OneSeries = Annotated[
    str | None, typer.Option("--one-series", help="Treat all rows as one series with this name (no series column).")
]
# CLI spellings that differ from the setting's name (repeatable --budget fills budgets).
FLAGS = {"budgets": "--budget", "n_bootstrap": "--bootstrap"}


def with_scaling_options(names: Sequence[str]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """One CLI option per named :class:`ScalingOptions` field, typed and explained by the
    settings; the command receives them as one ``options`` argument."""
    fields = ScalingOptions.model_fields

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
                fields[name].annotation,
                typer.Option(FLAGS.get(name, "--" + name.replace("_", "-")), help=fields[name].description),
            ])
            for name in names
        ]
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]

        @functools.wraps(command)
        def run(**kwargs: Any) -> None:
            try:
                options = ScalingOptions(**{name: kwargs.pop(name) for name in names})
            except ValidationError as exc:
                raise _fail(describe_errors(exc)) from exc
            command(**kwargs, options=options)

        run.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in own + added}
        return run

    return decorate


def _settings(config: str | None, store: str | None, options: ScalingOptions) -> Settings:
    try:
        return load_settings(config, options.overrides(), store)
    except SettingsError as exc:
        raise _fail(str(exc)) from exc


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error[/]: {message}")
    return typer.Exit(code=1)


@app.command()
@with_scaling_options(POINT_OPTIONS)
def add(
    source: Annotated[str, typer.Argument(help="CSV, JSON (records), JSON lines or Parquet file of points.")],
    store: StoreOption = None,
    config: ConfigOption = None,
    one_series: OneSeries = None,
    notes: Annotated[str | None, typer.Option(help="Free text stored with every row.")] = None,
    *,
    options: ScalingOptions,
) -> None:
    """Import measured points into the store's training_results table (re-adding a file is a no-op)."""
    settings = _settings(config, store, options)
    try:
        series = gather_points(settings.scaling, source=source, one_series=one_series)
    except ScalingInputError as exc:
        raise _fail(str(exc)) from exc
    target = Store(settings.store)
    shard_id, rows = add_training_results(target, series, new_run_id(), notes)
    console.print(f"added {rows} points of {len(series)} series to {target.url} (training_results/{shard_id})")


@app.command()
@with_scaling_options(tuple(ScalingOptions.model_fields))
def fit(
    source: Annotated[
        str | None, typer.Argument(help="Points file; default: the store's training_results table.")
    ] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
    series: Annotated[list[str] | None, typer.Option("--series", help="Fit only this series (repeatable).")] = None,
    one_series: OneSeries = None,
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md and one PNG per series.")] = Path(
        "scaling-report"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of tables.")] = False,
    *,
    options: ScalingOptions,
) -> None:
    """Fit both laws per series, validate on held-out points, extrapolate; write JSON, Markdown and PNGs."""
    settings = _settings(config, store, options)
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
