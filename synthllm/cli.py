"""The ``synthllm`` command line: every flow, ad hoc, on any store."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from synthllm.commands.options import ConfigOption, SetOption, StoreOption
from synthllm.commands.server import default_server_environment, use_running_server
from synthllm.settings import SettingsError

default_server_environment()
# A fresh ephemeral API migrates its SQLite database first: slow on a busy 2-core laptop.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Third-party progress bars (transformers' "Loading weights", hub downloads) would garble the
# live display and fill the logs; set before those libraries are imported.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

T = TypeVar("T")


class CleanErrors(TyperGroup):
    """Every command, sub-apps included: bad settings (a file, a --set, a SYNTHLLM_* variable)
    end the command with the message and exit code 2, no traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            Console(stderr=True).print(f"[bold red]settings error[/]: {exc}", highlight=False)
            raise typer.Exit(code=2) from None


app = typer.Typer(help="Turn pre-training corpora into diverse synthetic QA datasets (SynthLLM).", no_args_is_help=True,
                  cls=CleanErrors)
console = Console()


@app.callback()
def _startup() -> None:
    """Reuse a configured or recorded Prefect server (``synthllm server start``) before Prefect
    is imported, so flow commands skip starting a temporary one."""
    use_running_server()



def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``generation.max_documents=10`` -> {"generation.max_documents": 10} (values parsed as YAML)."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set expects dotted.key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    from synthllm.settings import split_secrets

    # A key given on the command line goes to this process's environment, never into a flow parameter.
    overrides, secrets = split_secrets(overrides)
    os.environ.update(secrets)
    return overrides


def _check_settings(config: str | None, store: str | None, overrides: dict[str, Any] | None = None) -> None:
    """Load the settings once before any flow starts: a bad value fails in a second, cleanly."""
    from synthllm.settings import load_settings

    load_settings(config, overrides, store)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Ctrl-C or SIGTERM asks the engines to stop (what was received is cached, a rerun resumes);
    a second signal aborts at once."""
    from synthllm.engines.base import clear_stop, request_stop

    stopping = False

    def handle(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt
        stopping = True
        request_stop()
        console.print(f"[yellow]{signal.Signals(signum).name}[/]: stopping; engine batches end early and what was "
                      "received is cached, so a rerun resumes. Signal again to abort now.")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clear_stop()


def run_flow(call: Callable[[], T]) -> T:
    """Run a flow in this process with a live progress display and stop-on-signal."""
    from synthllm.progress import live_display

    with stop_on_signals(), live_display(console):
        return call()


def _print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print(f"[bold]{title}[/]: none")
        return
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*[_cell(v) for v in row.values()])
    console.print(table)


def _cell(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


@app.command()
def ingest(
    sources: Annotated[list[str], typer.Argument(help="JSONL, JSONL.gz or Parquet: paths, globs, s3:// URLs.")],
    store: StoreOption = None,
    config: ConfigOption = None,
    id_field: Annotated[str | None, typer.Option(help="Field holding the document id.")] = None,
    text_field: Annotated[str | None, typer.Option(help="Field holding the document text.")] = None,
    shard_size: Annotated[int | None, typer.Option(help="Records per shard.")] = None,
    overrides: SetOption = None,
) -> None:
    """Ingest a corpus into the documents table; bad records go to the failures table."""
    parsed = parse_overrides(overrides)
    _check_settings(config, store, parsed)
    from flows.ingest import ingest_flow

    totals = run_flow(lambda: ingest_flow(sources, store=store, config=config, id_field=id_field,
                                          text_field=text_field, shard_size=shard_size, overrides=parsed))
    _print_table("ingest", [totals])


@app.command()
def status(
    store: StoreOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Row counts per table, failures by reason, recent runs, LLM token usage, runs holding the store's leases."""
    from synthllm.settings import load_settings
    from synthllm.status import store_status
    from synthllm.store import Store

    report = store_status(Store(load_settings(config, store=store).store))
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    console.print(f"[bold]store[/]: {report['store']}")
    _print_table("tables", [{"table": k, "rows": v} for k, v in report["tables"].items()])
    _print_table("failures", report["failures"])
    _print_table("runs", [{k: v for k, v in run.items() if k != "summary"} for run in report["runs"]])
    usage_columns = ("stage", "model", "requests", "calls", "cached", "failures", "prompt_tokens",
                     "completion_tokens", "seconds")
    _print_table("llm usage (latest runs)", [{k: row[k] for k in usage_columns} for row in report["llm_usage"]])
    if report["leases"]:  # a run at work on the store (or a killed run's lease, until it expires)
        _print_table("leases", report["leases"])
    corrupt = report.get("corrupt_files") or []
    if corrupt:
        console.print(f"[bold red]corrupt files[/]: {len(corrupt)}, left out of the counts above "
                      "(rerun the stage that wrote them, or delete them)")
        for row in corrupt:  # whole paths, unwrapped: they are meant to be copied
            typer.echo(f"  {row['table']}: {row['path']}: {row['error']}")


@app.command()
def synthesize(store: StoreOption = None, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Concepts, concept graph, level 1/2/3 questions and answers, on the store's documents."""
    parsed = parse_overrides(overrides)
    _check_settings(config, store, parsed)
    from flows.synthesize import synthesize_flow

    summary = run_flow(lambda: synthesize_flow(store=store, config=config, overrides=parsed))
    _print_table("synthesize", summary.get("stages", []))


@app.command(name="filter")
def filter_references(store: StoreOption = None, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Stage 1: rate a sample with the LLM, train the classifier, keep the reference documents."""
    parsed = parse_overrides(overrides)
    _check_settings(config, store, parsed)
    from flows.filter_references import filter_references_flow

    summary = run_flow(lambda: filter_references_flow(store=store, config=config, overrides=parsed))
    _print_table("filter", [summary] if isinstance(summary, dict) else summary)


@app.command()
def run(
    sources: Annotated[list[str] | None, typer.Argument(help="Corpus files to ingest first (optional).")] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    export_name: Annotated[str, typer.Option(help="Name of the exported dataset.")] = "synthllm-qa",
) -> None:
    """The whole pipeline: ingest, filter, synthesize, curate, export.

    With the embedded model, reference filtering is skipped (it cannot rate documents): the log
    says so and how to turn it on."""
    parsed = parse_overrides(overrides)
    _check_settings(config, store, parsed)
    from flows.synthesize import run_pipeline_flow

    result = run_flow(lambda: run_pipeline_flow(sources=sources or None, store=store, config=config,
                                                overrides=parsed, export_name=export_name))
    _print_table("synthesize", result["synthesize"].get("stages", []))
    console.print(f"[bold]dataset[/]: {result.get('export')}")


@app.command(name="retry-failures")
def retry_failures(
    stage: Annotated[str, typer.Argument(help="A stage name: see `synthllm stages`.")],
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Clear a stage's failures: the next run retries those items (reruns skip them otherwise)."""
    from synthllm.runs import clear_failures
    from synthllm.settings import load_settings
    from synthllm.store import Store

    try:
        removed = clear_failures(Store(load_settings(config, store=store).store), stage)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="STAGE") from None
    console.print(f"cleared {removed} failure shard(s) of stage {stage}; rerun to retry those items")


@app.command()
def stages() -> None:
    """The registered stages in dependency order: table, item, what each runs after."""
    from synthllm.stages.registry import STAGES

    _print_table("stages", [{"stage": s.name, "flow": s.flow, "table": s.table, "item": getattr(s, "item_key", "-"),
                             "after": ", ".join(s.after) or "-"} for s in STAGES])


def _mount_subcommands() -> None:
    """Sub-apps live next to their logic: ``synthllm scaling ...`` and the curation commands."""
    from synthllm.commands import curate, plan, scaling, server

    app.add_typer(scaling.app, name="scaling", help="Fit and extrapolate the rectified scaling law.")
    app.add_typer(server.app, name="server", help="A background Prefect server (UI) that later commands reuse.")
    app.registered_commands.extend(plan.app.registered_commands)
    for command in curate.app.registered_commands:
        app.registered_commands.append(command)


_mount_subcommands()

if __name__ == "__main__":
    app()
