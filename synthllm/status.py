"""What a store holds: row counts per table, failures by reason, runs, LLM usage."""

from __future__ import annotations

import json
from typing import Any

from synthllm.resources import read_sql
from synthllm.store import Store, schemas


def store_status(store: Store) -> dict[str, Any]:
    con = store.connect()
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

