"""Ingest task: Prefect wrapper around :func:`synthllm.ingest.ingest_file` (one source file)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from synthllm.ingest import SourceFile, ingest_file
from tasks.common import open_payload, retry_transient


@task(name="ingest-source", retry_condition_fn=retry_transient)
def ingest_source(source_uri: str, fingerprint: str, settings_payload: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Ingest one file. Cached on (file, fingerprint, settings): an unchanged file is not re-read,
    and the cached summary carries the run id that wrote it (see synthllm.ingest.add_file_summary)."""
    settings, store = open_payload(settings_payload)
    summary = ingest_file(store, settings, run_id, SourceFile(source_uri, fingerprint))
    get_run_logger().info("%s: %s", source_uri, summary)
    return summary
