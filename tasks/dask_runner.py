"""prefect-dask's task runner, with the per-submit work a shard task does not need left out.

Imported only when ``orchestration.task_runner`` is ``dask`` (prefect-dask is an extra).
"""

from __future__ import annotations

from typing import Any

from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture


class ShardDaskTaskRunner(DaskTaskRunner):
    """Submits tasks to Dask as impure (``pure=False``).

    prefect-dask submits every task as a pure Dask call, so Dask hashes the function and all its
    arguments for a key, among them the flow's serialized Prefect context (the whole Prefect
    settings model): about half of what a submit still cost the flow process once the settings
    were serialized once (5.5 -> 2.7 ms a submit, ``bench/submit_cost.py``). The hash buys nothing,
    since each submit carries a new task-run id and so gets a new key; ``pure=False`` gives a
    random key instead."""

    def submit(self, task, parameters: dict[str, Any], wait_for=None, dependencies=None) -> PrefectDaskFuture:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        future = self.client.submit(task, parameters=self._optimize_futures(parameters),
                                    wait_for=self._optimize_futures(wait_for) if wait_for else None,
                                    dependencies=dependencies, return_type="state", pure=False)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)
