"""``synthllm plan``: requests, tokens, GPU-hours, wall time and coordinator capacity of a run."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from synthllm.capacity import (
    PAPER_DOCUMENTS,
    PAPER_OVERRIDES,
    Calibration,
    PlanAssumptions,
    PlanError,
    Throughput,
    plan,
    store_calibration,
    store_documents,
    workload,
)

app = typer.Typer(help="Capacity planning.")
console = Console()


Documents = Annotated[int | None, typer.Option(
    "--documents", help="Reference documents (default: the store's, or 520,000 with --profile paper).")]
StoreUrl = Annotated[str | None, typer.Option(
    "--store", help="Count the store's documents; calibrate tokens per request from its llm_usage rows.")]
Profile = Annotated[str, typer.Option(
    "--profile", help="settings | paper (the paper's generation settings and 520K documents).")]
Gpus = Annotated[list[int] | None, typer.Option("--gpus", help="GPU count (repeat). Default: 8, 16, 64.")]
GpuTokens = Annotated[float, typer.Option("--gpu-tokens-per-s", help="Output tokens/s per GPU (~6,000: 7-8B model).")]
GpuPromptTokens = Annotated[float, typer.Option("--gpu-prompt-tokens-per-s", help="Prefill tokens/s per GPU.")]
GpuRequests = Annotated[float | None, typer.Option(
    "--gpu-requests-per-s", help="Requests/s per GPU, when that binds before tokens.")]
AnswerGpuTokens = Annotated[float | None, typer.Option(
    "--answer-gpu-tokens-per-s", help="Output tokens/s per GPU of the answer model.")]
Utilisation = Annotated[float, typer.Option("--utilisation", help="Share of wall time GPUs are busy.")]
MsPerRequest = Annotated[float, typer.Option("--coordinator-ms-per-request", help="Coordinator CPU ms per request.")]


@app.command(name="plan")
def plan_command(
    documents: Documents = None,
    store: StoreUrl = None,
    config: Annotated[str | None, typer.Option("--config", help="YAML or TOML settings file.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value, repeatable.")] = None,
    profile: Profile = "settings",
    gpus: Gpus = None,
    gpu_tokens_per_s: GpuTokens = Throughput.completion_tokens_per_s,
    gpu_prompt_tokens_per_s: GpuPromptTokens = Throughput.prompt_tokens_per_s,
    gpu_requests_per_s: GpuRequests = None,
    answer_gpu_tokens_per_s: AnswerGpuTokens = None,
    utilisation: Utilisation = Throughput.utilisation,
    ms_per_request: MsPerRequest = 0.2,
    calibrate: Annotated[bool, typer.Option(help="Use the store's measured tokens per request.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Requests, prompt/completion tokens and GPU-hours per stage; wall time and coordinator needs on G GPUs."""
    from synthllm.cli import parse_overrides
    from synthllm.settings import load_settings
    from synthllm.store import Store

    if profile not in ("settings", "paper"):
        raise typer.BadParameter(f"--profile must be settings or paper, got {profile!r}")
    layered = {**(PAPER_OVERRIDES if profile == "paper" else {}), **parse_overrides(overrides)}
    settings = load_settings(config, overrides=layered, store=store)
    target = Store(settings.store) if store else None
    if documents is None:
        if target is None and profile != "paper":
            raise typer.BadParameter("give --documents N, --store URL or --profile paper")
        documents = store_documents(target, settings) if target else PAPER_DOCUMENTS
        if documents == 0:
            raise typer.BadParameter(f"store {target.url} holds no documents: ingest a corpus or give --documents N")
    calibration = store_calibration(target, settings) if target and calibrate else Calibration()
    try:
        throughput = Throughput(gpu_tokens_per_s, gpu_prompt_tokens_per_s, gpu_requests_per_s,
                                answer_gpu_tokens_per_s, utilisation)
        report = plan(workload(documents, settings, PlanAssumptions(), calibration), throughput, gpus or [8, 16, 64],
                      ms_per_request)
    except PlanError as error:
        raise typer.BadParameter(str(error)) from None
    report["profile"] = profile
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    _print(report)


HEADERS = {"qa_pairs": "QA pairs", "question_tokens": "question tok", "answer_tokens": "answer tok",
           "prompt_tokens": "prompt tok", "completion_tokens": "completion tok", "gpu_hours": "GPU-h",
           "tokens_source": "tokens", "wall_hours": "wall h", "peak_stage": "busiest stage",
           "coordinator_requests_per_s": "coord. req/s", "coordinator_processes": "coord. procs"}
TEXT_COLUMNS = ("stage", "tokens_source", "peak_stage")


def _table(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(HEADERS.get(column, column), justify="left" if column in TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[_fmt(value) for value in row.values()])
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _print(report: dict[str, Any]) -> None:
    console.print(f"[bold]plan[/]: {report['documents']:,} documents -> {report['qa_pairs']:,} QA pairs, "
                  f"{report['dataset_tokens']:,} dataset tokens (profile {report['profile']})")
    _table("questions by level", report["levels"])
    _table("stages", [*report["stages"], {"stage": "total", **report["total"], "tokens_source": ""}])
    _table("wall time and coordinator", [{k: v for k, v in row.items() if not k.startswith("stage_")}
                                         for row in report["gpus"]])
    coordinator = report["coordinator"]
    console.print(f"coordinator CPU: {coordinator['cpu_hours']:,.2f} h at {coordinator['ms_per_request']} ms/request "
                  f"= {coordinator['cpu_share_of_gpu_time']:.4%} of GPU time")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning[/]: {warning}")
