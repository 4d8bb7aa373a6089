"""The openai backend against real servers on 127.0.0.1.

- a real OpenAI-compatible server (``python -m llama_cpp.server`` with the SmolLM2 GGUF): a batch,
  then the server dying mid-batch, clear per-item errors, and a rerun after restart that makes
  only the missing calls;
- a tiny scripted HTTP server for 5xx / 429 / 4xx answers, backoff and replica round-robin;
- (tests/fake_openai_server.py for a production server's faults: test_engine_openai_faults.py)
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from openai_pipeline import YES_NO_SCHEMA, user

from synthllm.engines import LLM, ChatRequest
from synthllm.engines.openai_backend import OpenAIEngine
from synthllm.engines.registry import gguf_path
from synthllm.settings import EngineSettings
from synthllm.store import Store

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
