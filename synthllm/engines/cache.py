"""Response cache in the store: a rerun never repeats a stored LLM call.

Layout: ``cache/llm/<stage>/<shard_id>/part-<uuid>.parquet``. One namespace per (stage, shard):
the shard's task is the only writer, so parts never conflict and a lookup reads one small
folder. Parts are immutable and written every ``cache_flush_every`` completions, so a run killed
mid-batch loses at most the unflushed tail and its rerun resumes from the parts already written.

Only valid results are stored (see :class:`~synthllm.engines.client.LLM`), under the key of the
request the caller asked for (not the re-seeded retry that finally succeeded).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from synthllm.engines.base import ChatRequest, ChatResult, Completion
from synthllm.runs import utcnow
from synthllm.store import Store, stable_hash

PART_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("model", pa.string()),
        ("completions_json", pa.string()),  # [{"text", "finish_reason", "parsed"}, ...]
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("latency_s", pa.float64()),
        ("attempts", pa.int64()),
        ("created_at", pa.timestamp("us")),
    ]
)


def request_key(backend: str, model_id: str, request: ChatRequest) -> str:
    """Stable hash of everything that determines a reply: weights, messages, sampling, schema."""
    return stable_hash(
        backend,
        model_id,
        [dict(message) for message in request.messages],
        float(request.temperature),
        float(request.top_p),
        request.max_tokens,
        request.n,
        request.seed,
        request.json_schema,
        length=32,
    )


class ResponseCache:
    """The cached replies of one namespace: loaded once, appended to in flushed parts."""

    def __init__(self, store: Store, stage: str, shard_id: str, model_id: str, flush_every: int) -> None:
        self.store = store
        self.folder = store.path("cache", "llm", stage, shard_id)
        self.model_id = model_id
        self.flush_every = flush_every
        self._pending: list[dict[str, Any]] = []
        self._entries = self._load()

    def _load(self) -> dict[str, ChatResult]:
        parts = self.store.glob(f"{self.folder}/part-*.parquet")
        table = self.store.read_parquet_files(parts, PART_SCHEMA)
        return {row["key"]: _result_from_row(row) for row in table.to_pylist()}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ChatResult | None:
        """A copy marked ``cached`` (callers may change their result without touching the cache)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        return ChatResult(
            completions=[Completion(c.text, c.finish_reason, c.parsed) for c in entry.completions],
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            latency_s=entry.latency_s,
            attempts=entry.attempts,
            cached=True,
        )

    def put(self, key: str, result: ChatResult) -> None:
        """Remember a valid result; a part is written once ``flush_every`` are waiting."""
        self._entries[key] = result
        self._pending.append(
            {
                "key": key,
                "model": self.model_id,
                "completions_json": json.dumps([asdict(c) for c in result.completions], ensure_ascii=False),
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "latency_s": result.latency_s,
                "attempts": result.attempts,
                "created_at": utcnow(),
            }
        )
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending, schema=PART_SCHEMA)
        self.store.write_parquet(f"{self.folder}/part-{uuid.uuid4().hex}.parquet", table)
        self._pending = []


def _result_from_row(row: dict[str, Any]) -> ChatResult:
    completions = [Completion(**c) for c in json.loads(row["completions_json"])]
    return ChatResult(
        completions=completions,
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_s=row["latency_s"],
        attempts=row["attempts"],
    )
