"""Ingest throughput and peak memory at 10k and 100k documents (flat memory is the target).

Each size runs in a fresh subprocess so peak RSS is that run's own. Documents are synthetic
(~2 KB each, unique), written as JSONL in several files, ingested with the real ingest code.

    python bench/ingest.py [--sizes 10000 100000] [--shard-size 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("solve equation slope intercept fraction integer prime factor divisor multiple area volume "
         "angle triangle circle radius probability ratio percent function graph polynomial").split()


def write_corpus(folder: Path, n_docs: int, files: int = 4) -> list[str]:
    rng = random.Random(n_docs)
    paths = []
    per_file = n_docs // files
    for f in range(files):
        path = folder / f"part-{f}.jsonl"
        with path.open("w") as handle:
            for i in range(per_file):
                text = " ".join(rng.choice(WORDS) for _ in range(300)) + f" doc {f}-{i}"
                handle.write(json.dumps({"id": f"d{f}-{i}", "text": text}) + "\n")
        paths.append(str(path))
    return paths


def run_one(n_docs: int, shard_size: int) -> dict:
    from synthllm.ingest import expand_sources
    from synthllm.settings import load_settings
    from synthllm.store import Store
    from synthllm.ingest import ingest_file

    with tempfile.TemporaryDirectory() as tmp:
        sources = write_corpus(Path(tmp), n_docs)
        baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        settings = load_settings(overrides={"ingest.shard_size": shard_size}, store=f"{tmp}/store")
        store = Store(settings.store)
        started = time.perf_counter()
        documents = 0
        for source in expand_sources(sources, settings.store):
            documents += ingest_file(store, settings, "bench", source)["documents"]
        seconds = time.perf_counter() - started
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"documents": documents, "seconds": round(seconds, 2), "docs_per_s": round(documents / seconds),
            "peak_rss_mb": round(peak_kb / 1024, 1), "rss_before_ingest_mb": round(baseline_kb / 1024, 1),
            "shard_size": shard_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=2_000)
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(args.single, args.shard_size)))
        return
    results = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--single", str(size), "--shard-size", str(args.shard_size)],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "ingest", "results": results,
                      "peak_rss_ratio_largest_vs_smallest": round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 2)},
                     indent=2))


if __name__ == "__main__":
    main()
