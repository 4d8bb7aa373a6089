"""The openai backend against tests/fake_openai_server.py on 127.0.0.1: the faults of a production
server (refused keys, garbage, hangs, dropped connections), in-flight sizing over replicas and
batches, stopping a batch, and a ``kill -9`` mid-batch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_openai_server import (
    Drop,
    Error,
    FakeOpenAIServer,
    Garbage,
    Hang,
    Text,
    prompt_key,
)
from openai_pipeline import YES_NO_SCHEMA, user

from synthllm.engines import LLM, ChatRequest
from synthllm.engines.base import EngineAuthError, RunStopped, clear_stop, request_stop
from synthllm.engines.openai_backend import OpenAIEngine, _LoopThread
from synthllm.settings import SECRET_ENV, EngineSettings
from synthllm.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_stop_left_behind():
    yield
    clear_stop()


@pytest.fixture
def fake_server():
    servers: list[FakeOpenAIServer] = []

    def make(*args, **kwargs) -> FakeOpenAIServer:
        servers.append(FakeOpenAIServer(*args, **kwargs).start())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def fake_settings(base_url: str | list[str], **overrides) -> EngineSettings:
    return EngineSettings(
        **{"backend": "openai", "model": "fake-model", "base_url": base_url, "max_http_retries": 2,
           "http_backoff_s": 0.01, **overrides}
    )


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_stops_the_run_naming_server_and_key_source(fake_server, store_url, status, monkeypatch):
    no_key_in_environment(monkeypatch)
    server = fake_server(lambda body: Error(status, message="key rejected"))
    secret = "sk-config-file-secret"
    settings = fake_settings(server.base_url, api_key=secret, max_concurrency=1)
    store = Store(store_url)
    with pytest.raises(EngineAuthError) as raised:
        LLM(OpenAIEngine(settings), store, settings).run(
            [user(f"q{i}") for i in range(3)], stage="answer", shard_id="s0", run_id="r1"
        )
    message = str(raised.value)
    assert server.base_url in message and f"HTTP {status}" in message
    assert "engine.api_key in the settings" in message
    assert secret not in message
    assert server.total_received == 1  # not retried, and the other items were never sent
    assert store.glob(store.path("tables", "llm_usage", "*")) == []  # no usage row: nothing counted as done


def no_key_in_environment(monkeypatch) -> None:
    for variable in ("OPENAI_API_KEY", *SECRET_ENV.values()):
        monkeypatch.delenv(variable, raising=False)


def test_key_source_is_named_for_environment_and_placeholder(fake_server, monkeypatch):
    no_key_in_environment(monkeypatch)
    server = fake_server(api_key="the-right-key")
    monkeypatch.setenv("OPENAI_API_KEY", "a-wrong-env-key")
    with pytest.raises(EngineAuthError, match="the OPENAI_API_KEY environment variable") as raised:
        OpenAIEngine(fake_settings(server.base_url)).generate([user("q")])
    assert "a-wrong-env-key" not in str(raised.value)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(EngineAuthError, match="no key configured"):
        OpenAIEngine(fake_settings(server.base_url)).generate([user("q")])
    monkeypatch.setenv("SYNTHLLM_ENGINE__API_KEY", "exported-from-config")
    with pytest.raises(EngineAuthError, match="the SYNTHLLM_ENGINE__API_KEY environment variable"):
        OpenAIEngine(fake_settings(server.base_url, api_key="exported-from-config")).generate([user("q")])
    [result] = OpenAIEngine(fake_settings(server.base_url, api_key="the-right-key")).generate([user("q")])
    assert result.ok
    assert server.authorizations == [
        "Bearer a-wrong-env-key", "Bearer EMPTY", "Bearer exported-from-config", "Bearer the-right-key"
    ]


def test_garbage_reply_is_a_per_item_error(fake_server):
    server = fake_server(lambda body: Garbage())
    [result] = OpenAIEngine(fake_settings(server.base_url)).generate([user("q")])
    assert result.error.startswith("invalid_response: not a chat completion") and "Bad Gateway" in result.error
    assert server.total_received == 1


def test_hang_past_the_timeout_is_retried_then_unreachable(fake_server):
    server = fake_server(lambda body: Hang(30))
    started = time.perf_counter()
    # 1 s, not less: on a loaded machine a shorter timeout could end the retry before the server
    # had read it (one CI run counted 1 received of 2 sent)
    [result] = OpenAIEngine(fake_settings(server.base_url, request_timeout_s=1.0, max_http_retries=1)).generate(
        [user("q")]
    )
    assert time.perf_counter() - started < 5
    assert result.error.startswith("engine_unreachable: 2 attempts") and "APITimeoutError" in result.error
    assert server.total_received == 2


def test_connection_dropped_mid_reply_is_retried(fake_server):
    attempts = []

    def drop_first(body: dict):
        attempts.append(prompt_key(body))
        return Drop() if len(attempts) == 1 else '{"answer": "yes"}'

    server = fake_server(drop_first)
    [result] = OpenAIEngine(fake_settings(server.base_url)).generate([user("q")])
    assert result.ok and result.attempts == 2 and result.text == '{"answer": "yes"}'
    assert server.total_received == 2


def test_429_retry_after_from_the_fake_server(fake_server):
    replies = iter([Error(429, retry_after="0.3")])
    server = fake_server(lambda body: next(replies, "ok"))
    started = time.perf_counter()
    [result] = OpenAIEngine(fake_settings(server.base_url)).generate([user("q")])
    assert result.ok and result.attempts == 2 and time.perf_counter() - started >= 0.3


def test_in_flight_is_max_concurrency_per_replica_shared_by_batches(fake_server):
    """2 replicas x max_concurrency 3: 3 in flight at each, 6 in all, however many batches run.

    Replies are held until 6 requests are in flight and then released together, so every round
    is the 6 the engine may send at once: split 3 + 3 only if it fills each replica's slots (the
    split does not depend on which server thread happens to answer first)."""
    arrivals = itertools.count()
    rounds = [threading.Event() for _ in range(4)]
    counting = threading.Lock()

    def answer(body: dict) -> Text:
        with counting:
            arrival = next(arrivals)
        this_round = rounds[arrival // 6]
        if arrival % 6 == 5:
            this_round.set()
        return Text("ok", held_until=this_round)

    replicas = [fake_server(answer) for _ in range(2)]
    engine = OpenAIEngine(fake_settings([r.base_url for r in replicas], max_concurrency=3))
    outcomes: list[list] = []
    threads = [
        threading.Thread(target=lambda b=b: outcomes.append(engine.generate([user(f"{b}-{i}") for i in range(12)])))
        for b in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [all(r.ok for r in batch) for batch in outcomes] == [True, True]
    assert all(event.is_set() for event in rounds)  # every round had 6 in flight
    assert [r.max_in_flight for r in replicas] == [3, 3]
    assert [r.total_received for r in replicas] == [12, 12]


def test_a_slow_replica_gets_no_more_than_its_share_in_flight(fake_server):
    """max_concurrency is per replica: a replica holding its 3 replies gets no 4th request while
    the other replica's slots keep turning over (it is released once the other has served 27)."""
    fast_arrivals = itertools.count(1)
    release = threading.Event()

    def fast(body: dict) -> str:
        if next(fast_arrivals) == 27:
            release.set()
        return "ok"

    slow_server = fake_server(lambda body: Text("ok", held_until=release))
    fast_server = fake_server(fast)
    engine = OpenAIEngine(fake_settings([slow_server.base_url, fast_server.base_url], max_concurrency=3))
    results = engine.generate([user(f"q{i}") for i in range(30)])
    assert all(r.ok for r in results)
    assert slow_server.max_in_flight == 3 and fast_server.max_in_flight <= 3
    assert [slow_server.total_received, fast_server.total_received] == [3, 27]


def test_a_retry_goes_to_another_replica_than_the_one_that_failed(fake_server):
    """One retry each, one replica answering 500 to everything: every request still succeeds,
    because its retry avoids the replica that failed it (round-robin alone sends some back)."""
    failing = fake_server(lambda body: Error(500))
    live = fake_server(lambda body: "ok")
    engine = OpenAIEngine(fake_settings([failing.base_url, live.base_url], max_http_retries=1))
    results = engine.generate([user(f"q{i}") for i in range(40)])
    assert [r.ok for r in results] == [True] * 40
    assert max(failing.received.values()) == 1 and live.total_received == 40


def test_a_request_backing_off_leaves_its_slot_to_the_others(fake_server):
    """One slot: while "a" waits out a 429's Retry-After, "b" is sent (not after a's retry)."""
    arrived: dict[str, list[float]] = {}
    replies = iter([Error(429, retry_after="1")])

    def answer(body: dict):
        key = prompt_key(body)
        arrived.setdefault(key, []).append(time.perf_counter())
        return next(replies, "ok") if key == "a" else "ok"

    server = fake_server(answer)
    results = OpenAIEngine(fake_settings(server.base_url, max_concurrency=1)).generate([user("a"), user("b")])
    assert [r.ok for r in results] == [True, True] and results[0].attempts == 2
    assert arrived["b"][0] < arrived["a"][1] - 0.5  # b went out during a's backoff


def test_batches_at_once_share_one_pool_of_senders(fake_server):
    """Four batches on one engine: at most max_concurrency x replicas coroutines send requests,
    not that many per batch (each one more waiting for a slot, a future and a wake-up per request)."""
    server = fake_server(lambda body: Text("ok", delay_s=0.05))
    engine = OpenAIEngine(fake_settings(server.base_url, max_concurrency=4))
    loop = _LoopThread.get()
    busiest = 0
    with ThreadPoolExecutor(4) as pool:
        batches = [pool.submit(engine.generate, [user(f"{b}-{i}") for i in range(40)]) for b in range(4)]
        while not all(batch.done() for batch in batches):
            tasks = asyncio.run_coroutine_threadsafe(_backend_task_count(), loop).result(5)
            busiest = max(busiest, tasks)
            time.sleep(0.02)
        assert all(r.ok for batch in batches for r in batch.result())
    assert server.max_in_flight == 4 and server.total_received == 160
    assert 4 <= busiest <= 4 + 4  # the senders and each batch's coroutine (20 before)


async def _backend_task_count() -> int:
    """Tasks of the openai backend's coroutines on the HTTP loop (not aiohttp's own)."""
    return sum(1 for task in asyncio.all_tasks() if task.get_coro().cr_code.co_filename.endswith("openai_backend.py"))


def test_results_reach_on_result_as_they_arrive(fake_server):
    server = fake_server(lambda body: Text("ok", delay_s=1.0 if prompt_key(body) == "slow" else 0.0))
    arrived: list[tuple[int, float]] = []
    started = time.perf_counter()
    OpenAIEngine(fake_settings(server.base_url)).generate(
        [user("slow"), user("fast")], on_result=lambda index, result: arrived.append((index, time.perf_counter()))
    )
    assert [index for index, _ in arrived] == [1, 0]
    assert arrived[0][1] - started < 0.8  # the fast reply was handed over before the slow one came


def test_stop_request_cancels_in_flight_requests_and_keeps_what_arrived(fake_server, store_url):
    server = fake_server(lambda body: Text(json.dumps({"answer": "yes"}), delay_s=0.2))
    settings = fake_settings(server.base_url, max_concurrency=2, cache_flush_every=1000)
    store = Store(store_url)
    requests = [user(f"q{i}", json_schema=YES_NO_SCHEMA) for i in range(30)]
    outcome: dict = {}

    def run_batch() -> None:
        try:
            LLM(OpenAIEngine(settings), store, settings).run(requests, stage="answer", shard_id="s0", run_id="r1")
        except RunStopped as exc:
            outcome["stopped"] = (exc, time.perf_counter())

    thread = threading.Thread(target=run_batch)
    thread.start()
    deadline = time.monotonic() + 20
    while server.total_answered < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    answered_at_stop = server.total_answered
    asked_at = time.perf_counter()
    request_stop()
    thread.join(10)
    assert "stopped" in outcome and outcome["stopped"][1] - asked_at < 3  # 0.1 s on a quiet machine
    clear_stop()

    asked_before = server.received.copy()
    rerun = LLM(OpenAIEngine(settings), store, settings).run(requests, stage="answer", shard_id="s0", run_id="r2")
    assert all(r.ok for r in rerun)
    # every reply received before the stop was cached; at most max_concurrency were still in transit
    assert sum(r.cached for r in rerun) >= answered_at_stop - settings.max_concurrency >= 2
    asked_again = server.received - asked_before
    assert {f"q{i}" for i, r in enumerate(rerun) if not r.cached} == set(asked_again)
    assert all(count == 1 for count in asked_again.values())


KILLED_CLIENT = """
import json, sys
from synthllm.engines import LLM, ChatRequest
from synthllm.engines.openai_backend import OpenAIEngine
from synthllm.settings import EngineSettings, StoreSettings
from synthllm.store import Store

base_url, store_settings = sys.argv[1:3]
settings = EngineSettings(backend="openai", model="fake-model", base_url=base_url, max_concurrency=4,
                          cache_flush_interval_s=0.2)
requests = [ChatRequest.of([{"role": "user", "content": f"q{i}"}]) for i in range(20)]
store = Store(StoreSettings.model_validate_json(store_settings))
LLM(OpenAIEngine(settings), store, settings).run(requests, stage="answer", shard_id="s0", run_id="r1")
"""


def test_kill_9_mid_batch_loses_only_unanswered_replies(fake_server, any_store):
    """Replies are cached as they arrive: killed with half answered, the rerun asks only the rest."""
    answered_first = {f"q{i}" for i in range(10)}
    server = fake_server(lambda body: Text("ok", delay_s=0.05) if prompt_key(body) in answered_first else Hang(120))
    store = any_store
    client = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, server.base_url, store.settings.model_dump_json()]
    )
    try:
        deadline = time.monotonic() + 60
        cached = 0
        while time.monotonic() < deadline:
            parts = store.glob(store.path("cache", "llm", "answer", "s0", "*.parquet"))
            cached = sum(store.read_parquet_file(part).num_rows for part in parts)
            if cached >= 10:
                break
            time.sleep(0.1)
        assert cached == 10, f"only {cached} replies were in the cache while the run hung on the rest"
    finally:
        client.kill()  # SIGKILL: no cleanup
        client.wait(30)
    assert client.returncode == -9
    assert server.total_answered == 10

    server.responder = lambda body: "ok"
    settings = fake_settings(server.base_url)
    requests = [ChatRequest.of([{"role": "user", "content": f"q{i}"}]) for i in range(20)]
    rerun = LLM(OpenAIEngine(settings), store, settings).run(requests, stage="answer", shard_id="s0", run_id="r2")
    assert [r.cached for r in rerun] == [True] * 10 + [False] * 10
    assert set(server.answered) == {f"q{i}" for i in range(20)} and set(server.answered.values()) == {1}
    assert all(server.received[key] == 1 for key in answered_first)
