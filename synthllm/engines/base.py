"""The one batch interface every generation stage uses; stages never see which backend runs.

A backend turns a list of :class:`ChatRequest` into a list of :class:`ChatResult` of the same
length and order. It never raises for one bad item: per-item trouble goes into ``error``. It
raises for what no item can get past: :class:`EngineAuthError` (the server refuses the key) and
:class:`RunStopped` (:func:`request_stop` was called).

Results are handed over as they complete: ``generate(requests, on_result=callback)`` calls
``callback(index, result)`` in the caller's thread for each one, so the client caches replies
before the batch ends and a kill loses only what was not yet flushed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


_SCHEMA_DERIVED: dict[int, tuple[Any, dict[Callable[[Any], Any], Any]]] = {}
_MAX_SCHEMAS_BY_ID = 1024


def per_schema(schema: dict[str, Any] | None, build: Callable[[Any], Any]) -> Any:
    """``build(schema)``, computed once per schema object and looked up by identity.

    Stages share one read-only schema object for all their requests (``bounded_schema``), so the
    validator and the cache key's JSON of it are built once, not per request or reply. Each entry
    keeps its schema alive, so the id is not reused while it is cached."""
    entry = _SCHEMA_DERIVED.get(id(schema))
    if entry is None or entry[0] is not schema:
        if len(_SCHEMA_DERIVED) >= _MAX_SCHEMAS_BY_ID:
            _SCHEMA_DERIVED.clear()
        entry = _SCHEMA_DERIVED[id(schema)] = (schema, {})
    derived = entry[1]
    if build not in derived:
        derived[build] = build(schema)
    return derived[build]


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. ``json_schema`` asks for schema-constrained JSON output."""

    messages: tuple[dict[str, str], ...]
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    n: int = 1
    seed: int | None = None
    json_schema: dict[str, Any] | None = None

    @staticmethod
    def of(messages: list[dict[str, str]], **kwargs: Any) -> ChatRequest:
        return ChatRequest(messages=tuple(dict(m) for m in messages), **kwargs)


@dataclass
class Completion:
    """One of the ``n`` choices of a result."""

    text: str
    finish_reason: str | None  # "stop" | "length" | None when unknown
    parsed: Any = None  # the validated JSON object when a schema was asked for


@dataclass
class ChatResult:
    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None  # set when no usable completion exists
    cached: bool = False
    attempts: int = 1

    @property
    def text(self) -> str:
        return self.completions[0].text if self.completions else ""

    @property
    def parsed(self) -> Any:
        return self.completions[0].parsed if self.completions else None

    @property
    def finish_reason(self) -> str | None:
        return self.completions[0].finish_reason if self.completions else None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.completions)


OnResult = Callable[[int, ChatResult], None]


@runtime_checkable
class Engine(Protocol):
    """A backend: whole batches in, same-length list of results out.

    ``on_result`` is optional for engines written elsewhere: :class:`~synthllm.engines.LLM`
    passes it only to engines whose ``generate`` accepts it, and otherwise caches per batch.
    """

    backend: str
    model_id: str  # identifies the weights: part of every cache key and every row's provenance

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[ChatResult]: ...

    def close(self) -> None: ...


class EngineAuthError(RuntimeError):
    """The server refused the API key (401/403): every item would fail, so the run stops."""


class RunStopped(Exception):
    """:func:`request_stop` was called: the batch ended early; what was received is cached.

    Not a ``RuntimeError``: engines that turn their library's ``RuntimeError`` into per-item
    errors must let it through."""


_stop = threading.Event()


def request_stop() -> None:
    """Ask every engine batch of this process to stop soon (signal handlers, Prefect cancels).

    In-process engines check between items (llama.cpp also between tokens), the openai backend
    cancels its in-flight requests; ``LLM.run`` then caches what was received and raises
    :class:`RunStopped`.
    """
    _stop.set()


def clear_stop() -> None:
    """Let batches run again (a process that goes on after a stop, tests)."""
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()


def check_stop(what: str) -> None:
    """Raise :class:`RunStopped` when a stop was requested; ``what`` names the work cut short."""
    if _stop.is_set():
        raise RunStopped(f"stop requested: {what} ended early")
