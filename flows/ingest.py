"""Ingest flow: corpus files -> the ``documents`` table (with failures for bad records)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.tracking import tracked
from synthllm.ingest import SUMMARY_COUNTS, add_file_summary, expand_sources
from synthllm.runs import open_run
from synthllm.settings import given_options, resolve_settings, settings_payload
from tasks.common import shard_task_options
from tasks.ingest import ingest_source


@flow(name="ingest")
def ingest_flow(
    sources: list[str],
    store: str | None = None,
    config: str | None = None,
    id_field: str | None = None,
    text_field: str | None = None,
    shard_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    parent_settings: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Ingest JSONL / JSONL.gz / Parquet files (paths, globs, s3:// URLs) into the store.

    Args:
        sources: Corpus files: paths, globs or s3:// URLs.
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker.
        id_field: Record field holding the document id (default ingest.id_field, "id").
        text_field: Record field holding the text (default ingest.text_field, "text").
        shard_size: Documents per stored shard (default ingest.shard_size).
        overrides: Dotted settings on top of the config file, e.g. {"ingest.min_chars": 200}.
        parent_settings: Resolved settings handed down by a parent run (synthllm-run); leave empty.
    """
    fields = {"ingest.id_field": id_field, "ingest.text_field": text_field, "ingest.shard_size": shard_size}
    resolved = resolve_settings(config, {**(overrides or {}), **given_options(fields)}, store, parent_settings)
    files = expand_sources(sources, resolved.store)
    payload = settings_payload(resolved)
    logger = get_run_logger()
    with (
        open_run("ingest", resolved, sources=sources) as run,
        tracked("ingest", run.store, {"ingest": 1.0}) as tracker,
        # exact dedup across files reads what is stored before writing: one ingest at a time
        run.lease("ingest", "ingest", logger) as lease,
    ):
        target, run_id, summary = run.store, run.run_id, run.summary
        task = ingest_source.with_options(**shard_task_options(target, resolved))
        totals = {"files": len(files), "cached_files": 0, **dict.fromkeys(SUMMARY_COUNTS, 0)}
        tracker.plan("ingest", len(files))
        # One ordered pass over the files: exact dedup across files needs a single writer.
        for source in files:
            lease.check()
            result = task(source.uri, source.fingerprint, payload, run_id)
            add_file_summary(totals, result, run_id)
            fresh = result.get("run_id") == run_id  # else a cached result of an earlier run
            tracker.finish_shard("ingest", {"items": result["records"], "rows": result["documents"],
                                            "failures": result["failures"], "skipped": not fresh} if fresh
                                 else {"skipped": True})
        tracker.close("ingest")
        summary.update(totals)
    create_table_artifact(key="ingest-summary", table=[totals], description=f"Ingest into {target.url}")
    logger.info("ingest finished: %s", totals)
    return totals
