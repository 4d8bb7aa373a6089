"""Benchmark: CPU per item of each stage's shard work, without Prefect, planning or the other shards.

Whole-pipeline figures (``bench/pipeline_scale.py``) move by ±10 % between runs on a shared
machine, more than most single cuts to the shard path. This bench isolates that path: it runs the
real flows once with the instant stand-in engine (a ``pipeline_scale.py child`` run), then, in this
process, re-runs planned shards of every stage against a copy of the store with their output
shard removed and an empty response cache, so every request goes through the whole path: request
building, cache keys, the engine call, validation, rows, the vote, the Parquet writes. It reports
process CPU microseconds per item (median over ``--repeats`` shards of each stage; the first shard
run of a stage also pays its one-off warm-up and is left out) and the weighted CPU per LLM request
of a full run. The stand-in's own reply CPU (the GPU's share) is reported beside it.

    python bench/shard_cpu.py [--documents 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from pipeline_scale import spawn  # noqa: E402 - one child run, as pipeline_scale makes them

STAGES = ("concepts", "level1", "level2", "level3", "question_gate", "answer")


def measure(source: Path, copy: Path, repeats: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from synthllm.engines.standin import REPLY_CPU
    from synthllm.plans import read_plan
    from synthllm.settings import load_settings
    from synthllm.stages.registry import stage as registered
    from synthllm.stages.runner import run_shard
    from synthllm.store import Store

    from synthllm import runs

    shutil.copytree(source, copy)
    shutil.rmtree(copy / "cache", ignore_errors=True)
    settings = load_settings(None, {"filter.enabled": False, "engine.backend": "standin"}, str(copy))
    if hasattr(runs, "freeze_startup_objects"):  # what a flow run does first (absent from older code)
        runs.freeze_startup_objects()
    store = Store(settings.store)
    stages: dict[str, Any] = {}
    for name in STAGES:
        stage = registered(name)
        plans = sorted(p.name.removesuffix(".parquet") for p in (copy / "plans" / name).glob("*.parquet"))
        # the largest shards: a streamed stage's last plans are partial, and fixed costs would dominate them
        sizes = {shard: len(read_plan(store, name, shard).item_ids) for shard in plans}
        largest = sorted(plans, key=lambda shard: (-sizes[shard], shard))[: repeats + 1]
        per_item, reply = [], []
        for index, shard in enumerate(largest):
            (copy / "tables" / stage.table / f"{shard}.parquet").unlink(missing_ok=True)
            cpu, replies = time.process_time(), REPLY_CPU.seconds
            summary = run_shard(store, settings, "bench-shard-cpu", stage, shard)
            cpu, replies = time.process_time() - cpu, REPLY_CPU.seconds - replies
            if index > 0 or len(largest) == 1:  # the first run of a stage pays its warm-up
                per_item.append(1e6 * cpu / summary.items)
                reply.append(1e6 * replies / summary.items)
        stages[name] = {"shard_items": [sizes[shard] for shard in largest[-len(per_item):]],
                        "cpu_us_per_item": round(statistics.median(per_item), 1),
                        "cpu_us_per_item_range": [round(min(per_item), 1), round(max(per_item), 1)],
                        "standin_reply_us_per_item": round(statistics.median(reply), 1)}
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="shards measured per stage (the largest), after a warm-up one")
    parser.add_argument("--workdir", help="keep the run here; a folder holding one is reused, so two versions "
                                          "of the code can be measured on the same store")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shard-cpu-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "result.json").exists():  # the real flows, stand-in engine, in a child process
            spawn(["--mode", "standin", "--documents", str(args.documents)], work, timeout_s=7200)
        run = json.loads((work / "result.json").read_text())
        shutil.rmtree(work / "copy", ignore_errors=True)
        stages = measure(work / "store", work / "copy", args.repeats)
    requests = run["requests_by_stage"]
    items = {**requests, "question_gate": sum(run["questions_by_level"].values())}
    shard_cpu_s = sum(stages[s]["cpu_us_per_item"] * items.get(s, 0) for s in STAGES) / 1e6
    reply_s = sum(stages[s]["standin_reply_us_per_item"] * items.get(s, 0) for s in STAGES) / 1e6
    calls = run["llm_requests"]
    print(json.dumps({
        "benchmark": "shard_cpu", "documents": run["documents"], "cores": os.cpu_count(), "stages": stages,
        "items_in_the_run": items,
        # the shard path's CPU for the whole run, per LLM request, with and without the stand-in's replies
        "shard_path_cpu_ms_per_request": round(1000 * shard_cpu_s / calls, 3),
        "shard_path_cpu_ms_per_request_without_replies": round(1000 * (shard_cpu_s - reply_s) / calls, 3),
        "pipeline_run": {"synthesize": run["phases"]["synthesize"],
                         "coordinator_cpu_ms_per_request": run["coordinator_cpu_ms_per_request"],
                         "flow_process_cpu_ms_per_request": run.get("flow_process_cpu_ms_per_request")},
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
