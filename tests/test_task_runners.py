"""What Prefect's runtime costs: submitting shard tasks to a process task runner (Dask, Ray),
running them on its workers, and ending a flow run (``tasks.prefect_costs``).

Every shard is one submit from the flow process, whose CPU the workers share on a small machine:
``bench/submit_cost.py`` measures it (prefect-dask's stock runner: about 22 ms a submit; ours: under
3 ms). Every shard is also one task run on a worker, which built Prefect's settings and two TLS
contexts for it (about 60 ms of the worker's CPU). These tests pin down the causes we removed
without changing what a task receives, and the heartbeat wait every flow run's end no longer has.
"""

from __future__ import annotations

import json

import pytest
from prefect import task as task_decorator

from synthllm.settings import load_settings, settings_payload

# As in every synthllm task module: a Dask worker unpickling this module's tasks gets tasks.prefect_costs
import tasks.common  # noqa: F401 - imported for its patches


def test_process_runners_serialize_prefects_settings_once_per_context(monkeypatch) -> None:
    """prefect-dask and prefect-ray serialize the flow's Prefect settings with every submit (about
    14 ms of the flow's CPU each, most of what a submit cost). Once per settings context is enough,
    and a new context (temporary_settings) still travels with its own values."""
    from prefect.context import SettingsContext, serialize_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.prefect_costs import serialize_settings_once

    serialized: list[str] = []
    original = SettingsContext.serialize

    def counting(self, include_secrets: bool = True):
        serialized.append(str(self.settings.api.url))
        return original(self, include_secrets=include_secrets)

    monkeypatch.setattr(SettingsContext, "serialize", counting)  # restored after the test
    serialize_settings_once()
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        first = [serialize_context()["settings_context"] for _ in range(3)]
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4201/api"}):
        second = serialize_context()["settings_context"]
    assert serialized == ["http://127.0.0.1:4200/api", "http://127.0.0.1:4201/api"]
    assert first[0] is first[2] and first[0]["settings"]["api"]["url"] == "http://127.0.0.1:4200/api"
    assert second["settings"]["api"]["url"] == "http://127.0.0.1:4201/api"
    serialize_settings_once()  # a second runner in the same process does not wrap it twice
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4202/api"}):
        serialize_context(), serialize_context()
    assert serialized[-1] == "http://127.0.0.1:4202/api" and len(serialized) == 3


@pytest.mark.integration
def test_dask_shard_submits_hash_no_arguments(monkeypatch, prefect_harness) -> None:
    """prefect-dask submits tasks as pure Dask calls: Dask hashed the function and every argument,
    the serialized Prefect context among them, on every submit. Each submit has its own task-run
    id, so the hash never found a duplicate: ours submits impure calls, and each still runs once."""
    import distributed.client
    from prefect import flow, task

    from tasks.common import make_task_runner

    hashed: list[str] = []
    original = distributed.client.tokenize
    monkeypatch.setattr(distributed.client, "tokenize", lambda *args, **kw: hashed.append("x") or original(*args, **kw))
    settings = load_settings(None, {"orchestration.task_runner": "dask", "orchestration.task_workers": 1})
    text = json.dumps(settings_payload(settings))

    @task
    def shard(shard_id: str, settings_payload: str) -> str:
        return f"{shard_id}:{json.loads(settings_payload)['orchestration']['task_runner']}"

    @flow
    def two_identical_submits() -> list[str]:
        with make_task_runner(settings) as runner:
            futures = [runner.submit(shard, {"shard_id": "a", "settings_payload": text}) for _ in range(2)]
            keys = {future.wrapped_future.key for future in futures}
            return [future.result() for future in futures] + [len(keys)]

    assert two_identical_submits() == ["a:dask", "a:dask", 2]
    assert hashed == []


def test_a_flow_run_ends_with_its_work_and_still_sends_heartbeats(monkeypatch, prefect_harness) -> None:
    """Prefect's flow-run heartbeat thread sleeps in whole-second steps, and a sync flow run's exit
    joined it: every flow and subflow run ended up to a second after its work (a flow that does
    nothing took 1.09 s). Here the thread's step never ends on its own, so an exit that joins it
    takes the join's whole 2 s timeout; one that only tells it to stop returns at once."""
    import threading
    import time

    import prefect.flow_engine
    from prefect import flow
    from prefect.settings import temporary_settings

    import tasks.common  # noqa: F401 - every flow module imports it, and with it the unjoined heartbeats

    real_time, stepping, released, beats, work_done = (prefect.flow_engine.time, threading.Event(), threading.Event(),
                                                        [], [])

    class HeldSteps:
        """``time`` for the flow engine: the heartbeat thread's 1 s steps last until the test ends."""

        def __getattr__(self, name: str):
            return getattr(real_time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            if threading.current_thread() is threading.main_thread():
                real_time.sleep(seconds)
            else:
                stepping.set()
                released.wait(30)

    emit = prefect.flow_engine.BaseFlowRunEngine._emit_flow_run_heartbeat
    monkeypatch.setattr(prefect.flow_engine, "time", HeldSteps())
    monkeypatch.setattr(prefect.flow_engine.BaseFlowRunEngine, "_emit_flow_run_heartbeat",
                        lambda engine, *args: beats.append(engine.flow_run.id) or emit(engine, *args))

    @flow
    def until_the_heartbeat_thread_steps() -> int:
        stepping.wait(10)
        work_done.append(time.perf_counter())
        return len(beats)

    try:
        with temporary_settings({"flows.heartbeat_frequency": 30}):
            assert until_the_heartbeat_thread_steps() == 1
            took = time.perf_counter() - work_done[0]
    finally:
        released.set()
    assert took < 1.5, f"the flow run ended {took:.2f} s after its work: it waited for the heartbeat thread"


def test_a_tasks_prefect_settings_are_built_once_per_content(monkeypatch) -> None:
    """A task sent to a worker brings the flow's Prefect settings, and Prefect validated the whole
    settings model again for every task (24 ms of the worker's CPU). The same content is built
    once; other settings are built for themselves and hydrate with their own values."""
    import copy
    from uuid import uuid4

    import prefect.task_engine
    from prefect.context import SettingsContext, serialize_context
    from prefect.settings import PREFECT_API_URL, Settings, temporary_settings

    built: list[str] = []
    original = Settings.__init__
    monkeypatch.setattr(Settings, "__init__", lambda self, *a, **kw: built.append("x") or original(self, *a, **kw))
    urls = [f"http://127.0.0.1:4200/api/{uuid4().hex}", f"http://127.0.0.1:4201/api/{uuid4().hex}"]
    sent = []
    for url in urls:
        with temporary_settings({PREFECT_API_URL: url}):
            sent.append(serialize_context())
    built.clear()
    hydrated = []
    for context in (sent[0], sent[0], sent[1], sent[0]):
        with prefect.task_engine.hydrated_context(copy.deepcopy(context)):  # a copy, as each task unpickles one
            hydrated.append(SettingsContext.get().settings.api.url)
    assert hydrated == [urls[0], urls[0], urls[1], urls[0]]
    assert len(built) == 2


def test_prefect_clients_share_one_tls_context_per_setting() -> None:
    """Every Prefect client loaded the whole CA bundle into a TLS context of its own (14-20 ms of CPU,
    also for an http:// API). Clients now share one per TLS setting; one given its own keeps it."""
    import ssl

    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

    def tls_context(client) -> ssl.SSLContext:
        return client._client._transport._pool._ssl_context

    api = "http://127.0.0.1:4200/api"
    first, second, other_kind = SyncPrefectClient(api), SyncPrefectClient(api), PrefectClient(api)
    assert tls_context(first) is tls_context(second) is tls_context(other_kind)
    assert tls_context(first).verify_mode == ssl.CERT_REQUIRED
    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        insecure = SyncPrefectClient(api)
    assert tls_context(insecure).verify_mode == ssl.CERT_NONE and tls_context(SyncPrefectClient(api)) is tls_context(first)
    own = ssl.create_default_context()
    assert tls_context(SyncPrefectClient(api, httpx_settings={"verify": own})) is own


@task_decorator
def probe(n: int) -> int:
    """A task for a Dask worker: defined here, so the worker imports this module (and tasks.common)."""
    return n


BUILT: dict[str, int] = {}


def count_builds() -> None:
    """On a worker: count the Prefect settings and TLS contexts this process builds from now on."""
    import ssl

    from prefect.settings import Settings

    BUILT.update(settings=0, tls=0)
    settings_init, create_context = Settings.__init__, ssl.create_default_context

    def counting_settings(self, *args, **kwargs):
        BUILT["settings"] += 1
        settings_init(self, *args, **kwargs)

    def counting_context(*args, **kwargs):
        BUILT["tls"] += 1
        return create_context(*args, **kwargs)

    Settings.__init__, ssl.create_default_context = counting_settings, counting_context


def builds() -> dict[str, int]:
    return dict(BUILT)


@pytest.mark.integration
def test_a_dask_worker_builds_prefects_settings_and_tls_context_once_not_per_task(prefect_harness) -> None:
    """On a real Dask worker: once its first tasks ran, more tasks build no Prefect settings and no
    TLS context (before: one settings model and two TLS contexts per task)."""
    from prefect import flow

    from tasks.common import make_task_runner

    settings = load_settings(None, {"orchestration.task_runner": "dask", "orchestration.task_workers": 1})

    @flow
    def tasks_on_one_worker() -> tuple[list[int], list[dict[str, int]]]:
        with make_task_runner(settings) as runner:
            assert [runner.submit(probe, {"n": n}).result() for n in range(2)] == [0, 1]
            runner.client.run(count_builds)
            futures = [runner.submit(probe, {"n": n}) for n in range(4)]
            return [future.result() for future in futures], list(runner.client.run(builds).values())

    values, counts = tasks_on_one_worker()
    assert values == [0, 1, 2, 3]
    assert counts == [{"settings": 0, "tls": 0}]


def event_loop_timers(dask_worker) -> dict[str, float]:
    """A Dask server's periodic callbacks that wake its event loop often: name -> period in ms."""
    return {name: callback.callback_time for name, callback in dask_worker.periodic_callbacks.items()
            if name in ("tick", "profile", "profile-cycle")}


@pytest.mark.integration
def test_a_temporary_dask_cluster_runs_with_the_shard_task_settings(prefect_harness) -> None:
    """Dask's defaults suit millisecond tasks: each worker's loop samples the running task's stack
    every 10 ms (the dashboard's profile) and every loop times itself every 20 ms, each time taking
    the GIL from the shard. The temporary cluster the dask runner starts has no profiling and a 1 s
    tick in its scheduler, nannies and workers (infra/dask for a running cluster), and the flow's
    own Dask settings are left as they were."""
    import dask.config
    import distributed  # noqa: F401 - registers Dask's distributed settings
    from prefect import flow

    from tasks.common import make_task_runner

    settings = load_settings(None, {"orchestration.task_runner": "dask", "orchestration.task_workers": 1})
    before = dask.config.get("distributed.admin.tick.interval")

    @flow
    def timers_of_a_temporary_cluster() -> list[dict[str, float]]:
        with make_task_runner(settings) as runner:
            assert runner.submit(probe, {"n": 3}).result() == 3
            return [*runner.client.run(event_loop_timers).values(),
                    *runner.client.run(event_loop_timers, nanny=True).values(),
                    runner.client.run_on_scheduler(event_loop_timers)]

    assert timers_of_a_temporary_cluster() == [{"tick": 1000.0}] * 3
    assert dask.config.get("distributed.admin.tick.interval") == before
