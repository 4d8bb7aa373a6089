"""Corpus ingest: JSONL / JSONL.gz / Parquet from local paths, globs or s3:// into ``documents``.

Records are streamed in shards of ``IngestSettings.shard_size``; memory holds one shard plus the
set of content hashes and ids already stored (for exact dedup). Bad records never stop a run:
each becomes a :class:`~synthllm.runs.Failure` with its raw text.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from synthllm.runs import Failure, utcnow
from synthllm.settings import IngestSettings, StoreSettings
from synthllm.store import stable_hash

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
CHARS_PER_TOKEN = 4


class IngestError(RuntimeError):
    """A source cannot be read at all (missing, unreachable, unknown format)."""


@dataclass(frozen=True)
class SourceFile:
    """One input file and what identifies its content (size + modification time / ETag)."""

    uri: str
    fingerprint: str

    @property
    def format(self) -> str:
        lowered = self.uri.lower()
        if lowered.endswith(PARQUET_SUFFIXES):
            return "parquet"
        if lowered.endswith(JSONL_SUFFIXES):
            return "jsonl"
        raise IngestError(f"{self.uri}: unknown format (expected {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)})")

    def key(self, settings: IngestSettings) -> str:
        """Shard-id prefix: the same file with the same settings always maps to the same shards."""
        return stable_hash(self.uri, self.fingerprint, settings.model_dump(mode="json"))


def storage_options(uri: str, store: StoreSettings) -> dict[str, Any]:
    """S3 sources use the store's endpoint/region (credentials come from the AWS environment)."""
    if not uri.startswith("s3://"):
        return {}
    client_kwargs = {}
    if store.s3_endpoint_url:
        client_kwargs["endpoint_url"] = store.s3_endpoint_url
    if store.s3_region:
        client_kwargs["region_name"] = store.s3_region
    return {"client_kwargs": client_kwargs, "skip_instance_cache": True}


def expand_sources(sources: list[str], store: StoreSettings) -> list[SourceFile]:
    """Resolve paths and globs to files; a source that matches nothing is an error, not a no-op."""
    files: list[SourceFile] = []
    for source in sources:
        try:
            fs, path = url_to_fs(source, **storage_options(source, store))
            matches = fs.glob(path) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
            infos = [fs.info(m) for m in sorted(matches)]
        except Exception as exc:  # noqa: BLE001 - any backend error: report which source and why
            raise IngestError(f"cannot read source {source}: {type(exc).__name__}: {exc}") from exc
        infos = [i for i in infos if i.get("type") != "directory"]
        if not infos:
            raise IngestError(f"source {source} matches no file")
        protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
        for info in infos:
            name = info["name"]
            uri = name if not protocol or name.startswith(protocol) else protocol + name
            stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
            files.append(SourceFile(uri=uri, fingerprint=f"{info.get('size')}:{stamp}"))
    return files


@dataclass
class RawRecord:
    """One record as read: parsed fields, or the raw text and why it could not be parsed."""

    line_no: int
    fields: dict[str, Any] | None
    raw: str
    error: tuple[str, str] | None = None  # (reason, detail)


def _iter_jsonl(source: SourceFile, store: StoreSettings) -> Iterator[RawRecord]:
    with fsspec.open(source.uri, "rb", compression="infer", **storage_options(source.uri, store)) as handle:
        for line_no, line in enumerate(handle, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = line.decode("utf-8", errors="backslashreplace").rstrip("\n")
                yield RawRecord(line_no, None, raw, ("invalid_utf8", f"byte offset {exc.start}: {exc.reason}"))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRecord(line_no, None, text.rstrip("\n"), ("invalid_json", str(exc)))
                continue
            if not isinstance(value, dict):
                yield RawRecord(line_no, None, text.rstrip("\n"), ("not_an_object", f"got {type(value).__name__}"))
                continue
            yield RawRecord(line_no, value, text.rstrip("\n"))


def _iter_parquet(source: SourceFile, store: StoreSettings, batch_size: int) -> Iterator[RawRecord]:
    with fsspec.open(source.uri, "rb", **storage_options(source.uri, store)) as handle:
        parquet = pq.ParquetFile(handle)
        line_no = 0
        for batch in parquet.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                line_no += 1
                yield RawRecord(line_no, row, "")


def iter_records(source: SourceFile, store: StoreSettings, batch_size: int = 10_000) -> Iterator[RawRecord]:
    if source.format == "parquet":
        return _iter_parquet(source, store, batch_size)
    return _iter_jsonl(source, store)


def normalise_text(text: str, form: str) -> str:
    """Unicode normal form, Unix newlines, no NUL bytes, no surrounding whitespace."""
    text = unicodedata.normalize(form, text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class SeenDocuments:
    """Ids and content hashes already in the store (or earlier in this run): exact dedup."""

    hash_to_id: dict[str, str] = field(default_factory=dict)
    id_to_hash: dict[str, str] = field(default_factory=dict)

    def add(self, doc_id: str, digest: str) -> None:
        self.hash_to_id[digest] = doc_id
        self.id_to_hash[doc_id] = digest


@dataclass
class ShardResult:
    documents: list[dict[str, Any]]
    failures: list[Failure]


def _raw_of(record: RawRecord) -> str:
    return record.raw or json.dumps(record.fields, ensure_ascii=False, default=str)


def process_shard(
    records: list[RawRecord],
    source: SourceFile,
    settings: IngestSettings,
    seen: SeenDocuments,
    shard_id: str,
    run_id: str,
) -> ShardResult:
    """Validate, normalise and dedup one shard of records (pure: no I/O)."""
    documents: list[dict[str, Any]] = []
    failures: list[Failure] = []
    now = utcnow()

    def fail(record: RawRecord, item_id: str | None, reason: str, detail: str) -> None:
        failures.append(Failure("ingest", item_id, reason, detail, _raw_of(record), f"{source.uri}#{record.line_no}"))

    for record in records:
        if record.error:
            fail(record, None, *record.error)
            continue
        fields = record.fields or {}
        raw_id = fields.get(settings.id_field)
        item_id = None if raw_id is None else str(raw_id)
        if settings.text_field not in fields or fields[settings.text_field] is None:
            fail(record, item_id, "missing_text", f"no {settings.text_field!r} field")
            continue
        value = fields[settings.text_field]
        if not isinstance(value, str):
            fail(record, item_id, "text_not_string", f"{settings.text_field!r} is {type(value).__name__}")
            continue
        text = normalise_text(value, settings.unicode_form)
        if not text:
            fail(record, item_id, "empty_text", "text is empty after normalisation")
            continue
        if len(text) < settings.min_chars:
            fail(record, item_id, "too_short", f"{len(text)} chars < min_chars={settings.min_chars}")
            continue
        if len(text) > settings.max_chars:
            fail(record, item_id, "oversized", f"{len(text)} chars > max_chars={settings.max_chars}")
            continue
        digest = content_hash(text)
        doc_id = item_id if item_id else digest
        if digest in seen.hash_to_id:
            fail(record, doc_id, "duplicate_content", f"same text as document {seen.hash_to_id[digest]}")
            continue
        if doc_id in seen.id_to_hash:
            fail(record, doc_id, "duplicate_id", "another document with different text has this id")
            continue
        seen.add(doc_id, digest)
        meta = {k: v for k, v in fields.items() if k not in (settings.id_field, settings.text_field)}
        documents.append(
            {
                "doc_id": doc_id,
                "text": text,
                "content_hash": digest,
                "n_chars": len(text),
                "n_tokens_est": math.ceil(len(text) / CHARS_PER_TOKEN),
                "source": source.uri,
                "line_no": record.line_no,
                "meta_json": json.dumps(meta, ensure_ascii=False, default=str) if meta else None,
                "shard_id": shard_id,
                "run_id": run_id,
                "ingested_at": now,
            }
        )
    return ShardResult(documents, failures)


def shard_records(records: Iterator[RawRecord], shard_size: int) -> Iterator[list[RawRecord]]:
    shard: list[RawRecord] = []
    for record in records:
        shard.append(record)
        if len(shard) >= shard_size:
            yield shard
            shard = []
    if shard:
        yield shard
