"""Benchmark: S3 requests and wall time of one store query over a table of many shards (issue 13).

A coordinator's planning queries (coverage, candidates) read whole tables; on S3 each request is
a round trip. Two ways to read the same shards, in one run against moto's S3 server on 127.0.0.1:

* ``listed``: what synthllm does (``Store.query``): one listing request for the table's folder,
  and DuckDB reads the shards through ``synthllm.listed_fs``, which answers its questions about
  each file's size and date from that listing;
* ``plain_s3fs``: the same listing, and DuckDB reading through a plain s3fs instance, as before:
  it asks S3 for each file's details many times while it binds the view and runs the query.

Prints one JSON object::

    python bench/s3_reads.py --shards 200

Local moto answers a request in about 5 ms; real S3 in 10-50 ms, so the request counts carry over
and the walls grow.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUERY = "SELECT reason, count(*) AS n FROM failures GROUP BY reason ORDER BY reason"


def moto_endpoint():
    """A moto S3 server on a free loopback port, with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench-s3-reads")
    return server, endpoint


def counted_requests() -> collections.Counter:
    """Every S3 request s3fs sends from now on, by API call."""
    import s3fs

    counts: collections.Counter = collections.Counter()
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        counts[getattr(method, "__name__", str(method))] += 1
        return await call_s3(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counting
    return counts


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from synthllm.settings import StoreSettings
    from synthllm.store import Store

    server, endpoint = moto_endpoint()
    try:
        store = Store(StoreSettings(url="s3://bench-s3-reads/store", s3_endpoint_url=endpoint))
        for shard in range(args.shards):
            store.write_shard("failures", f"s{shard:05d}", [
                {"stage": "bench", "item_id": f"{shard}-{i}", "reason": f"r{shard % 7}", "shard_id": "x",
                 "run_id": "r", "created_at": datetime(2026, 1, 1)} for i in range(20)])
        counts = counted_requests()
        ways = {"listed": lambda: store.query(QUERY, tables=["failures"]),
                "plain_s3fs": lambda: plain_s3fs_query(store, QUERY)}
        out: dict = {"shards": args.shards, "query": QUERY}
        results = {}
        for name, run in ways.items():
            walls, cpus = [], []
            for _ in range(args.repeats):
                counts.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                results[name] = run().rows()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            out[name] = {"requests": sum(counts.values()), "by_call": dict(counts.most_common()),
                         "wall_s_median": round(sorted(walls)[len(walls) // 2], 3),
                         "cpu_s_median": round(sorted(cpus)[len(cpus) // 2], 3)}
        out["same_rows"] = results["listed"] == results["plain_s3fs"]
        out["requests_ratio"] = round(out["plain_s3fs"]["requests"] / out["listed"]["requests"], 1)
        out["wall_ratio"] = round(out["plain_s3fs"]["wall_s_median"] / out["listed"]["wall_s_median"], 1)
        print(json.dumps(out))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
