"""The one batch interface every generation stage uses; stages never see which backend runs.

A backend turns a list of :class:`ChatRequest` into a list of :class:`ChatResult` of the same
length and order. It never raises for one bad item: per-item trouble goes into ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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
    def of(messages: list[dict[str, str]], **kwargs: Any) -> "ChatRequest":
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


@runtime_checkable
class Engine(Protocol):
    """A backend: whole batches in, same-length list of results out."""

    backend: str
    model_id: str  # identifies the weights: part of every cache key and every row's provenance

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...
