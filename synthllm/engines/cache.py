"""Response cache in the store: a rerun never repeats a stored LLM call.

Layout: ``cache/llm/<stage>/<shard_id>/{part,shard}-<uuid>.parquet``. One namespace per (stage,
shard): the shard's task is the only writer, so files never conflict and a lookup reads one small
folder. While a shard runs, every valid result is put here as it arrives and immutable ``part-``
files are written every ``flush_every`` results or ``flush_interval_s`` seconds, whichever comes
first, so a kill loses at most the unflushed tail and the rerun resumes from the parts. Parts are
at least ``MIN_FLUSH_GAP_S`` apart: a fast engine (thousands of replies a second) writes a few
large parts a second per shard, not one small file (one S3 request) per ``flush_every`` replies.

When the shard finishes, :meth:`ResponseCache.compact` rewrites the namespace as one ``shard-``
file (written first, then the files it replaces are deleted), so the store holds O(shards) cache
files, not O(requests). A killed compaction leaves both: readers dedupe by key. A file that is
not readable Parquet (a truncated upload) is a cache miss, not a dead end: it is logged, listed
in :attr:`ResponseCache.unreadable` with its path, and renamed ``*.corrupt`` by the compaction.

Only valid results are stored (see :class:`~synthllm.engines.client.LLM`), under the key of the
request the caller asked for (not the re-seeded retry that finally succeeded).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from synthllm.engines.base import ChatRequest, ChatResult, Completion, per_schema
from synthllm.runs import utcnow
from synthllm.store import Store, StoreError, hash_text, stable_json

log = logging.getLogger(__name__)

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
CACHE_UNREADABLE = "cache_unreadable"
# Seconds between two count-triggered part writes of one namespace (the time trigger is separate).
MIN_FLUSH_GAP_S = 0.5


def request_key(backend: str, model_id: str, request: ChatRequest) -> str:
    """Stable hash of everything that determines a reply: weights, messages, sampling, schema.

    The text hashed is ``stable_hash``'s JSON of the same parts (keys stay what they were); the
    schema's part, the same for every request of a stage, is encoded once."""
    head = stable_json([backend, model_id, [dict(message) for message in request.messages],
                        float(request.temperature), float(request.top_p), request.max_tokens, request.n,
                        request.seed])
    return hash_text(f"{head[:-1]}, {per_schema(request.json_schema, stable_json)}]", length=32)


@dataclass(frozen=True)
class UnreadablePart:
    """A cache file that could not be read: its replies are asked again."""

    path: str
    detail: str


class ResponseCache:
    """The cached replies of one namespace: loaded once, appended to in flushed parts.

    ``put`` may be called from one thread while a background timer flushes: the pending rows
    are swapped out under a lock, and files are written one at a time.
    """

    def __init__(
        self, store: Store, stage: str, shard_id: str, model_id: str, flush_every: int, flush_interval_s: float = 2.0
    ) -> None:
        self.store = store
        self.folder = store.path("cache", "llm", stage, shard_id)
        self.model_id = model_id
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.unreadable: list[UnreadablePart] = []
        self._files: list[str] = []  # readable files of the namespace (loaded, then written)
        self._rows: dict[str, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._pending_since = 0.0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None
        self._load()

    def _load(self) -> None:
        for path in self.store.glob(f"{self.folder}/*.parquet"):
            try:
                table = self.store.read_parquet_file(path)
            except StoreError as exc:
                self.unreadable.append(UnreadablePart(path, str(exc)))
                log.warning("response cache file is unreadable, its replies will be asked again: %s", exc)
                continue
            self._files.append(path)
            for row in table.to_pylist():
                self._rows[row["key"]] = row

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> ChatResult | None:
        """A fresh result marked ``cached`` (callers may change it without touching the cache)."""
        row = self._rows.get(key)
        return None if row is None else _result_from_row(row)

    def put(self, key: str, result: ChatResult) -> None:
        """Remember a valid result; a part is written once ``flush_every`` are waiting."""
        row = {
            "key": key,
            "model": self.model_id,
            "completions_json": _completions_json(result.completions),
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "latency_s": result.latency_s,
            "attempts": result.attempts,
        }
        with self._lock:
            self._rows[key] = row
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(row)
            due = self._due()
        if due:
            self.flush()
        elif self._timer is None:
            self._timer = threading.Thread(target=self._flush_on_time, daemon=True, name=f"cache-flush {self.folder}")
            self._timer.start()

    def _due(self) -> bool:
        """Whether pending rows should be written now (called under the lock)."""
        if not self._pending:
            return False
        now = time.monotonic()
        full = len(self._pending) >= self.flush_every and now - self._last_flush >= MIN_FLUSH_GAP_S
        return full or now - self._pending_since >= self.flush_interval_s

    def _flush_on_time(self) -> None:
        while not self._closed.wait(min(self.flush_interval_s / 4, MIN_FLUSH_GAP_S)):
            with self._lock:
                due = self._due()
            if due:
                self.flush()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                rows, self._pending = self._pending, []
                self._last_flush = time.monotonic()
            if not rows:
                return
            table = _part_table(rows, utcnow())
            path = f"{self.folder}/part-{uuid.uuid4().hex}.parquet"
            self.store.write_parquet(path, table)
            self._files.append(path)

    def close(self) -> None:
        """Stop the timer and write what is pending."""
        self._stop_timer()
        self.flush()

    def _stop_timer(self) -> None:
        self._closed.set()
        if self._timer is not None:
            self._timer.join()

    def compact(self) -> None:
        """One file for the whole namespace (the shard finished): write it, then drop the rest.
        Pending rows go straight into it, not into a part first."""
        self._stop_timer()
        with self._write_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending and len(self._files) <= 1 and not self.unreadable:
                return
            table = _part_table(list(self._rows.values()), utcnow())
            compacted = f"{self.folder}/shard-{uuid.uuid4().hex}.parquet"
            self.store.write_parquet(compacted, table)
            if self._files:
                self.store.fs.rm(self._files)
            for part in self.unreadable:  # kept for inspection, out of every later lookup
                self.store.fs.mv(part.path, f"{part.path}.corrupt")
            self._files = [compacted]
            self.unreadable = []


def _part_table(rows: list[dict[str, Any]], now) -> pa.Table:
    """Rows as a part table, column by column; a row without ``created_at`` (not yet written) gets ``now``."""
    columns = {name: [row[name] for row in rows] for name in PART_SCHEMA.names if name != "created_at"}
    columns["created_at"] = [row.get("created_at") or now for row in rows]
    return pa.Table.from_pydict(columns, schema=PART_SCHEMA)


def _completions_json(completions: list[Completion]) -> str:
    try:
        return orjson.dumps(completions).decode()
    except TypeError:  # a lone surrogate or a value orjson does not serialise
        return json.dumps([c.__dict__ for c in completions], default=str)


def _result_from_row(row: dict[str, Any]) -> ChatResult:
    return ChatResult(
        completions=[Completion(**c) for c in orjson.loads(row["completions_json"])],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_s=row["latency_s"],
        attempts=row["attempts"],
        cached=True,
    )
