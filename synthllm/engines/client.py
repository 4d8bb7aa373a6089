"""The layer every stage calls: response cache, structured output with retries, token accounting.

``LLM(engine, store, settings).run(requests, stage=, shard_id=, run_id=)`` returns one
:class:`ChatResult` per request, in order, and never fails the batch for one bad item:

1. Requests already answered in this (stage, shard) namespace come from the response cache
   (``cached=True``, no engine call). Identical requests are sent once and share the answer.
2. The rest go to the engine in chunks (``cache_flush_every``, larger for servers so their batch
   stays full); every valid result is cached as it arrives, so a killed run resumes.
3. A reply to a request with ``json_schema`` is parsed (surrounding whitespace and a ```json
   fence are tolerated) and validated with ``jsonschema``; the object lands in
   ``Completion.parsed``. Invalid or truncated (``finish_reason == "length"``) replies are retried
   -- only those items, with a new seed, at most ``max_parse_retries`` times, and not at
   temperature 0, where a new seed cannot change the reply. What still fails is returned with
   ``error`` = ``invalid_json: ...`` / ``schema_mismatch: ...`` / ``truncated: ...`` and the raw
   text kept in ``completions``. With ``n > 1`` a result is valid when at least one completion is;
   a valid result keeps only its valid completions.
4. One row per (stage, shard) goes to the ``llm_usage`` table: requests, engine calls (retries
   included), cache hits, failures, tokens, seconds.

Errors the engine reports per item (``engine_unreachable: ...``, ``prompt_too_long``, ...) are
returned as they are. An exception from the engine itself propagates after the results obtained
so far are flushed to the cache: the calling task fails, is retried and resumes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import deque
from functools import lru_cache
from typing import Any

import jsonschema
import polars as pl

from synthllm.engines.base import ChatRequest, ChatResult, Completion, Engine
from synthllm.engines.cache import ResponseCache, request_key
from synthllm.engines.registry import make_engine
from synthllm.resources import read_sql
from synthllm.settings import EngineSettings
from synthllm.store import Store

__all__ = ["LLM", "make_engine", "usage_summary", "ENGINE_UNREACHABLE", "RETRIED_REASONS", "retry_seed"]

ENGINE_UNREACHABLE = "engine_unreachable"  # transient: the server was down; a rerun asks again
INVALID_JSON = "invalid_json"
SCHEMA_MISMATCH = "schema_mismatch"
TRUNCATED = "truncated"
NO_OUTPUT = "no_output"
RETRIED_REASONS = (INVALID_JSON, SCHEMA_MISMATCH, TRUNCATED)

# Chunk size multiplier of max_concurrency per backend: a server (openai) or a continuous-batching
# engine (vllm) must get enough requests at once to keep its batch full between chunk boundaries.
_CHUNK_CONCURRENCY_FACTOR = {"openai": 4, "vllm": 8}
_SEED_STRIDE = 1_000_003  # prime stride: retry seeds never collide with neighbouring items' seeds
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)


def retry_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of retry ``attempt`` (0 = the caller's own request)."""
    if attempt == 0:
        return seed
    return ((seed or 0) + attempt * _SEED_STRIDE) % 2**31


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"invalid json_schema in a request: {exc.message}") from exc
    return validator_class(schema)


def _schema_key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


def parse_json_reply(text: str) -> Any:
    """The JSON value in a reply; whitespace and a Markdown code fence around it are tolerated."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    return json.loads(fenced.group(1) if fenced else stripped)


def check_completion(completion: Completion, request: ChatRequest) -> str | None:
    """Why ``completion`` is unusable for ``request`` (None: usable; ``parsed`` is then set)."""
    truncated = completion.finish_reason == "length"
    if request.json_schema is None:
        return f"{TRUNCATED}: reply hit max_tokens ({request.max_tokens})" if truncated else None
    try:
        value = parse_json_reply(completion.text)
    except json.JSONDecodeError as exc:
        if truncated:
            return f"{TRUNCATED}: reply hit max_tokens ({request.max_tokens}) before the JSON ended"
        return f"{INVALID_JSON}: {exc.msg} at char {exc.pos}"
    mismatch = jsonschema.exceptions.best_match(_validator(_schema_key(request.json_schema)).iter_errors(value))
    if mismatch is not None:
        return f"{SCHEMA_MISMATCH}: {mismatch.message} at {mismatch.json_path}"
    # A complete, valid object is kept even when the engine then padded up to max_tokens.
    completion.parsed = value
    return None


def check_result(result: ChatResult, request: ChatRequest) -> ChatResult:
    """The engine's result with completions validated: valid ones kept, or the first error set."""
    if result.error is not None:
        return result
    if not result.completions:
        return dataclasses.replace(result, error=f"{NO_OUTPUT}: the engine returned no completion")
    errors = [check_completion(completion, request) for completion in result.completions]
    valid = [completion for completion, error in zip(result.completions, errors) if error is None]
    if valid:
        return dataclasses.replace(result, completions=valid)
    return dataclasses.replace(result, error=errors[0])


def _retried(error: str | None) -> bool:
    return error is not None and error.split(":", 1)[0] in RETRIED_REASONS


@dataclasses.dataclass
class _Usage:
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLM:
    """Structured output, response cache and usage accounting over any :class:`Engine`.

    ``store=None`` turns the cache and the usage rows off (quick experiments). Safe to share
    between threads: all state of a call lives in that call.
    """

    def __init__(self, engine: Engine, store: Store | None, settings: EngineSettings) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings

    @property
    def chunk_size(self) -> int:
        """Requests per engine call: one cache flush, or enough to keep a server's batch full."""
        factor = _CHUNK_CONCURRENCY_FACTOR.get(self.engine.backend)
        flush_every = self.settings.cache_flush_every
        return max(flush_every, factor * self.settings.max_concurrency) if factor else flush_every

    def run(self, requests: list[ChatRequest], *, stage: str, shard_id: str, run_id: str) -> list[ChatResult]:
        started = time.perf_counter()
        usage_shard = f"{stage}-{shard_id}"
        for schema in {_schema_key(r.json_schema) for r in requests if r.json_schema is not None}:
            _validator(schema)  # a broken schema is the caller's bug: fail before any engine call
        cache = None
        if self.store is not None:
            self.store.shard_path("llm_usage", usage_shard)  # a bad id fails before any engine call
            cache = ResponseCache(
                self.store, stage, shard_id, self.engine.model_id, self.settings.cache_flush_every
            )

        usage = _Usage()
        keys = [request_key(self.engine.backend, self.engine.model_id, r) for r in requests]
        final: dict[str, ChatResult] = {}
        first_index: dict[str, int] = {}
        for index, key in enumerate(keys):
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                final[key] = hit
                usage.cached += 1
            else:
                first_index.setdefault(key, index)

        try:
            self._generate_missing(requests, first_index, final, cache, usage)
        finally:
            if cache is not None:
                cache.flush()

        results = [_copy(final[key]) for key in keys]
        if self.store is not None:
            self._write_usage(self.store, stage, usage_shard, run_id, results, usage, time.perf_counter() - started)
        return results

    def _generate_missing(
        self,
        requests: list[ChatRequest],
        first_index: dict[str, int],
        final: dict[str, ChatResult],
        cache: ResponseCache | None,
        usage: _Usage,
    ) -> None:
        """Feed the engine chunk by chunk; failed items go back in the queue with a new seed."""
        queue: deque[tuple[str, int]] = deque((key, 0) for key in first_index)
        while queue:
            batch = [queue.popleft() for _ in range(min(self.chunk_size, len(queue)))]
            originals = [requests[first_index[key]] for key, _ in batch]
            sent = [
                dataclasses.replace(original, seed=retry_seed(original.seed, attempt))
                for original, (_, attempt) in zip(originals, batch)
            ]
            outputs = self.engine.generate(sent)
            if len(outputs) != len(sent):
                raise RuntimeError(
                    f"engine {self.engine.backend}:{self.engine.model_id} returned {len(outputs)} results "
                    f"for {len(sent)} requests"
                )
            for (key, attempt), request, output in zip(batch, sent, outputs):
                usage.calls += 1
                usage.prompt_tokens += output.prompt_tokens
                usage.completion_tokens += output.completion_tokens
                result = dataclasses.replace(check_result(output, request), attempts=attempt + 1)
                if result.ok:
                    final[key] = result
                    if cache is not None:
                        cache.put(key, result)
                elif _retried(result.error) and attempt < self.settings.max_parse_retries and request.temperature > 0:
                    queue.append((key, attempt + 1))
                else:
                    final[key] = result

    def _write_usage(
        self,
        store: Store,
        stage: str,
        usage_shard: str,
        run_id: str,
        results: list[ChatResult],
        usage: _Usage,
        seconds: float,
    ) -> None:
        row = {
            "stage": stage,
            "backend": self.engine.backend,
            "model": self.engine.model_id,
            "requests": len(results),
            "calls": usage.calls,
            "cached": usage.cached,
            "failures": sum(not result.ok for result in results),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "seconds": round(seconds, 6),
            "shard_id": usage_shard,
            "run_id": run_id,
        }
        store.write_shard("llm_usage", usage_shard, [row])


def _copy(result: ChatResult) -> ChatResult:
    """Each caller's slot gets its own object (identical requests share one answer, not one object)."""
    return dataclasses.replace(
        result, completions=[dataclasses.replace(completion) for completion in result.completions]
    )


def usage_summary(store: Store) -> pl.DataFrame:
    """LLM usage per run and stage (``sql/usage_summary.sql``), oldest run first."""
    return store.query(read_sql("usage_summary.sql"), tables=["llm_usage", "runs"])
