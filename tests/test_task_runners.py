"""What submitting a shard task costs the flow process on a process task runner (Dask, Ray).

Every shard is one submit from the flow process, whose CPU the workers share on a small machine:
``bench/submit_cost.py`` measures it (prefect-dask's stock runner: about 22 ms a submit; ours: under
3 ms). These tests pin down the two causes we removed without changing what a task receives.
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
