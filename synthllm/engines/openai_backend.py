"""The ``openai`` backend: any OpenAI-compatible server (``vllm serve``, llama.cpp, hosted APIs).

Why aiohttp and not the ``openai`` SDK: the coordinator drives many GPU replicas from one
process, so its CPU per request is the ceiling. The SDK spent ~1.4-3 ms CPU per request on a
loopback server, aiohttp posting the same JSON (built with orjson) ~0.1 ms (bench/http_client.py).

Why async with slots per replica: a serving engine batches whatever requests are in flight, so
the client keeps ``max_concurrency`` requests open at each of the ``base_url`` replicas at all
times -- ``max_concurrency x replicas`` in all, shared by every batch of this process: one pool of
that many senders takes the requests of every batch first come, first served (``_Dispatcher``).
Requests go round-robin to a replica with a free slot; a retry avoids the replica that just failed,
so a dead replica's requests fail over to the live ones, and waits out its backoff outside the pool.

Results are handed to ``on_result`` as they arrive (in the caller's thread), so the client caches
them before the batch ends. One event loop thread per process serves every engine and batch.

Transient trouble (timeouts, connection errors, dropped replies, 408/409/429 and 5xx answers) is
retried up to ``max_http_retries`` times with exponential backoff and jitter (``Retry-After``
respected). What still fails becomes a per-item ``error`` -- ``engine_unreachable: ...`` for a
server that stayed down, ``invalid_request: ...`` for a request the server rejects,
``invalid_response: ...`` for a reply that is not a chat completion. A 401/403 raises
:class:`~synthllm.engines.base.EngineAuthError` at once: no item can succeed with that key.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from synthllm.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    EngineAuthError,
    OnResult,
    check_stop,
)
from synthllm.settings import SECRET_ENV, EngineSettings

ENGINE_UNREACHABLE = "engine_unreachable"
INVALID_REQUEST = "invalid_request"
INVALID_RESPONSE = "invalid_response"
_RETRIED_STATUS = {408, 409, 429}
_AUTH_STATUS = {401, 403}
# The names the openai SDK gives these answers: users and logs know them.
_STATUS_NAMES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
_MAX_BACKOFF_S = 60.0  # also caps a server's Retry-After
_MAX_ERROR_CHARS = 500
_STOP_POLL_S = 0.1  # how often a waiting batch looks at the stop flag


class _TransportError(Exception):
    """No usable HTTP answer (connection refused or dropped, timeout): always retried."""


class _LoopThread:
    """The process's event loop for HTTP, in a daemon thread (started again after a fork)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():
                cls._loop = asyncio.new_event_loop()
                cls._pid = os.getpid()
                threading.Thread(target=cls._loop.run_forever, daemon=True, name="synthllm-http").start()
            return cls._loop


class _Replicas:
    """Free slots per replica (lives in the HTTP loop)."""

    def __init__(self, urls: list[str], per_replica: int) -> None:
        self.endpoints = [f"{url.rstrip('/')}/chat/completions" for url in urls]
        self.per_replica = per_replica
        self.in_flight = [0] * len(urls)
        self._turn = 0

    def take(self, avoid: int | None) -> int:
        """The next replica in turn with a free slot, other than ``avoid`` when another is free.

        Called by one of at most ``per_replica x replicas`` senders, so some replica has a free slot."""
        count = len(self.endpoints)
        free = [
            i for i in ((self._turn + k) % count for k in range(count)) if self.in_flight[i] < self.per_replica
        ]
        replica = next((i for i in free if i != avoid), free[0])
        self._turn = replica + 1
        self.in_flight[replica] += 1
        return replica

    def give_back(self, replica: int) -> None:
        self.in_flight[replica] -= 1


@dataclass(eq=False)
class _Batch:
    """One ``generate`` call's requests on the HTTP loop: its session, where results go, what is left."""

    session: aiohttp.ClientSession
    arrivals: queue.SimpleQueue
    outstanding: int
    done: asyncio.Future
    cancelled: bool = False


@dataclass(eq=False)
class _Job:
    """One request of a batch, and how its earlier attempts went."""

    batch: _Batch
    index: int
    request: ChatRequest
    payload: bytes = b""  # the JSON body, built when first sent
    attempt: int = 0
    failed_replica: int | None = None
    error: str = ""


class _Dispatcher:
    """Every batch's requests for one engine, sent by at most ``max_concurrency x replicas``
    sender coroutines that take jobs first come, first served (lives in the HTTP loop).

    Why one pool for all batches: shard threads share an engine, and per-batch senders waiting
    for a shared slot cost a future and a wake-up per request (+28 % CPU per request with two
    batches at once, +45 % with four). A sender never waits for a job: it ends when none is
    left and the next batch starts new ones. A request to retry waits for its backoff outside
    the pool, so the other requests keep every slot busy meanwhile."""

    def __init__(self, engine: OpenAIEngine) -> None:
        self.engine = engine
        self.replicas = _Replicas(engine.base_urls, engine.settings.max_concurrency)
        self.jobs: deque[_Job] = deque()
        self.working: dict[asyncio.Task, _Job | None] = {}

    def submit(self, jobs: list[_Job]) -> None:
        self.jobs.extend(jobs)
        self._fill()

    def cancel(self, batch: _Batch) -> None:
        """Drop a batch's waiting jobs and abort its requests in flight (a stop, a refused key)."""
        batch.cancelled = True
        self.jobs = deque(job for job in self.jobs if job.batch is not batch)
        for task, job in list(self.working.items()):
            if job is not None and job.batch is batch:
                task.cancel()

    def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while self.jobs and len(self.working) < self.engine.max_in_flight:
            task = loop.create_task(self._send())
            self.working[task] = None
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        del self.working[task]
        self._fill()  # a sender cancelled with its batch leaves the other batches' jobs to a new one

    async def _send(self) -> None:
        me = asyncio.current_task()
        while self.jobs:
            job = self.jobs.popleft()
            if job.batch.cancelled:
                continue
            self.working[me] = job
            try:
                await self._attempt(job)
            except Exception as exc:  # noqa: BLE001 - a refused key (EngineAuthError) or a bug: the batch raises it
                self._fail(job.batch, exc)
            self.working[me] = None

    async def _attempt(self, job: _Job) -> None:
        """Send ``job`` once: hand its result over, or put it back after its backoff to retry."""
        replicas, settings = self.replicas, self.engine.settings
        if not job.payload:
            job.payload = orjson.dumps(self.engine._arguments(job.request))
        replica = replicas.take(avoid=job.failed_replica)
        endpoint = replicas.endpoints[replica]
        started = time.perf_counter()
        try:
            status, headers, body = await self.engine._post(job.batch.session, endpoint, job.payload)
        except _TransportError as exc:
            status, headers, job.error = None, None, str(exc)
        finally:
            replicas.give_back(replica)
        job.attempt += 1
        if status == 200:
            return self._deliver(job, _to_result(body, time.perf_counter() - started, job.attempt))
        if status is not None:
            job.error = _status_error(status, endpoint, body)
            if status in _AUTH_STATUS:
                raise EngineAuthError(
                    f"{endpoint} refused the API key (HTTP {status}); the key came from "
                    f"{api_key_source(settings)}. Nothing can succeed with it: the run stops."
                )
            if status not in _RETRIED_STATUS and status < 500:
                return self._deliver(job, ChatResult(error=f"{INVALID_REQUEST}: {job.error}", attempts=job.attempt))
        if job.attempt > settings.max_http_retries:
            return self._deliver(job, ChatResult(
                error=f"{ENGINE_UNREACHABLE}: {job.attempt} attempts over {', '.join(self.engine.base_urls)}; "
                      f"last: {job.error}",
                attempts=job.attempt,
            ))
        job.failed_replica = replica
        delay = min(_MAX_BACKOFF_S, max(self.engine._backoff_s(job.attempt - 1), _retry_after_s(headers)))
        asyncio.get_running_loop().call_later(delay, self.submit, [job])

    def _deliver(self, job: _Job, result: ChatResult) -> None:
        batch = job.batch
        if batch.cancelled:
            return
        batch.arrivals.put((job.index, result))
        batch.outstanding -= 1
        if batch.outstanding == 0:
            batch.done.set_result(None)

    def _fail(self, batch: _Batch, exc: BaseException) -> None:
        if not batch.done.done():
            batch.done.set_exception(exc)
        self.cancel(batch)


def api_key_source(settings: EngineSettings) -> str:
    """Where the key came from, in words, for errors (never the key itself)."""
    key = settings.api_key.get_secret_value()
    for variable in SECRET_ENV.values():
        if os.environ.get(variable) == key:
            return f"the {variable} environment variable (set there, or exported from the config file or --set)"
    if os.environ.get("OPENAI_API_KEY") == key:
        return "the OPENAI_API_KEY environment variable"
    if key == "EMPTY":
        return "no key configured (the placeholder 'EMPTY' was sent; set OPENAI_API_KEY or engine.api_key)"
    return "engine.api_key in the settings (config file or an override)"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]


def _status_error(status: int, endpoint: str, body: bytes) -> str:
    name = _STATUS_NAMES.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
    text = body.decode("utf-8", "replace").strip()
    return f"{name}: HTTP {status} from {endpoint}: {text}"[:_MAX_ERROR_CHARS]


def _retry_after_s(headers: Any) -> float:
    """The server's ``Retry-After`` (seconds form) when it sent one, else 0."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else 0.0
    except ValueError:
        return 0.0


class OpenAIEngine:
    """:class:`~synthllm.engines.base.Engine` over an OpenAI-compatible ``/chat/completions``."""

    backend = "openai"

    def __init__(self, settings: EngineSettings) -> None:
        if not settings.base_url:
            raise ValueError("the openai backend needs engine.base_url (one URL or a list of replica URLs)")
        self.settings = settings
        self.model_id = settings.model
        self.base_urls = [settings.base_url] if isinstance(settings.base_url, str) else list(settings.base_url)
        self.max_in_flight = settings.max_concurrency * len(self.base_urls)
        self._headers = {
            "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        self._dispatcher: tuple[asyncio.AbstractEventLoop, _Dispatcher] | None = None

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[ChatResult]:
        """Send every request, hand each result to ``on_result`` as it arrives, return them all.

        Raises ``RunStopped`` soon after a stop request (in-flight requests are cancelled) and
        ``EngineAuthError`` on a 401/403; results handed over before that stay handed over."""
        if not requests:
            return []
        check_stop(f"openai batch of {len(requests)} requests")
        results: list[ChatResult | None] = [None] * len(requests)
        arrivals: queue.SimpleQueue = queue.SimpleQueue()
        batch = asyncio.run_coroutine_threadsafe(self._batch(requests, arrivals), _LoopThread.get())
        batch.add_done_callback(lambda _: arrivals.put(None))
        waiting = len(requests)
        try:
            while waiting:
                try:
                    arrival = arrivals.get(timeout=_STOP_POLL_S)
                except queue.Empty:
                    arrival = ()
                if arrival is None:  # the batch ended before every result came: it raised
                    batch.result()
                    raise RuntimeError("openai batch ended without every result")
                if arrival:
                    index, result = arrival
                    results[index] = result
                    waiting -= 1
                    if on_result is not None:
                        on_result(index, result)
                check_stop(f"openai batch of {len(requests)} requests ({len(requests) - waiting} answered)")
        finally:
            batch.cancel()
        return results  # type: ignore[return-value]  # every slot was filled above

    def _dispatcher_in(self, loop: asyncio.AbstractEventLoop) -> _Dispatcher:
        if self._dispatcher is None or self._dispatcher[0] is not loop:
            self._dispatcher = (loop, _Dispatcher(self))
        return self._dispatcher[1]

    async def _batch(self, requests: list[ChatRequest], arrivals: queue.SimpleQueue) -> None:
        dispatcher = self._dispatcher_in(asyncio.get_running_loop())
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self._headers) as session:
            batch = _Batch(session, arrivals, len(requests), asyncio.get_running_loop().create_future())
            dispatcher.submit([_Job(batch, index, request) for index, request in enumerate(requests)])
            try:
                await batch.done
            finally:
                if batch.outstanding:  # stopped, or a refused key: its waiting jobs and requests in flight
                    dispatcher.cancel(batch)

    async def _post(self, session: aiohttp.ClientSession, endpoint: str, payload: bytes) -> tuple[int, Any, bytes]:
        try:
            async with session.post(endpoint, data=payload) as response:
                return response.status, response.headers, await response.read()
        except TimeoutError as exc:
            raise _TransportError(
                f"APITimeoutError: no reply from {endpoint} within {self.settings.request_timeout_s} s"
            ) from exc
        except aiohttp.ClientError as exc:  # refused, reset, dropped mid-reply, ...
            raise _TransportError(f"APIConnectionError: {_describe(exc)} ({endpoint})") from exc

    def _backoff_s(self, attempt: int) -> float:
        """Exponential backoff with jitter, so many failed requests do not return in lockstep."""
        return min(_MAX_BACKOFF_S, self.settings.http_backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model_id,
            "messages": request.messages,
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


def _to_result(body: bytes, latency_s: float, attempts: int) -> ChatResult:
    try:
        reply = orjson.loads(body)
        completions = [
            Completion(text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"))
            for choice in reply["choices"]
        ]
        usage = reply.get("usage") or {}
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        snippet = body[:200].decode("utf-8", "replace")
        return ChatResult(
            error=f"{INVALID_RESPONSE}: not a chat completion ({type(exc).__name__}): {snippet!r}", attempts=attempts
        )
    return ChatResult(
        completions=completions,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=latency_s,
        attempts=attempts,
    )
