"""Benchmark: CPU per request of the client path against a loopback OpenAI-compatible server.

Why CPU and not wall time: the coordinator process must drive many GPU replicas; what limits it
is its own CPU per request (issue 13: <= 0.2 ms), which the server's speed does not change. The
fake server (tests/fake_openai_server.py) runs in another process, so ``time.process_time`` here
counts the client alone. Variants, same requests and concurrency:

- ``openai_sdk``: ``openai.AsyncOpenAI`` (the client the openai backend used before);
- ``httpx`` / ``aiohttp``: the raw async clients posting the same JSON;
- ``engine``: ``OpenAIEngine.generate`` (the openai backend as it is now);
- ``engine_4_threads``: the same requests in four ``generate`` calls at once on one engine, as
  shard threads share it (``orchestration.task_workers``);
- ``llm_run``: ``LLM.run`` over that engine with a fresh local store: cache keys, schema
  validation, response cache and usage row included -- the whole coordinator path.

Prints one JSON object::

    python bench/http_client.py --n 3000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def start_server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fake_openai_server.py")], stdout=subprocess.PIPE, text=True
    )
    return process, process.stdout.readline().strip()


def body(i: int) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": f"question {i}: what is {i} plus {i}?"}],
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 64,
        "seed": i,
        "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}},
    }


async def bounded(n: int, concurrency: int, send) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await send(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def openai_sdk(base_url: str, n: int, concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)

    async def send(i: int) -> None:
        response = await client.chat.completions.create(**body(i))
        assert response.choices[0].message.content

    await bounded(n, concurrency, send)
    await client.close()


async def httpx_raw(base_url: str, n: int, concurrency: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers={"Authorization": "Bearer EMPTY"}) as client:

        async def send(i: int) -> None:
            response = await client.post(f"{base_url}/chat/completions", json=body(i))
            assert response.json()["choices"][0]["message"]["content"]

        await bounded(n, concurrency, send)


async def aiohttp_raw(base_url: str, n: int, concurrency: int) -> None:
    import aiohttp
    import orjson

    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": "Bearer EMPTY", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def send(i: int) -> None:
            async with session.post(f"{base_url}/chat/completions", data=orjson.dumps(body(i))) as response:
                assert orjson.loads(await response.read())["choices"][0]["message"]["content"]

        await bounded(n, concurrency, send)


def engine_settings(base_url: str, concurrency: int):
    from synthllm.settings import EngineSettings

    return EngineSettings(backend="openai", model="fake-model", base_url=base_url, max_concurrency=concurrency)


def requests_of(n: int, offset: int):
    from synthllm.engines import ChatRequest

    return [
        ChatRequest.of(
            [{"role": "user", "content": f"question {offset + i}: what is {i} plus {i}?"}],
            max_tokens=64,
            seed=i,
            json_schema=SCHEMA,
        )
        for i in range(n)
    ]


def engine(base_url: str, n: int, concurrency: int, offset: int) -> None:
    from synthllm.engines.openai_backend import OpenAIEngine

    results = OpenAIEngine(engine_settings(base_url, concurrency)).generate(requests_of(n, offset))
    assert all(r.ok for r in results), next(r.error for r in results if not r.ok)


def engine_4_threads(base_url: str, n: int, concurrency: int, offset: int) -> None:
    from synthllm.engines.openai_backend import OpenAIEngine

    one_engine = OpenAIEngine(engine_settings(base_url, concurrency))
    quarters = [requests_of(n // 4, offset + 1000 * n * part) for part in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for results in pool.map(one_engine.generate, quarters):
            assert all(r.ok for r in results), next(r.error for r in results if not r.ok)


def llm_run(base_url: str, n: int, concurrency: int, offset: int) -> None:
    from synthllm.engines import LLM
    from synthllm.engines.openai_backend import OpenAIEngine
    from synthllm.store import Store

    settings = engine_settings(base_url, concurrency)
    with tempfile.TemporaryDirectory() as folder:
        results = LLM(OpenAIEngine(settings), Store(folder), settings).run(
            requests_of(n, offset), stage="bench", shard_id="s0", run_id="bench"
        )
    assert all(r.ok for r in results), next(r.error for r in results if not r.ok)


def measure(name: str, call, n: int) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "variant": name,
        "requests": n,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "requests_per_s": round(n / wall, 1),
        "cpu_ms_per_request": round(1000 * cpu / n, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="requests per variant")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--variants", default="openai_sdk,httpx,aiohttp,engine,engine_4_threads,llm_run")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    server, base_url = start_server()
    raw = {"openai_sdk": openai_sdk, "httpx": httpx_raw, "aiohttp": aiohttp_raw}
    figures = []
    try:
        for offset, name in enumerate(args.variants.split(",")):
            if name in raw:
                asyncio.run(raw[name](base_url, 50, args.concurrency))  # warm-up: imports, connections
                call = partial(asyncio.run, raw[name](base_url, args.n, args.concurrency))
            else:
                variant = {"engine": engine, "engine_4_threads": engine_4_threads, "llm_run": llm_run}[name]
                variant(base_url, 50, args.concurrency, offset=10**6 * (offset + 1))
                call = partial(variant, base_url, args.n, args.concurrency, offset=0)
            figures.append(measure(name, call, args.n))
    finally:
        server.kill()
        server.wait()
    print(json.dumps({"benchmark": "http_client", "concurrency": args.concurrency, "variants": figures}, indent=2))


if __name__ == "__main__":
    main()
