"""The ``openai`` backend: any OpenAI-compatible server (``vllm serve``, llama.cpp, hosted APIs).

Why async with a semaphore: a serving engine batches whatever requests are in flight, so the
client keeps ``max_concurrency`` requests open at all times (across every replica) instead of
waiting for each reply. ``base_url`` may list several replicas; requests, and each retry, go to
them round-robin, so a dead replica's requests fail over to the live ones.

Transient trouble (timeouts, connection errors, 408/409/429 and 5xx answers) is retried up to
``max_http_retries`` times with exponential backoff and jitter (``Retry-After`` respected). What
still fails becomes a per-item ``error`` -- ``engine_unreachable: ...`` for a server that stayed
down, ``invalid_request: ...`` for a request the server rejects -- so the batch never raises.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai

from synthllm.engines.base import ChatRequest, ChatResult, Completion
from synthllm.settings import EngineSettings

ENGINE_UNREACHABLE = "engine_unreachable"
INVALID_REQUEST = "invalid_request"
INVALID_RESPONSE = "invalid_response"
_RETRIED_STATUS = {408, 409, 429}
_MAX_BACKOFF_S = 60.0  # also caps a server's Retry-After
_MAX_ERROR_CHARS = 500

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a fresh event loop.

    A thread that already runs a loop (an async flow, a notebook) cannot block on another loop,
    so the coroutine then runs in a helper thread of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _is_retried(exc: openai.APIError) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code in _RETRIED_STATUS or exc.status_code >= 500)


def _retry_after_s(exc: openai.APIError) -> float:
    """The server's ``Retry-After`` (seconds form) when it sent one, else 0."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(float(value), 0.0) if value is not None else 0.0
    except ValueError:
        return 0.0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]


class OpenAIEngine:
    """:class:`~synthllm.engines.base.Engine` over ``openai.AsyncOpenAI``, callable from sync code."""

    backend = "openai"

    def __init__(self, settings: EngineSettings) -> None:
        if not settings.base_url:
            raise ValueError("the openai backend needs engine.base_url (one URL or a list of replica URLs)")
        self.settings = settings
        self.model_id = settings.model
        self.base_urls = [settings.base_url] if isinstance(settings.base_url, str) else list(settings.base_url)

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        return run_sync(self._generate(requests))

    async def _generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        # Clients are bound to the event loop they first run in: one set per batch.
        clients = [
            openai.AsyncOpenAI(
                base_url=url,
                api_key=self.settings.api_key.get_secret_value(),
                timeout=self.settings.request_timeout_s,
                max_retries=0,  # retries are ours: backoff shared with failover between replicas
            )
            for url in self.base_urls
        ]
        slots = asyncio.Semaphore(self.settings.max_concurrency)
        turn = itertools.count()
        try:
            return await asyncio.gather(*(self._one(request, clients, slots, turn) for request in requests))
        finally:
            for client in clients:
                await client.close()

    async def _one(
        self,
        request: ChatRequest,
        clients: list[openai.AsyncOpenAI],
        slots: asyncio.Semaphore,
        turn: itertools.count,
    ) -> ChatResult:
        arguments = self._arguments(request)
        retries = self.settings.max_http_retries
        for attempt in range(retries + 1):
            client = clients[next(turn) % len(clients)]
            async with slots:
                started = time.perf_counter()
                try:
                    response = await client.chat.completions.create(**arguments)
                except openai.APIError as exc:
                    error = exc
                else:
                    return _to_result(response, time.perf_counter() - started, attempt + 1)
            if not _is_retried(error):
                reason = INVALID_REQUEST if isinstance(error, openai.APIStatusError) else INVALID_RESPONSE
                return ChatResult(error=f"{reason}: {_describe(error)}", attempts=attempt + 1)
            if attempt < retries:
                # Sleep outside the semaphore: other requests keep the server busy meanwhile.
                await asyncio.sleep(min(_MAX_BACKOFF_S, max(self._backoff_s(attempt), _retry_after_s(error))))
        return ChatResult(
            error=f"{ENGINE_UNREACHABLE}: {retries + 1} attempts over {', '.join(self.base_urls)}; last: "
            f"{_describe(error)}",
            attempts=retries + 1,
        )

    def _backoff_s(self, attempt: int) -> float:
        """Exponential backoff with jitter, so many failed requests do not return in lockstep."""
        return min(_MAX_BACKOFF_S, self.settings.http_backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model_id,
            "messages": [dict(message) for message in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.n != 1:  # some servers reject the parameter altogether
            arguments["n"] = request.n
        if request.seed is not None:
            arguments["seed"] = request.seed
        if request.json_schema is not None:
            if self.settings.json_response_format == "json_schema":
                arguments["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": request.json_schema},
                }
            else:
                arguments["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return arguments

    def close(self) -> None:
        """Nothing held between batches (each batch opens and closes its own connections)."""


def _to_result(response: Any, latency_s: float, attempts: int) -> ChatResult:
    usage = response.usage
    return ChatResult(
        completions=[
            Completion(text=choice.message.content or "", finish_reason=choice.finish_reason)
            for choice in response.choices
        ],
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency_s=latency_s,
        attempts=attempts,
    )
