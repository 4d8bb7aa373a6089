"""Ingest task: one source file, streamed in shards; existing shards are skipped (resume)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from synthllm.ingest import SeenDocuments, SourceFile, iter_records, process_shard, shard_records
from synthllm.runs import write_failures
from synthllm.settings import settings_from_payload
from synthllm.store import Store


def load_seen_documents(store: Store) -> SeenDocuments:
    """Ids and hashes already stored: two small columns, not the texts."""
    seen = SeenDocuments()
    frame = store.query("SELECT doc_id, content_hash FROM documents", tables=["documents"])
    for doc_id, digest in frame.iter_rows():
        seen.add(doc_id, digest)
    return seen


def ingest_file(store: Store, source: SourceFile, settings_payload: dict[str, Any], run_id: str) -> dict[str, int]:
    """Plain-Python body of the task (also used by tests and benchmarks)."""
    settings = settings_from_payload(settings_payload)
    ingest = settings.ingest
    key = source.key(ingest)
    existing = store.shard_ids("documents")
    seen = load_seen_documents(store)
    summary = {"shards": 0, "skipped_shards": 0, "documents": 0, "failures": 0, "records": 0}
    records = iter_records(source, settings.store, batch_size=ingest.shard_size)
    for index, shard in enumerate(shard_records(records, ingest.shard_size)):
        shard_id = f"{key}-{index:05d}"
        summary["records"] += len(shard)
        if shard_id in existing:
            summary["skipped_shards"] += 1
            continue
        result = process_shard(shard, source, ingest, seen, shard_id, run_id)
        # failures first: a shard's document file is what marks the shard done
        summary["failures"] += write_failures(store, "ingest", shard_id, run_id, result.failures)
        summary["documents"] += store.write_shard("documents", shard_id, result.documents)
        summary["shards"] += 1
    return summary


@task(name="ingest-source", tags=["cpu"])
def ingest_source(source_uri: str, fingerprint: str, settings_payload: dict[str, Any], run_id: str) -> dict[str, int]:
    """Ingest one file. Cached on (file, fingerprint, settings): an unchanged file is not re-read."""
    settings = settings_from_payload(settings_payload)
    store = Store(settings.store)
    summary = ingest_file(store, SourceFile(source_uri, fingerprint), settings_payload, run_id)
    get_run_logger().info("%s: %s", source_uri, summary)
    return summary
