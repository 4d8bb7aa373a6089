"""The openai backend against real servers on 127.0.0.1.

- a real OpenAI-compatible server (``python -m llama_cpp.server`` with the SmolLM2 GGUF): a batch,
  then the server dying mid-batch, clear per-item errors, and a rerun after restart that makes
  only the missing calls;
- a tiny scripted HTTP server for 5xx / 429 / 4xx answers, backoff and replica round-robin;
- tests/fake_openai_server.py for the faults of a production server (refused keys, garbage,
  hangs, dropped connections), in-flight sizing, stopping a batch and a ``kill -9`` mid-batch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
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

from synthllm.engines import LLM, ChatRequest
from synthllm.engines.base import EngineAuthError, RunStopped, clear_stop, request_stop
from synthllm.engines.openai_backend import OpenAIEngine, _LoopThread
from synthllm.engines.registry import gguf_path
from synthllm.settings import SECRET_ENV, EngineSettings
from synthllm.store import Store

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
YES_NO_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user(text: str, **kwargs) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": text}], **kwargs)


# --------------------------------------------------------------------------- real server
class LlamaServer:
    """``python -m llama_cpp.server`` in a subprocess, serving the tiny model as ``MODEL``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path(MODEL)),
                "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", "1024", "--verbose", "False",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError("llama_cpp.server did not start within 180 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def llama_server():
    server = LlamaServer().start()
    yield server
    server.stop()


def llama_settings(base_url: str, **overrides) -> EngineSettings:
    return EngineSettings(
        backend="openai",
        model=MODEL,
        base_url=base_url,
        json_response_format="json_object",  # llama-cpp-python's server dialect
        max_concurrency=1,
        cache_flush_every=2,
        max_http_retries=2,
        http_backoff_s=0.05,
        request_timeout_s=60,
        **overrides,
    )


def parity_requests(count: int) -> list[ChatRequest]:
    return [
        user(f"Is {i} an even number? Answer yes or no in JSON.", temperature=0.0, max_tokens=24, seed=i,
             json_schema=YES_NO_SCHEMA)
        for i in range(count)
    ]


def test_batch_against_a_real_server(llama_server, store_url):
    settings = llama_settings(llama_server.base_url)
    sentence = user("What is 3 + 4? Answer in one short sentence.", temperature=0.0, max_tokens=24)
    requests = [*parity_requests(2), sentence]
    results = LLM(OpenAIEngine(settings), Store(store_url), settings).run(
        requests, stage="probe", shard_id="s0", run_id="r1"
    )
    for result in results[:2]:
        assert result.ok, result.error
        assert result.parsed["answer"] in {"yes", "no"}
    assert results[2].text and results[2].error in (None, "truncated: reply hit max_tokens (24)")
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)


class KillServerBeforeSecondChunk:
    """Wraps an engine: the server is killed after the first chunk of a batch was answered."""

    def __init__(self, engine: OpenAIEngine, server: LlamaServer) -> None:
        self.engine, self.server = engine, server
        self.backend, self.model_id = engine.backend, engine.model_id
        self.chunks = 0

    def generate(self, requests: list[ChatRequest]) -> list:
        self.chunks += 1
        if self.chunks == 2:
            self.server.stop()
        return self.engine.generate(requests)

    def close(self) -> None:
        self.engine.close()


def test_server_dying_mid_batch_then_rerun_makes_only_missing_calls(llama_server, store_url):
    store = Store(store_url)
    settings = llama_settings(llama_server.base_url)
    requests = parity_requests(6)  # chunks of max(flush_every, 4 * max_concurrency) = 4
    engine = KillServerBeforeSecondChunk(OpenAIEngine(settings), llama_server)

    started = time.perf_counter()
    results = LLM(engine, store, settings).run(requests, stage="probe", shard_id="s1", run_id="r1")
    assert time.perf_counter() - started < 120
    assert engine.chunks == 2
    assert all(r.ok for r in results[:4]), [r.error for r in results[:4]]
    for result in results[4:]:
        assert result.error.startswith("engine_unreachable: 3 attempts")
    [usage] = store.read_table("llm_usage").to_dicts()
    assert (usage["calls"], usage["failures"]) == (6, 2)

    restarted = LlamaServer().start()
    try:
        settings = llama_settings(restarted.base_url)
        rerun = LLM(OpenAIEngine(settings), store, settings).run(requests, stage="probe", shard_id="s1", run_id="r2")
    finally:
        restarted.stop()
    assert all(r.ok for r in rerun), [r.error for r in rerun]
    assert [r.cached for r in rerun] == [True] * 4 + [False] * 2
    assert [r.text for r in rerun[:4]] == [r.text for r in results[:4]]
    [usage] = store.read_table("llm_usage").to_dicts()
    assert (usage["run_id"], usage["calls"], usage["cached"], usage["failures"]) == ("r2", 2, 4, 0)


# --------------------------------------------------------------------------- scripted server
def completion_body(content: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


class ScriptedServer:
    """Answers POST /v1/chat/completions with scripted statuses, then 200s; records every request."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None, repeat_last: bool = False) -> None:
        self.statuses = list(statuses)
        self.headers = headers or {}
        self.repeat_last = repeat_last
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.arrivals.append(time.monotonic())
                    server.bodies.append(body)
                    if not server.statuses:
                        status = 200
                    elif server.repeat_last and len(server.statuses) == 1:
                        status = server.statuses[0]
                    else:
                        status = server.statuses.pop(0)
                if status == 200:
                    payload = completion_body('{"answer": "yes"}')
                else:
                    payload = {"error": {"message": f"status {status}"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (server.headers.items() if status != 200 else ()):
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted_servers():
    servers: list[ScriptedServer] = []

    def make(*args, **kwargs) -> ScriptedServer:
        servers.append(ScriptedServer(*args, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def scripted_settings(base_url: str | list[str], **overrides) -> EngineSettings:
    return EngineSettings(
        **{"backend": "openai", "model": MODEL, "base_url": base_url, "max_http_retries": 3, "http_backoff_s": 0.1,
           **overrides}
    )


def test_5xx_answers_are_retried_with_growing_backoff(scripted_servers):
    server = scripted_servers([500, 503])
    [result] = OpenAIEngine(scripted_settings(server.base_url)).generate(
        [user("q", seed=5, json_schema=YES_NO_SCHEMA, max_tokens=20)]
    )
    assert result.ok and result.text == '{"answer": "yes"}' and result.attempts == 3
    assert (result.prompt_tokens, result.completion_tokens) == (5, 3)
    first_gap, second_gap = (b - a for a, b in zip(server.arrivals, server.arrivals[1:]))
    assert first_gap >= 0.05 and second_gap >= 0.1  # 0.1 * 2**k, jitter down to half
    body = server.bodies[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": YES_NO_SCHEMA},
    }
    assert (body["seed"], body["max_tokens"], body["model"]) == (5, 20, MODEL)


def test_429_honours_retry_after(scripted_servers):
    server = scripted_servers([429], headers={"Retry-After": "0.4"})
    [result] = OpenAIEngine(scripted_settings(server.base_url, http_backoff_s=0.01)).generate([user("q")])
    assert result.ok and result.attempts == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.4


def test_server_that_keeps_failing_gives_a_per_item_error(scripted_servers):
    server = scripted_servers([500], repeat_last=True)
    results = OpenAIEngine(scripted_settings(server.base_url, max_http_retries=2, http_backoff_s=0.01)).generate(
        [user("a"), user("b")]
    )
    for result in results:
        assert result.error.startswith("engine_unreachable: 3 attempts") and "InternalServerError" in result.error
    assert len(server.arrivals) == 6


def test_rejected_request_is_not_retried(scripted_servers):
    server = scripted_servers([400])
    [result] = OpenAIEngine(scripted_settings(server.base_url)).generate([user("q")])
    assert result.error.startswith("invalid_request: BadRequestError")
    assert len(server.arrivals) == 1


def test_dead_server_never_raises():
    settings = scripted_settings(f"http://127.0.0.1:{free_port()}/v1", max_http_retries=1, http_backoff_s=0.01)
    results = OpenAIEngine(settings).generate([user("a"), user("b"), user("c")])
    assert [r.error.split(":")[0] for r in results] == ["engine_unreachable"] * 3
    assert all("APIConnectionError" in r.error for r in results)


def test_requests_spread_round_robin_over_replicas(scripted_servers):
    replicas = [scripted_servers([]), scripted_servers([])]
    # 3 slots per replica for 6 requests: no replica is ever full, so the turn alone decides
    # (with 2, a replica slow to free its slots under load gets fewer, by design)
    engine = OpenAIEngine(scripted_settings([r.base_url for r in replicas], max_concurrency=3))
    results = engine.generate([user(str(i)) for i in range(6)])
    assert all(r.ok for r in results)
    assert [len(r.arrivals) for r in replicas] == [3, 3]


def test_a_dead_replica_fails_over_to_a_live_one(scripted_servers):
    live = scripted_servers([])
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIEngine(scripted_settings([dead_url, live.base_url], http_backoff_s=0.01))
    results = engine.generate([user(str(i)) for i in range(4)])
    assert all(r.ok for r in results)
    assert len(live.arrivals) == 4


def test_generate_works_inside_a_running_event_loop(scripted_servers):
    server = scripted_servers([])
    engine = OpenAIEngine(scripted_settings(server.base_url))

    async def caller() -> list:
        return engine.generate([user("a"), user("b")])

    assert all(r.ok for r in asyncio.run(caller()))


def test_generate_works_inside_prefect_task_threads(scripted_servers, prefect_harness):
    from prefect import flow, task

    server = scripted_servers([])
    engine = OpenAIEngine(scripted_settings(server.base_url))

    @task
    def generate_shard(shard: int) -> int:
        return sum(r.ok for r in engine.generate([user(f"{shard}-{i}") for i in range(3)]))

    @flow
    def shards() -> list[int]:
        return [future.result() for future in generate_shard.map([0, 1])]

    assert shards() == [3, 3]
    assert len(server.arrivals) == 6


# --------------------------------------------------------------------------- fake server (tests/fake_openai_server.py)

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
    [result] = OpenAIEngine(fake_settings(server.base_url, request_timeout_s=0.3, max_http_retries=1)).generate(
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
