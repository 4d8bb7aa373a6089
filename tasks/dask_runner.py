"""prefect-dask's task runner, with the per-submit work a shard task does not need left out.

Imported only when ``orchestration.task_runner`` is ``dask`` (prefect-dask is an extra).
"""

from __future__ import annotations

from typing import Any

import dask.config
from prefect_dask import DaskTaskRunner
from prefect_dask.client import PrefectDaskClient
from prefect_dask.task_runners import PrefectDaskFuture

# Dask's settings for processes that run shard tasks (each seconds to minutes of Python), also in
# infra/dask/distributed.yaml for a running cluster's scheduler and workers. Dask's defaults suit
# many millisecond tasks: every 10 ms a worker's event loop samples the running task's stack for
# the dashboard's profile, and every 20 ms every scheduler, nanny and worker loop times itself,
# each wake-up taking the GIL from the shard's thread. Without them a cluster's idle CPU halves and
# a pure-Python task spends 2-5 % less CPU on its worker (bench/dask_settings.py).
SHARD_TASK_DASK_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
}


class ShardDaskTaskRunner(DaskTaskRunner):
    """Submits tasks to Dask as impure (``pure=False``); a temporary cluster it starts runs with
    ``SHARD_TASK_DASK_CONFIG``.

    prefect-dask submits every task as a pure Dask call, so Dask hashes the function and all its
    arguments for a key, among them the flow's serialized Prefect context (the whole Prefect
    settings model): about half of what a submit still cost the flow process once the settings
    were serialized once (5.5 -> 2.7 ms a submit, ``bench/submit_cost.py``). The hash buys nothing,
    since each submit carries a new task-run id and so gets a new key; ``pure=False`` gives a
    random key instead."""

    @property
    def client(self) -> PrefectDaskClient:
        """prefect-dask starts a temporary cluster at the client's first use: its scheduler and
        nannies read the settings as they start, and each nanny hands them to its worker process.
        A running cluster brings its own."""
        if self._client is None:
            with dask.config.set(SHARD_TASK_DASK_CONFIG):
                return super().client
        return self._client

    def submit(self, task, parameters: dict[str, Any], wait_for=None, dependencies=None) -> PrefectDaskFuture:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        future = self.client.submit(task, parameters=self._optimize_futures(parameters),
                                    wait_for=self._optimize_futures(wait_for) if wait_for else None,
                                    dependencies=dependencies, return_type="state", pure=False)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)
