"""Benchmark: S3 requests and wall time of a store query over many shards, and per shard of a whole
``synthesize`` (issue 13).

On S3 each request is a round trip. Everything runs against moto's S3 server on 127.0.0.1.

``query``: a coordinator's planning queries (coverage, candidates) read whole tables. Two ways to
read the same shards:

* ``listed``: what synthllm does (``Store.query``): one listing request for the table's folder,
  and DuckDB reads the shards through ``synthllm.listed_fs``, which answers its questions about
  each file's size and date from that listing, and keeps small files' bytes by ETag;
* ``plain_s3fs``: the same listing, and DuckDB reading through a plain s3fs instance, as before:
  it asks S3 for each file's details many times while it binds the view and runs the query.

``synthesize``: ingest a generated corpus, then ``synthesize`` with the stand-in engine on the
thread runner, and count the requests of the synthesize (the coordinator's and every shard task's)
per shard it ran. Two ways, each on a store of its own:

* ``store``: what synthllm does: a file check is one HEAD, a read one GET, a folder's listing one
  LIST (``Store.exists``, ``read_bytes``, ``glob``/``table_files``);
* ``s3fs_calls``: the same through s3fs's ``exists``, ``cat_file`` and ``find``, as before: a
  missing file is a HEAD and a LIST, a read a HEAD and a GET, a folder not there yet three
  requests (s3fs's ``glob``, which the response cache used, made five: so this undercounts).

Prints one JSON object::

    python bench/s3_reads.py --shards 200 --documents 400

Local moto answers a request in about 5 ms; real S3 in 10-50 ms, so the request counts carry over
and the walls grow.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scale_corpus
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # s3_server

QUERY = "SELECT reason, count(*) AS n FROM failures GROUP BY reason ORDER BY reason"


def plain_s3fs_query(store, sql: str):
    """The read before ``listed_fs``: DuckDB on a plain s3fs instance over the listed files."""
    import duckdb

    from synthllm.store import sql_literal

    files = store.table_files("failures")
    con = duckdb.connect()
    try:
        con.register_filesystem(store.fs)
        file_list = ", ".join(sql_literal(f) for f in files)
        con.execute(f"CREATE VIEW failures AS SELECT * FROM read_parquet([{file_list}], union_by_name = true)")
        return con.sql(sql).pl()
    finally:
        con.close()


@contextlib.contextmanager
def s3fs_file_calls():
    """The store's file checks, reads and listings made as before, through s3fs's own calls."""
    from synthllm.store import Store

    def files_in(store, folder: str) -> dict:
        prefix = store.fs._strip_protocol(folder).rstrip("/") + "/"
        return {f"s3://{path}": info for path, info in store.fs.find(folder, detail=True).items()
                if path.startswith(prefix) and "/" not in path[len(prefix):]}

    saved = Store.exists, Store.read_bytes, Store._files_in
    Store.exists = lambda store, path: store.fs.exists(path)
    Store.read_bytes = lambda store, path: store.fs.cat_file(path)
    Store._files_in = files_in
    try:
        yield
    finally:
        Store.exists, Store.read_bytes, Store._files_in = saved


def synthesize_requests(endpoint: str, documents: int, shard_size: int, calls: list[str]) -> dict:
    """S3 requests of one synthesize per shard it ran, both ways, each on a store of its own."""
    from flows.ingest import ingest_flow
    from flows.synthesize import synthesize_flow
    from scale_corpus import write_corpus

    out: dict = {"documents": documents, "generation_shard_size": shard_size}
    with tempfile.TemporaryDirectory(prefix="s3-reads-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, documents)
        for way, file_calls in (("store", contextlib.nullcontext), ("s3fs_calls", s3fs_file_calls)):
            store = f"s3://bench-s3-reads/synthesize-{way}"
            overrides = {"filter.enabled": False, "engine.backend": "standin", "store.s3_endpoint_url": endpoint,
                         "generation.shard_size": shard_size, "gate.shard_size": 5 * shard_size}
            with file_calls():
                ingest_flow([str(corpus)], store=store, overrides=overrides)
                calls.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                summary = synthesize_flow(store=store, overrides=overrides)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            shards = sum(stage["shards"] for stage in summary["stages"])
            out[way] = {"shards": shards, "requests": len(calls), "requests_per_shard": round(len(calls) / shards, 1),
                        "by_call_per_shard": {call: round(n / shards, 2)
                                              for call, n in collections.Counter(calls).most_common()},
                        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
    out["requests_ratio"] = round(out["s3fs_calls"]["requests"] / out["store"]["requests"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="times the same query runs again after the first")
    parser.add_argument("--documents", type=int, default=400, help="corpus of the synthesize part (0: skip it)")
    parser.add_argument("--shard-size", type=int, default=25, help="generation.shard_size of the synthesize part")
    args = parser.parse_args()

    from s3_server import counting_s3_calls, moto_s3

    from synthllm.settings import StoreSettings
    from synthllm.store import Store

    with moto_s3("bench-s3-reads") as endpoint, counting_s3_calls() as calls:
        store = Store(StoreSettings(url="s3://bench-s3-reads/store", s3_endpoint_url=endpoint))
        for shard in range(args.shards):
            store.write_shard("failures", f"s{shard:05d}", [
                {"stage": "bench", "item_id": f"{shard}-{i}", "reason": f"r{shard % 7}", "shard_id": "x",
                 "run_id": "r", "created_at": datetime(2026, 1, 1)} for i in range(20)])
        ways = {"listed": lambda: store.query(QUERY, tables=["failures"]),
                "plain_s3fs": lambda: plain_s3fs_query(store, QUERY)}
        out: dict = {"shards": args.shards, "query": QUERY}
        results = {}
        for name, run in ways.items():
            runs = []  # the first query (nothing read yet), then the same query again
            for _ in range(1 + args.repeats):
                calls.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                results[name] = run().rows()
                runs.append((time.perf_counter() - wall, time.process_time() - cpu,
                             dict(collections.Counter(calls).most_common())))
            again = sorted(runs[1:])[len(runs[1:]) // 2]  # the median wall's run
            out[name] = {"first": {"requests": sum(runs[0][2].values()), "by_call": runs[0][2],
                                   "wall_s": round(runs[0][0], 3), "cpu_s": round(runs[0][1], 3)},
                         "again": {"requests": sum(again[2].values()), "by_call": again[2],
                                   "wall_s_median": round(again[0], 3), "cpu_s": round(again[1], 3)}}
        out["same_rows"] = results["listed"] == results["plain_s3fs"]
        for run in ("first", "again"):
            listed, plain = out["listed"][run], out["plain_s3fs"][run]
            out[f"requests_ratio_{run}"] = round(plain["requests"] / listed["requests"], 1)
            wall = "wall_s" if run == "first" else "wall_s_median"
            out[f"wall_ratio_{run}"] = round(plain[wall] / listed[wall], 1)
        if args.documents:
            out["synthesize"] = synthesize_requests(endpoint, args.documents, args.shard_size, calls)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
