"""Ingest flow: corpus files -> the ``documents`` table (with failures for bad records)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from synthllm.ingest import expand_sources
from synthllm.runs import public_params, recorded_run
from synthllm.settings import load_settings, settings_payload
from synthllm.store import Store
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
) -> dict[str, int]:
    """Ingest JSONL / JSONL.gz / Parquet files (paths, globs, s3:// URLs) into the store."""
    settings = load_settings(
        config,
        {"ingest.id_field": id_field, "ingest.text_field": text_field, "ingest.shard_size": shard_size},
        store,
    )
    target = Store(settings.store)
    target.check_reachable()
    files = expand_sources(sources, settings.store)
    payload = settings_payload(settings)
    task = ingest_source.with_options(**shard_task_options(target, settings))
    with recorded_run(target, "ingest", public_params(settings, sources=sources)) as (run_id, summary):
        totals = {"files": len(files), "shards": 0, "skipped_shards": 0, "documents": 0, "failures": 0, "records": 0}
        # One ordered pass over the files: exact dedup across files needs a single writer.
        for source in files:
            for key, value in task(source.uri, source.fingerprint, payload, run_id).items():
                totals[key] += value
        summary.update(totals)
    target.write_catalog()
    create_table_artifact(key="ingest-summary", table=[totals], description=f"Ingest into {target.url}")
    get_run_logger().info("ingest finished: %s", totals)
    return totals
