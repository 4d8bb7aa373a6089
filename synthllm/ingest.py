"""Corpus ingest: JSONL / JSONL.gz / Parquet from local paths, globs or s3:// into ``documents``.

Records are streamed in shards of ``IngestSettings.shard_size``; memory holds one shard plus the
set of content hashes and ids already stored (for exact dedup). Bad records never stop a run:
each becomes a :class:`~synthllm.runs.Failure` with its raw text. A file that breaks part way
(corrupt gzip, truncated or damaged Parquet) keeps the records read before the break (Parquet:
every readable row group) and becomes an ``unreadable_source`` failure naming the file; only a
transient error (connection, timeout) is raised, as an :class:`IngestError` naming the file, so
that Prefect retries it.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from synthllm.runs import Failure, utcnow, write_failures
from synthllm.settings import IngestSettings, Settings, StoreSettings
from synthllm.store import Store, stable_hash

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
CHARS_PER_TOKEN = 4


# Errors that reading the same bytes again would repeat; their subclasses below are transient.
UNREADABLE_ERRORS = (EOFError, zlib.error, OSError, pa.ArrowException, ValueError)
TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


class IngestError(RuntimeError):
    """A source cannot be read at all (missing, unreachable, unknown format)."""


class TransientReadError(IngestError):
    """Reading a source failed in a way that may pass on a retry (connection, timeout, backend)."""


def _is_unreadable(exc: BaseException) -> bool:
    return isinstance(exc, UNREADABLE_ERRORS) and not isinstance(exc, TRANSIENT_ERRORS)


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
    item_id: str | None = None  # for errors: what failed (the file URI when the file broke)

    @property
    def is_break(self) -> bool:
        """Not a record: where the file stopped being readable."""
        return self.error is not None and self.error[0] == "unreadable_source"


def _unreadable(source: SourceFile, line_no: int, where: str, exc: BaseException) -> RawRecord:
    """The record that stands for a break in the file: a permanent failure, not a retry."""
    detail = f"{where}: {type(exc).__name__}: {exc}"
    return RawRecord(line_no, None, "", ("unreadable_source", detail), item_id=source.uri)


def _read_error(source: SourceFile, exc: BaseException) -> TransientReadError:
    return TransientReadError(f"{source.uri}: cannot read: {type(exc).__name__}: {exc}")


def _iter_jsonl(source: SourceFile, store: StoreSettings) -> Iterator[RawRecord]:
    last_line = 0
    try:
        for record in _parse_lines(source, store):
            last_line = record.line_no
            yield record
    except Exception as exc:  # noqa: BLE001 - classified: a broken file is recorded, a flaky one raised
        if not _is_unreadable(exc):
            raise _read_error(source, exc) from exc
        yield _unreadable(source, last_line + 1, f"unreadable after line {last_line}", exc)


def _parse_lines(source: SourceFile, store: StoreSettings) -> Iterator[RawRecord]:
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
    """Row group by row group, so a damaged one costs only its own rows; line numbers stay the
    row positions in the file either way."""
    try:
        with fsspec.open(source.uri, "rb", **storage_options(source.uri, store)) as handle:
            try:
                parquet = pq.ParquetFile(handle)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _is_unreadable(exc):
                    raise
                yield _unreadable(source, 1, "no readable Parquet footer", exc)
                return
            first_row = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                yield from _read_row_group(source, parquet, group, first_row, batch_size)
                first_row += rows
    except Exception as exc:  # noqa: BLE001 - a transient error while reading: retried by Prefect
        raise _read_error(source, exc) from exc


def _read_row_group(
    source: SourceFile, parquet: pq.ParquetFile, group: int, first_row: int, batch_size: int
) -> Iterator[RawRecord]:
    line_no = first_row
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group]):
            for row in batch.to_pylist():
                line_no += 1
                yield RawRecord(line_no, row, "")
    except Exception as exc:  # noqa: BLE001 - classified: a damaged row group is recorded and skipped
        if not _is_unreadable(exc):
            raise
        yield _unreadable(source, line_no + 1, f"row group {group} unreadable from row {line_no + 1}", exc)


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
    if record.raw or record.fields is None:
        return record.raw
    raw = json.dumps(record.fields, ensure_ascii=False, default=str)
    return raw if _not_utf8(raw) is None else json.dumps(record.fields, default=str)


def _not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 (a lone surrogate such as JSON's ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{exc.reason} {text[exc.start]!r} at character {exc.start}"
    return None


def _storable(text: str) -> str:
    """``text`` with unencodable characters written as escapes, for an id in a failure row."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _invalid_field(fields: dict[str, Any], names: list[str]) -> tuple[str, str] | None:
    """The first field (by name, or a metadata field) that holds text UTF-8 cannot store."""
    for name in names:
        if isinstance(fields.get(name), str) and (why := _not_utf8(fields[name])):
            return name, why
    if _not_utf8(json.dumps(fields, ensure_ascii=False, default=str)) is None:
        return None  # the common case: one check for the whole record
    for name, value in fields.items():
        if name in names:
            continue
        why = _not_utf8(name) or _not_utf8(json.dumps(value, ensure_ascii=False, default=str))
        if why:
            return _storable(name), why
    return None


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
        item_id = None if item_id is None else _storable(item_id)
        failures.append(Failure("ingest", item_id, reason, detail, _raw_of(record), f"{source.uri}#{record.line_no}"))

    for record in records:
        if record.error:
            fail(record, record.item_id, *record.error)
            continue
        fields = record.fields or {}
        raw_id = fields.get(settings.id_field)
        item_id = None if raw_id is None else str(raw_id)
        invalid = _invalid_field(fields, [settings.id_field, settings.text_field])
        if invalid:
            fail(record, item_id, "invalid_utf8", f"field {invalid[0]!r}: {invalid[1]}")
            continue
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


SUMMARY_COUNTS = ("shards", "skipped_shards", "documents", "failures", "records", "unreadable")


def load_seen_documents(store: Store) -> SeenDocuments:
    """Ids and hashes already stored: two small columns, not the texts."""
    seen = SeenDocuments()
    frame = store.query("SELECT doc_id, content_hash FROM documents", tables=["documents"])
    for doc_id, digest in frame.iter_rows():
        seen.add(doc_id, digest)
    return seen


def ingest_file(store: Store, settings: Settings, run_id: str, source: SourceFile) -> dict[str, Any]:
    """Ingest one file, skipping the shards already stored (resume).

    Returns what *this call* wrote, and ``run_id``: a caller given a cached result of an earlier
    run can tell it apart and count nothing as written (see :func:`add_file_summary`)."""
    ingest = settings.ingest
    key = source.key(ingest)
    existing = store.shard_ids("documents")
    seen = load_seen_documents(store)
    summary: dict[str, Any] = {name: 0 for name in SUMMARY_COUNTS}
    records = iter_records(source, settings.store, batch_size=ingest.shard_size)
    for index, shard in enumerate(shard_records(records, ingest.shard_size)):
        shard_id = f"{key}-{index:05d}"
        summary["records"] += sum(1 for record in shard if not record.is_break)
        if shard_id in existing:
            summary["skipped_shards"] += 1
            continue
        result = process_shard(shard, source, ingest, seen, shard_id, run_id)
        # failures first: a shard's document file is what marks the shard done
        summary["failures"] += write_failures(store, "ingest", shard_id, run_id, result.failures)
        summary["unreadable"] += sum(1 for record in shard if record.is_break)
        summary["documents"] += store.write_shard("documents", shard_id, result.documents)
        summary["shards"] += 1
    summary["run_id"] = run_id
    return summary


def add_file_summary(totals: dict[str, int], summary: dict[str, Any], run_id: str) -> None:
    """Add one file's summary to a run's totals; a summary another run wrote (a cached task
    result) counts as a ``cached_files`` and adds nothing, so a re-ingest reports 0 documents."""
    if summary.get("run_id") != run_id:
        totals["cached_files"] = totals.get("cached_files", 0) + 1
        return
    for name in SUMMARY_COUNTS:
        totals[name] = totals.get(name, 0) + summary[name]
