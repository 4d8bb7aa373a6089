"""Benchmark: the flow process's CPU per shard-task submit to Dask (issue 13).

Every shard is one Prefect task submitted from the flow process, so what a submit costs there is
coordinator CPU that two Dask workers on two cores must share (the workers' speed-up). Three ways,
each in a fresh process with its own Dask worker and temporary Prefect API, 60 timed submits of a
no-op task with the shard task's parameters:

- ``stock``: prefect-dask's ``DaskTaskRunner`` with the settings payload as a nested dict (before);
- ``payload_text``: the same runner, the payload as JSON text and Prefect's settings context
  serialized once per context (``tasks.prefect_costs.serialize_settings_once``);
- ``synthllm``: what synthllm runs, also impure submits (``tasks.dask_runner.ShardDaskTaskRunner``).

CPU is this process's (the flow thread, and the Dask client's and scheduler's threads while the
submits run). Prints one JSON object::

    python bench/submit_cost.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow, task

REPO = Path(__file__).resolve().parents[1]
WAYS = ("stock", "payload_text", "synthllm")
SUBMITS = 60


@task
def noop_shard(stage: str, shard_id: str, settings_payload: dict | str, run_id: str) -> int:
    return 1


@flow
def measure(way: str) -> dict[str, float]:
    """The runner is made inside the flow: the flow travels with every submit (Prefect's context)."""
    from prefect_dask import DaskTaskRunner

    from synthllm.settings import load_settings, settings_payload
    from tasks.common import make_task_runner
    from tasks.prefect_costs import serialize_settings_once

    settings = load_settings(None, {"orchestration.task_runner": "dask", "orchestration.task_workers": 1})
    payload: dict | str = settings_payload(settings)
    cluster = {"n_workers": 1, "threads_per_worker": 1, "processes": True}
    if way == "stock":
        runner = DaskTaskRunner(cluster_kwargs=cluster)
    elif way == "payload_text":
        serialize_settings_once()
        runner, payload = DaskTaskRunner(cluster_kwargs=cluster), json.dumps(payload)
    else:
        runner, payload = make_task_runner(settings), json.dumps(payload)
    with runner:
        def submit(index: int):
            return runner.submit(noop_shard, {"stage": "level1", "shard_id": f"s{index}", "settings_payload": payload,
                                              "run_id": "bench"})

        [future.result() for future in [submit(i) for i in range(3)]]  # warm: connections, imports
        cpu, wall = time.process_time(), time.perf_counter()
        futures = [submit(i) for i in range(SUBMITS)]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        [future.result() for future in futures]
    return {"cpu_ms_per_submit": round(1000 * cpu / SUBMITS, 2), "wall_ms_per_submit": round(1000 * wall / SUBMITS, 2)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        print(json.dumps(measure(sys.argv[2])))
        return
    out: dict[str, object] = {"benchmark": "submit_cost", "submits": SUBMITS}
    for way in WAYS:
        with tempfile.TemporaryDirectory() as home:
            done = subprocess.run([sys.executable, __file__, "child", way], capture_output=True, text=True, cwd=REPO,
                                  env={"PATH": "/usr/bin:/bin", "PREFECT_HOME": home, "PYTHONPATH": str(REPO),
                                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, check=True, timeout=600)
        out[way] = json.loads(done.stdout.strip().splitlines()[-1])
    base = out["stock"]["cpu_ms_per_submit"]
    out["cpu_ratio_stock_over_synthllm"] = round(base / out["synthllm"]["cpu_ms_per_submit"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
