"""Seconds from typing a synthllm command to its first task, with and without a running server.

    .venv/bin/python bench/cli_startup.py [--repeat 2]

Runs ``synthllm ingest data/sample/openstax-algebra.jsonl --store <fresh folder>`` in a private
PREFECT_HOME: first with no server (Prefect starts a temporary one per command; the first of
those runs also migrates the new database and is reported apart), then after
``synthllm server start``, whose server the command finds and reuses. For each it reports the
time to the flow's first log line, to the first task's log line and to exit, plus the child
processes' CPU seconds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTHLLM = str(Path(sys.executable).parent / "synthllm")
SOURCE = str(REPO / "data" / "sample" / "openstax-algebra.jsonl")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str]) -> dict[str, float | None]:
    """Wall seconds to the flow's first line, the first task-run line and exit, and CPU seconds."""
    cpu, started = children_cpu_s(), time.perf_counter()
    marks: dict[str, float | None] = {"to_flow_s": None, "to_first_task_s": None}
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        now = round(time.perf_counter() - started, 2)
        if marks["to_flow_s"] is None and "Beginning flow run" in line:
            marks["to_flow_s"] = now
        if marks["to_first_task_s"] is None and "Task run '" in line:
            marks["to_first_task_s"] = now
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(lines[-30:])}")
    return {**marks, "total_s": round(time.perf_counter() - started, 2), "cpu_s": round(children_cpu_s() - cpu, 2)}


def median_run(repeat: int, env: dict[str, str], workdir: Path, label: str) -> dict[str, float | None]:
    runs = [timed([SYNTHLLM, "ingest", SOURCE, "--store", str(workdir / f"{label}-{i}")], env) for i in range(repeat)]
    return {key: round(statistics.median(r[key] for r in runs), 2) if runs[0][key] is not None else None
            for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (median reported)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="synthllm-startup-"))
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    result: dict[str, object] = {"command": f"synthllm ingest {Path(SOURCE).name}", "repeat": args.repeat}
    result["first_temporary_server"] = timed([SYNTHLLM, "ingest", SOURCE, "--store", str(workdir / "first")], env)
    result["temporary_server"] = median_run(args.repeat, env, workdir, "temporary")
    started = time.perf_counter()
    subprocess.run([SYNTHLLM, "server", "start"], env=env, check=True, capture_output=True)
    result["server_start_s"] = round(time.perf_counter() - started, 2)
    try:
        result["running_server"] = median_run(args.repeat, env, workdir, "running")
    finally:
        subprocess.run([SYNTHLLM, "server", "stop"], env=env, check=True, capture_output=True)
    before, after = result["temporary_server"]["to_first_task_s"], result["running_server"]["to_first_task_s"]
    result["first_task_speedup"] = round(before / after, 1) if before and after else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
