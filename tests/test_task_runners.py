"""What Prefect's runtime costs the flow process: submitting shard tasks to a process task runner
(Dask, Ray), and ending a flow run.

Every shard is one submit from the flow process, whose CPU the workers share on a small machine:
``bench/submit_cost.py`` measures it (prefect-dask's stock runner: about 22 ms a submit; ours: under
3 ms). These tests pin down the two causes we removed without changing what a task receives, and
the heartbeat wait every flow run's end no longer has.
"""

from __future__ import annotations

import json

import pytest

from synthllm.settings import load_settings, settings_payload


def test_process_runners_serialize_prefects_settings_once_per_context(monkeypatch) -> None:
    """prefect-dask and prefect-ray serialize the flow's Prefect settings with every submit (about
    14 ms of the flow's CPU each, most of what a submit cost). Once per settings context is enough,
    and a new context (temporary_settings) still travels with its own values."""
    from prefect.context import SettingsContext, serialize_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.common import serialize_settings_once

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
