"""The layer every stage calls: response cache, structured output with retries, token accounting.

``LLM(engine, store, settings).run(requests, stage=, shard_id=, run_id=)`` returns one
:class:`ChatResult` per request, in order, and never fails the batch for one bad item:

1. Requests already answered in this (stage, shard) namespace come from the response cache
   (``cached=True``, no engine call). Identical requests are sent once and share the answer.
2. The rest go to the engine. Every valid result is cached as it arrives: engines whose
   ``generate`` takes ``on_result`` hand each result over at once (and then get the whole queue
   in one call; vLLM sub-batches that keep its batch full); others get chunks of
   ``cache_flush_every`` requests (more for servers) and are cached per chunk. When the shard is
   done its cache is compacted to one file.
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
returned as they are. An exception from the engine itself (a crash, ``EngineAuthError``,
``RunStopped``) propagates after the results obtained so far are flushed to the cache: the
calling task fails (or stops), and a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import time
from collections import deque
from functools import lru_cache
from typing import Any

import fastjsonschema
import jsonschema
import polars as pl

from synthllm.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    Engine,
    check_stop,
    per_schema,
)
from synthllm.engines.cache import CACHE_UNREADABLE, ResponseCache, request_key
from synthllm.engines.registry import make_engine
from synthllm.resources import read_sql
from synthllm.runs import Failure
from synthllm.settings import EngineSettings
from synthllm.store import Store, stable_json

__all__ = ["ENGINE_UNREACHABLE", "LLM", "RETRIED_REASONS", "make_engine", "retry_seed", "usage_summary"]

ENGINE_UNREACHABLE = "engine_unreachable"  # transient: the server was down; a rerun asks again
INVALID_JSON = "invalid_json"
SCHEMA_MISMATCH = "schema_mismatch"
TRUNCATED = "truncated"
NO_OUTPUT = "no_output"
RETRIED_REASONS = (INVALID_JSON, SCHEMA_MISMATCH, TRUNCATED)

# Chunk size multiplier of max_concurrency for engines cached per chunk: a server (openai) or a
# continuous-batching engine (vllm) must get enough requests at once to keep its batch full.
_CHUNK_CONCURRENCY_FACTOR = {"openai": 4, "vllm": 8}
_SEED_STRIDE = 1_000_003  # prime stride: retry seeds never collide with neighbouring items' seeds
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)


def retry_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of retry ``attempt`` (0 = the caller's own request)."""
    if attempt == 0:
        return seed
    return ((seed or 0) + attempt * _SEED_STRIDE) % 2**31


class SchemaCheck:
    """A reply schema, checked fast by code fastjsonschema generates (about 27x jsonschema's
    ``is_valid`` on a level-1 reply); jsonschema has the last word on a rejection and explains it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        validator_class = jsonschema.validators.validator_for(schema)
        try:
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid json_schema in a request: {exc.message}") from exc
        self.full = validator_class(schema)
        self.fast = fastjsonschema.compile(schema)

    def mismatch(self, value: Any) -> str | None:
        """Why ``value`` does not match (None: it does)."""
        try:
            self.fast(value)
            return None
        except fastjsonschema.JsonSchemaException:
            error = jsonschema.exceptions.best_match(self.full.iter_errors(value))
            return None if error is None else f"{error.message} at {error.json_path}"


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> SchemaCheck:
    return SchemaCheck(json.loads(schema_json))


def _build_validator(schema: dict[str, Any]) -> SchemaCheck:
    return _validator(per_schema(schema, stable_json))  # the JSON the request keys use too


def validator_for(schema: dict[str, Any]) -> SchemaCheck:
    """The schema's validator, looked up by identity (``per_schema``): no serialising per reply;
    equal schemas in other objects share one through ``_validator``."""
    return per_schema(schema, _build_validator)


def parse_json_reply(text: str) -> Any:
    """The JSON value in a reply; whitespace and a Markdown code fence around it are tolerated."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped) if stripped.startswith("```") else None
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
    mismatch = validator_for(request.json_schema).mismatch(value)
    if mismatch is not None:
        return f"{SCHEMA_MISMATCH}: {mismatch}"
    # A complete, valid object is kept even when the engine then padded up to max_tokens.
    completion.parsed = value
    return None


def check_result(result: ChatResult, request: ChatRequest) -> ChatResult:
    """The engine's result with completions validated (in place): valid ones kept, or the first error set."""
    if result.error is not None:
        return result
    if not result.completions:
        result.error = f"{NO_OUTPUT}: the engine returned no completion"
        return result
    errors = [check_completion(completion, request) for completion in result.completions]
    valid = [completion for completion, error in zip(result.completions, errors) if error is None]
    if valid:
        result.completions = valid
    else:
        result.error = errors[0]
    return result


def _retried(error: str | None) -> bool:
    return error is not None and error.split(":", 1)[0] in RETRIED_REASONS


@dataclasses.dataclass
class _Usage:
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Batch:
    """The state of one ``LLM.run``: what is final, what waits for (another) engine call."""

    def __init__(self, requests: list[ChatRequest], keys: list[str], cache: ResponseCache | None) -> None:
        self.requests = requests
        self.cache = cache
        self.usage = _Usage()
        self.final: dict[str, ChatResult] = {}
        self.first_index: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key in self.final or key in self.first_index:
                continue
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                self.final[key] = hit
            else:
                self.first_index[key] = index
        self.usage.cached = sum(key in self.final for key in keys)
        self.queue: deque[tuple[str, int]] = deque((key, 0) for key in self.first_index)

    def take(self, count: int, max_retries: int) -> _EngineCall:
        """The next ``count`` queued items as one engine call (retries re-seeded)."""
        items = [self.queue.popleft() for _ in range(min(count, len(self.queue)))]
        sent = []
        for key, attempt in items:
            original = self.requests[self.first_index[key]]
            sent.append(original if attempt == 0 else dataclasses.replace(original, seed=retry_seed(original.seed, attempt)))
        return _EngineCall(self, items, sent, max_retries)

    def accept(self, key: str, attempt: int, request: ChatRequest, output: ChatResult, max_retries: int) -> None:
        """Validate one engine result; cache it, queue a retry, or keep the failure."""
        usage = self.usage
        usage.calls += 1
        usage.prompt_tokens += output.prompt_tokens
        usage.completion_tokens += output.completion_tokens
        result = check_result(output, request)
        result.attempts = attempt + 1
        if result.ok:
            self.final[key] = result
            if self.cache is not None:
                self.cache.put(key, result)
        elif _retried(result.error) and attempt < max_retries and request.temperature > 0:
            self.queue.append((key, attempt + 1))
        else:
            self.final[key] = result

    def results(self, keys: list[str]) -> list[ChatResult]:
        """One result per request; a repeated request gets its own copy of the shared answer."""
        seen: set[str] = set()
        results = []
        for key in keys:
            result = self.final[key]
            results.append(_copy(result) if key in seen else result)
            seen.add(key)
        return results


class _EngineCall:
    """One ``generate`` call: its results are accepted as the engine hands them over, or at the end."""

    def __init__(self, batch: _Batch, items: list[tuple[str, int]], sent: list[ChatRequest], max_retries: int) -> None:
        self.batch, self.items, self.sent, self.max_retries = batch, items, sent, max_retries
        self.accepted = [False] * len(items)

    def on_result(self, index: int, output: ChatResult) -> None:
        self.accepted[index] = True
        key, attempt = self.items[index]
        self.batch.accept(key, attempt, self.sent[index], output, self.max_retries)

    def accept_rest(self, outputs: list[ChatResult]) -> None:
        """Results the engine returned without handing them over (an engine without ``on_result``)."""
        for index, output in enumerate(outputs):
            if not self.accepted[index]:
                self.on_result(index, output)


class LLM:
    """Structured output, response cache and usage accounting over any :class:`Engine`.

    ``store=None`` turns the cache and the usage rows off (quick experiments). Safe to share
    between threads: all state of a call lives in that call.
    """

    def __init__(self, engine: Engine, store: Store | None, settings: EngineSettings) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        # Engines written elsewhere may take only ``requests``: those are cached per chunk.
        self.streams = "on_result" in inspect.signature(engine.generate).parameters

    def chunk_size(self, queued: int) -> int:
        """Requests per engine call (``queued`` wait): everything for an engine that hands results
        over one by one, else one cache flush, or enough to keep a server's batch full."""
        factor = _CHUNK_CONCURRENCY_FACTOR.get(self.engine.backend)
        flush_every = self.settings.cache_flush_every
        if self.streams and self.engine.backend != "vllm":
            return queued
        return max(flush_every, factor * self.settings.max_concurrency) if factor else flush_every

    def run(
        self,
        requests: list[ChatRequest],
        *,
        stage: str,
        shard_id: str,
        run_id: str,
        problems: list[Failure] | None = None,
    ) -> list[ChatResult]:
        """One result per request (see the module docstring).

        ``problems``, when given, receives one ``cache_unreadable`` :class:`Failure` per response
        cache file that could not be read (its replies were asked again), for the failures table.
        """
        started = time.perf_counter()
        usage_shard = f"{stage}-{shard_id}"
        for schema in {id(r.json_schema): r.json_schema for r in requests if r.json_schema is not None}.values():
            validator_for(schema)  # a broken schema is the caller's bug: fail before any engine call
        cache = None
        if self.store is not None:
            self.store.shard_path("llm_usage", usage_shard)  # a bad id fails before any engine call
            cache = ResponseCache(
                self.store,
                stage,
                shard_id,
                self.engine.model_id,
                self.settings.cache_flush_every,
                self.settings.cache_flush_interval_s,
            )
            if problems is not None:
                problems.extend(
                    Failure(stage, None, CACHE_UNREADABLE, part.detail, source=part.path) for part in cache.unreadable
                )

        keys = [request_key(self.engine.backend, self.engine.model_id, r) for r in requests]
        batch = _Batch(requests, keys, cache)
        try:
            self._generate_missing(batch, stage, shard_id)
        except BaseException:
            if cache is not None:
                cache.close()
            raise
        if cache is not None:
            cache.compact()

        results = batch.results(keys)
        if self.store is not None:
            self._write_usage(self.store, stage, usage_shard, run_id, results, batch.usage, time.perf_counter() - started)
        return results

    def _generate_missing(self, batch: _Batch, stage: str, shard_id: str) -> None:
        """Feed the engine; failed items go back in the queue with a new seed."""
        while batch.queue:
            check_stop(f"{stage} shard {shard_id}")
            call = batch.take(self.chunk_size(len(batch.queue)), self.settings.max_parse_retries)
            if self.streams:
                outputs = self.engine.generate(call.sent, on_result=call.on_result)
            else:
                outputs = self.engine.generate(call.sent)
            if len(outputs) != len(call.sent):
                raise RuntimeError(
                    f"engine {self.engine.backend}:{self.engine.model_id} returned {len(outputs)} results "
                    f"for {len(call.sent)} requests"
                )
            call.accept_rest(outputs)

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
