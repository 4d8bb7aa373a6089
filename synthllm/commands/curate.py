"""``synthllm curate | dedup | decontaminate | report | export``: curation and dataset export."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from synthllm.commands.options import ConfigOption, SetOption, StoreOption

app = typer.Typer(help="Dedup, decontaminate, measure diversity, export the QA set.", no_args_is_help=True)
console = Console()

BenchmarkOption = Annotated[
    list[str] | None,
    typer.Option(
        "--benchmark",
        help="Benchmark to decontaminate against (repeat): builtin:gsm8k, builtin:math, builtin:math500, "
        "builtin:svamp, or a JSONL/JSON/Parquet file as path[:field]. Default: curation.benchmarks.",
    ),
]
CuratedOnlyOption = Annotated[
    bool, typer.Option("--curated-only", help="Report on questions kept by every check instead of all generated.")
]


def _show(title: str, result: Any) -> None:
    console.print(f"[bold]{title}[/]")
    console.print_json(json.dumps(result, default=str))


def _curate(store: str | None, config: str | None, overrides: list[str] | None, steps: list[str],
            **params: Any) -> None:
    from synthllm.cli import _check_settings, parse_overrides, run_flow

    parsed = parse_overrides(overrides)
    _check_settings(config, store, parsed)
    from flows.curate import curate_flow

    _show("curate", run_flow(lambda: curate_flow(store=store, config=config, steps=steps, overrides=parsed, **params)))


@app.command()
def curate(
    store: StoreOption = None,
    config: ConfigOption = None,
    benchmark: BenchmarkOption = None,
    curated_only: CuratedOnlyOption = False,
    overrides: SetOption = None,
) -> None:
    """Dedup, decontaminate and write the diversity report (curation rows are recomputed)."""
    _curate(store, config, overrides, ["dedup", "decontaminate", "report"], benchmarks=benchmark,
            curated_only=curated_only)


@app.command()
def dedup(store: StoreOption = None, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Exact and near-duplicate questions, across levels and runs (curation shard dedup-all)."""
    _curate(store, config, overrides, ["dedup"])


@app.command()
def decontaminate(store: StoreOption = None, config: ConfigOption = None, benchmark: BenchmarkOption = None,
                  overrides: SetOption = None) -> None:
    """Drop questions that copy benchmark items (exact match and n-gram overlap)."""
    _curate(store, config, overrides, ["decontaminate"], benchmarks=benchmark)


@app.command()
def report(store: StoreOption = None, config: ConfigOption = None, curated_only: CuratedOnlyOption = False,
           overrides: SetOption = None) -> None:
    """Diversity report under reports/diversity/ (report.json, report.md, histograms.png)."""
    _curate(store, config, overrides, ["report"], curated_only=curated_only)


@app.command()
def export(
    name: Annotated[str, typer.Option("--name", help="Export folder: exports/<name>/ in the store.")] = "synthllm-qa",
    file_format: Annotated[
        list[str] | None, typer.Option("--format", help="parquet and/or jsonl (repeat). Default: both.")
    ] = None,
    out: Annotated[str | None, typer.Option(
        "--out", help="Also copy the dataset to this folder or s3://bucket/prefix.")] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write the curated QA set (plain and chat/SFT layouts) with a dataset card."""
    from synthllm.cli import _check_settings, parse_overrides, run_flow

    parsed = parse_overrides(overrides)
    _check_settings(config, store, parsed)
    from flows.curate import export_flow

    result = run_flow(lambda: export_flow(store=store, config=config, name=name, formats=file_format, out=out,
                                          overrides=parsed))
    _show("export", {k: result[k] for k in ("name", "rows", "per_level", "funnel", "files", "copied") if k in result})
