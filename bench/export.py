"""Benchmark: exporting the curated set -- wall, CPU and peak memory against the size of what is written.

The export streams the curated rows from DuckDB to every file a batch at a time
(``synthllm.curation.export.write_dataset``), so the process holds a batch and DuckDB's working
memory (its sort and joins, within ``store.duckdb_memory_limit``, spilling past it), not the
dataset. Each way runs in a fresh process on the same store, exporting under a name of its own:

- ``duckdb_default``: DuckDB's own memory limit (80 % of the machine);
- ``duckdb_1gb``: ``store.duckdb_memory_limit: 1GB``.

The store is one with a curated set: ``--store`` (e.g. the one a ``bench/pipeline_scale.py child
--full`` run leaves), or ``--documents N`` makes one first with the stand-in engine (ingest,
synthesize, curate; about 17 minutes at the paper's 520,000 documents on 2 cores). Prints one JSON
object::

    python bench/export.py --documents 20000
    python bench/export.py --store /path/to/store
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAYS = {"duckdb_default": None, "duckdb_1gb": "1GB"}


def export_once(store: str, name: str, memory_limit: str | None) -> dict:
    """One export in this process: its wall and CPU, and this process's peak RSS."""
    from synthllm.curation.export import export_dataset
    from synthllm.settings import load_settings
    from synthllm.store import Store

    overrides = {"filter.enabled": False, "engine.backend": "standin", "store.url": store,
                 "store.duckdb_memory_limit": memory_limit}
    settings = load_settings(None, overrides)
    started, cpu = time.perf_counter(), time.process_time()
    result = export_dataset(Store(settings.store), settings, name)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    written = {Path(path).relative_to(Path(store, "exports", name)).as_posix(): Path(path).stat().st_size
               for path in result["files"]}
    return {"rows": result["rows"], "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "bytes_written": written}


def make_store(folder: Path, documents: int) -> str:
    """Ingest, synthesize and curate ``documents`` generated documents with the stand-in engine."""
    subprocess.run([sys.executable, str(REPO / "bench" / "pipeline_scale.py"), "child", "--workdir", str(folder),
                    "--out", str(folder / "pipeline.json"), "--documents", str(documents), "--full"],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(folder / "prefect"), "PYTHONPATH": str(REPO),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return str(folder / "store")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="a local store holding a curated set")
    source.add_argument("--documents", type=int, help="make a store of this many documents first")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "NAME", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store, name, limit = args.child
        print(json.dumps(export_once(store, name, None if limit == "-" else limit)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or make_store(Path(tmp), args.documents)
        out: dict[str, object] = {"benchmark": "export", "store": store, "documents": args.documents}
        for way, limit in WAYS.items():
            done = subprocess.run([sys.executable, __file__, "--store", store, "--child", store, f"bench-{way}",
                                   limit or "-"], check=True, capture_output=True, text=True, cwd=REPO)
            out[way] = json.loads(done.stdout.strip().splitlines()[-1])
        for way in WAYS:  # the old export held about five times its JSON lines' size
            figures = out[way]
            figures["peak_rss_over_plain_jsonl"] = round(
                figures["peak_rss_mb"] * 2**20 / figures["bytes_written"]["plain/data.jsonl"], 2)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
