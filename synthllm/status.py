"""What a store holds: row counts per table, failures by reason, runs, LLM usage, leases, corrupt shards."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from synthllm.lease import held_leases
from synthllm.resources import read_sql
from synthllm.store import Store, StoreError, schemas


def store_status(store: Store) -> dict[str, Any]:
    """The report; a corrupt shard is listed under ``corrupt_files`` and left out of the counts,
    so one bad file does not hide the state of the whole store."""
    corrupt: dict[str, str] = {}
    try:
        report = _report(store, corrupt)
    except (StoreError, duckdb.Error):
        corrupt = store.corrupt_files()
        if not corrupt:
            raise
        report = _report(store, corrupt)
    report["leases"] = [{"lease": r.name, "held_by": r.owner, "since": r.acquired_at, "until": r.expires_at,
                         "live": not r.expired} for r in held_leases(store)]
    report["corrupt_files"] = [
        {"table": path.rsplit("/", 2)[-2], "path": path, "error": error} for path, error in sorted(corrupt.items())
    ]
    return report


def _report(store: Store, corrupt: dict[str, str]) -> dict[str, Any]:
    con = store.connect(exclude=corrupt)
    try:
        tables = {name: con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0] for name in schemas().names}
        failures = con.sql(read_sql("status_failures.sql")).pl().to_dicts()
        runs = con.sql(read_sql("status_runs.sql")).pl().to_dicts()
        usage = con.sql(read_sql("usage_summary.sql")).pl().to_dicts()
    finally:
        con.close()
    for run in runs:
        run["summary"] = json.loads(run.pop("summary_json")) if run.get("summary_json") else None
    return {"store": store.url, "tables": tables, "failures": failures, "runs": runs, "llm_usage": usage}
