"""A fake OpenAI-compatible server on 127.0.0.1 for tests and benchmarks (aiohttp, real sockets).

Why: the engine layer must be tried against the faults a real server shows -- garbage, 401/403,
429 with ``Retry-After``, 5xx, hangs past the client timeout, connections dropped mid-response --
on demand, and a rerun must be checked to ask only for what was not stored (counted here).

- ``responder(body) -> str | Reply`` decides each reply of ``POST /v1/chat/completions`` from the
  request body: a ``str`` is the assistant's text, or one of :class:`Text`, :class:`Error`,
  :class:`Garbage`, :class:`Hang`, :class:`Drop`. Replace ``server.responder`` at any time.
- ``received`` / ``answered`` count requests per prompt key (the last message's content);
  ``GET /stats`` returns the same figures as JSON for a server in another process.
- ``api_key``: requests whose ``Authorization`` is not ``Bearer <api_key>`` get a 401.
- ``rate`` / ``capacity``: a replica with a fixed service rate -- ``capacity`` slots, each reply
  holds one for ``capacity / rate`` seconds (so ``rate`` replies/s only while every slot is
  busy); ``busy_share`` is the slot-time used over the slot-time available since the first request.

In a thread: ``with FakeOpenAIServer(responder) as server: server.base_url``. As a process
(benchmarks): ``python tests/fake_openai_server.py --rate 50 --capacity 64`` prints its base URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from aiohttp import web

MODEL = "fake-model"


@dataclass(frozen=True)
class Text:
    """A valid completion (``delay_s``: think time before replying; ``held_until``: reply only once
    that event is set, so a test can release requests in lockstep rounds)."""

    content: str
    finish_reason: str = "stop"
    delay_s: float = 0.0
    held_until: threading.Event | None = None


@dataclass(frozen=True)
class Error:
    status: int
    retry_after: str | None = None
    message: str = "fake error"


@dataclass(frozen=True)
class Garbage:
    """HTTP 200 with a body that is not JSON."""

    body: str = "<html>502 Bad Gateway (not JSON)</html>"


@dataclass(frozen=True)
class Hang:
    """Never reply within ``seconds`` (past any sane client timeout)."""

    seconds: float = 3600.0


@dataclass(frozen=True)
class Drop:
    """Send the headers and half the body, then close the connection."""


Reply = str | Text | Error | Garbage | Hang | Drop


def prompt_key(body: dict) -> str:
    """What requests are counted by: the content of the last message."""
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content", ""))


def echo(body: dict) -> str:
    """Default responder: a JSON object naming the prompt (valid for ``{"type": "object"}``)."""
    return json.dumps({"answer": prompt_key(body)[:40]})


def completion_body(model: str, texts: list[tuple[str, str]]) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3 * len(texts), "total_tokens": 5 + 3 * len(texts)},
    }


@dataclass
class _ServiceClock:
    """Slot-time accounting of the fixed-rate mode."""

    rate: float
    capacity: int
    busy_s: float = 0.0
    first_arrival: float | None = None
    last_finish: float | None = None
    slots: asyncio.Semaphore | None = field(default=None, repr=False)
    served: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (start, end) of each request

    def busy_by_second(self) -> list[float]:
        """The share of slots busy in each second from the first arrival (where the idle time is)."""
        if self.first_arrival is None or self.last_finish is None:
            return []
        bins = [0.0] * (int(self.last_finish - self.first_arrival) + 1)
        for start, end in self.served:
            start, end = start - self.first_arrival, end - self.first_arrival
            while start < end:
                second = int(start)
                step = min(end, second + 1) - start
                bins[second] += step
                start += step
        return [round(b / self.capacity, 3) for b in bins]

    @property
    def service_s(self) -> float:
        return self.capacity / self.rate

    def busy_share(self) -> float | None:
        if self.first_arrival is None or self.last_finish is None or self.last_finish <= self.first_arrival:
            return None
        return self.busy_s / (self.capacity * (self.last_finish - self.first_arrival))


class FakeOpenAIServer:
    """The server, run in a daemon thread with its own event loop."""

    def __init__(
        self,
        responder: Callable[[dict], Reply] = echo,
        *,
        api_key: str | None = None,
        model: str = MODEL,
        rate: float | None = None,
        capacity: int = 64,
        port: int = 0,
    ) -> None:
        self.responder = responder
        self.api_key = api_key
        self.model = model
        self.port = port
        self.clock = _ServiceClock(rate, capacity) if rate else None
        self.received: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests handled at once
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Self:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True, name="fake-openai")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake OpenAI server did not start within 10 s")
        return self

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_site())
        started.set()
        self._loop.run_forever()

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        if self.clock is not None:
            self.clock.slots = asyncio.Semaphore(self.clock.capacity)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the port bound when 0 was asked

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ figures
    @property
    def total_received(self) -> int:
        return sum(self.received.values())

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    def stats(self) -> dict:
        with self._lock:
            figures = {
                "received": self.total_received,
                "answered": self.total_answered,
                "received_by_key": dict(self.received),
                "answered_by_key": dict(self.answered),
                "max_in_flight": self.max_in_flight,
            }
        if self.clock is not None:
            figures.update(rate=self.clock.rate, capacity=self.clock.capacity, busy_share=self.clock.busy_share(),
                           busy_by_second=self.clock.busy_by_second())
        return figures

    # ------------------------------------------------------------------ handlers
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        body = await request.json()
        key = prompt_key(body)
        with self._lock:
            self.received[key] += 1
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._reply(request, body, key, authorization)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _reply(self, request: web.Request, body: dict, key: str, authorization: str | None) -> web.StreamResponse:
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return _error(Error(401, message="invalid API key"))
        reply = self.responder(body)
        if isinstance(reply, str):
            reply = Text(reply)
        if isinstance(reply, Error):
            return _error(reply)
        if isinstance(reply, Garbage):
            return web.Response(text=reply.body, content_type="text/html")
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            return _error(Error(504, message="hung"))
        if isinstance(reply, Drop):
            return await _drop(request, json.dumps(completion_body(self.model, [("dropped", "stop")])).encode())
        data = json.dumps(completion_body(self.model, [(reply.content, reply.finish_reason)] * body.get("n", 1)))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.held_until is not None:
            await _wait_for(reply.held_until, limit_s=30.0)
        if self.clock is not None:
            await self._serve_at_fixed_rate()
        with self._lock:
            self.answered[key] += 1
        return web.Response(text=data, content_type="application/json")

    async def _serve_at_fixed_rate(self) -> None:
        clock = self.clock
        async with clock.slots:
            started = time.monotonic()
            if clock.first_arrival is None:
                clock.first_arrival = started
            await asyncio.sleep(clock.service_s)
            finished = time.monotonic()
            clock.busy_s += finished - started
            clock.last_finish = finished
            clock.served.append((started, finished))


async def _wait_for(event: threading.Event, limit_s: float) -> None:
    """Wait (without blocking the server's loop) until another thread sets ``event``."""
    deadline = time.monotonic() + limit_s
    while not event.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


def _error(error: Error) -> web.Response:
    headers = {"Retry-After": error.retry_after} if error.retry_after is not None else None
    return web.json_response(
        {"error": {"message": error.message, "type": "fake", "code": error.status}}, status=error.status, headers=headers
    )


async def _drop(request: web.Request, data: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(data))})
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    request.transport.close()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible server (prints its base URL)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="replies/s with every slot busy (default: instant)")
    parser.add_argument("--capacity", type=int, default=64, help="slots of the fixed-rate mode")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    server = FakeOpenAIServer(api_key=args.api_key, rate=args.rate, capacity=args.capacity, port=args.port).start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
