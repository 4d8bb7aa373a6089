"""Cost of a fully cached rerun: its time as a share of the original run, and its LLM calls.

Runs the synthesize flow twice on the same store with the real embedded engine (SmolLM2 via
llama.cpp); the Prefect API is started before timing. Targets: rerun <= 5 % of the first run's
time, 0 LLM calls.

    python bench/rerun.py [--documents 3] [--levels 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()

    from prefect import flow

    from flows.synthesize import synthesize_flow
    from synthllm.ingest import expand_sources
    from synthllm.settings import load_settings
    from synthllm.store import Store
    from synthllm.ingest import ingest_file

    @flow
    def warm_up() -> None:
        """Starts the ephemeral Prefect API outside the timed runs."""

    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"{tmp}/store"
        settings = load_settings(store=url)
        for source in expand_sources(["data/sample/openstax-algebra.jsonl"], settings.store):
            ingest_file(Store(settings.store), settings, "bench", source)
        overrides = {
            "filter.enabled": False, "generation.levels": args.levels, "generation.max_documents": args.documents,
            "generation.max_combinations": args.documents, "generation.doc_chars": 800,
            "generation.sampling.max_tokens": args.max_tokens, "answer.sampling.max_tokens": args.max_tokens,
        }
        store = Store(settings.store)
        timings, calls = [], []
        for _ in range(2):
            started = time.perf_counter()
            synthesize_flow(store=url, overrides=overrides)
            timings.append(time.perf_counter() - started)
            usage = store.query("SELECT coalesce(sum(calls), 0) AS calls FROM llm_usage WHERE run_id = ?",
                                [summary_run_id(store)])
            calls.append(int(usage["calls"][0]))
        counts = store.query("SELECT level, count(*) AS n FROM questions GROUP BY level ORDER BY level").to_dicts()
    print(json.dumps({
        "benchmark": "rerun",
        "engine": "llamacpp smollm2-135m-instruct",
        "first_run_s": round(timings[0], 2),
        "rerun_s": round(timings[1], 2),
        "rerun_share": round(timings[1] / timings[0], 4),
        "first_run_llm_calls": calls[0],
        "rerun_llm_calls": calls[1],
        "questions_per_level": counts,
        "targets": {"rerun_share": "<= 0.05", "rerun_llm_calls": 0},
    }, indent=2))


def summary_run_id(store) -> str:
    """The newest synthesize run."""
    return store.query("SELECT run_id FROM runs WHERE flow = 'synthesize' AND event = 'started' "
                       "ORDER BY event_at DESC LIMIT 1")["run_id"][0]


if __name__ == "__main__":
    main()
