"""What infra/dask's settings (``tasks.dask_runner.SHARD_TASK_DASK_CONFIG``) save a Dask cluster, against Dask's own.

Two figures per setting, measured alternately in one run so machine noise hits both alike:
- ``idle_cpu_s``: CPU seconds over ``--idle-s`` of a 2-worker local cluster doing nothing, in the
  process holding the scheduler and nannies, and in each worker process;
- ``task_cpu_s``: CPU seconds of a pure-Python task (JSON round trips, like a shard's reply
  handling) on a 1-worker cluster, measured in the worker process (its other threads included).

Prints one JSON object: the median of each figure per setting and the shard settings' ratio to stock.

    .venv/bin/python bench/dask_settings.py [--rounds 4] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def python_work(rounds: int) -> float:
    """CPU seconds of this worker process over ``rounds`` JSON round trips."""
    began = time.process_time()
    for index in range(rounds):
        json.loads(json.dumps({"id": index, "items": [index, str(index)], "usage": {"n": index}}))
    return time.process_time() - began


def measure(settings: dict, idle_s: float, task_rounds: int) -> dict[str, float]:
    import dask.config
    from distributed import Client, LocalCluster

    with dask.config.set(settings):
        idle = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with idle, Client(idle):
        time.sleep(2)  # start-up settles
        me = psutil.Process()
        workers = [child for child in me.children() if "spawn_main" in " ".join(child.cmdline())]
        start = [me.cpu_times()] + [w.cpu_times() for w in workers]
        time.sleep(idle_s)
        end = [me.cpu_times()] + [w.cpu_times() for w in workers]
        spent = [e.user + e.system - s.user - s.system for s, e in zip(start, end, strict=True)]
    with dask.config.set(settings):
        one = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    with one, Client(one) as client:
        client.submit(python_work, 1000, pure=False).result()  # imports and first-call costs
        task = statistics.median(client.submit(python_work, task_rounds, pure=False).result() for _ in range(3))
    return {"idle_scheduler_process_cpu_s": spent[0], "idle_worker_cpu_s": statistics.mean(spent[1:]),
            "task_cpu_s": task}


def main() -> None:
    from tasks.dask_runner import SHARD_TASK_DASK_CONFIG

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two settings")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--task-rounds", type=int, default=200_000)
    args = parser.parse_args()
    settings = {"stock": {}, "shard": SHARD_TASK_DASK_CONFIG}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, values in settings.items():
            figures[name].append(measure(values, args.idle_s, args.task_rounds))
    medians = {name: {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}
               for name, runs in figures.items()}
    print(json.dumps({"settings": {"shard": SHARD_TASK_DASK_CONFIG}, "rounds": args.rounds, "idle_s": args.idle_s,
                      "medians": medians,
                      "shard_to_stock": {key: round(medians["shard"][key] / medians["stock"][key], 2)
                                         for key in medians["stock"]},
                      "cpu_s_this_run": round(sum(psutil.Process().cpu_times()[:2]), 2)}))


if __name__ == "__main__":
    main()
