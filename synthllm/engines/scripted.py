"""A fake engine for unit tests: replies come from a Python function instead of a model.

Why: the structured-output, cache, retry and accounting logic of :class:`~synthllm.engines.LLM`
and every stage's parsing must be tested fast and deterministically, without loading weights.

Rules (kept deliberately simple):

- ``responder(request) -> str`` gives the reply text; it is called once per completion, so
  ``n`` times for a request with ``n > 1``.
- A reply longer than ``max_tokens * CHARS_PER_TOKEN`` characters is cut there and reported
  with ``finish_reason="length"``, like a real engine hitting ``max_tokens``.
- Tokens are estimated as ``ceil(chars / CHARS_PER_TOKEN)``.
- An exception raised by the responder propagates out of :meth:`ScriptedEngine.generate`:
  that is how a test simulates an engine (or worker process) dying mid-batch.
- Like the in-process engines, each result goes to ``on_result`` as soon as it is made, and a
  stop request (:func:`~synthllm.engines.base.request_stop`) is honoured between requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from synthllm.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    OnResult,
    check_stop,
)

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class ScriptedEngine:
    """:class:`~synthllm.engines.base.Engine` whose replies come from ``responder``.

    ``calls`` counts requests answered (one per request, whatever its ``n``), ``batches`` counts
    :meth:`generate` invocations and ``requests`` keeps every request seen, in order, so tests can
    check what the client sent (seeds of retries, cache misses only, ...).
    """

    backend = "scripted"

    def __init__(self, responder: Callable[[ChatRequest], str], model_id: str = "scripted") -> None:
        self.responder = responder
        self.model_id = model_id
        self.calls = 0
        self.batches = 0
        self.requests: list[ChatRequest] = []

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[ChatResult]:
        self.batches += 1
        results = []
        for index, request in enumerate(requests):
            check_stop(f"scripted batch of {len(requests)} requests ({index} answered)")
            completions = [self._complete(request) for _ in range(request.n)]
            self.calls += 1
            self.requests.append(request)
            prompt_chars = sum(len(message.get("content", "")) for message in request.messages)
            results.append(
                ChatResult(
                    completions=completions,
                    prompt_tokens=math.ceil(prompt_chars / CHARS_PER_TOKEN),
                    completion_tokens=sum(estimate_tokens(c.text) for c in completions),
                )
            )
            if on_result is not None:
                on_result(index, results[-1])
        return results

    def _complete(self, request: ChatRequest) -> Completion:
        text = self.responder(request)
        limit = request.max_tokens * CHARS_PER_TOKEN
        if len(text) > limit:
            return Completion(text=text[:limit], finish_reason="length")
        return Completion(text=text, finish_reason="stop")

    def close(self) -> None:
        """Nothing to release."""
