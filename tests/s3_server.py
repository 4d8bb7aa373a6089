"""A real S3 endpoint on 127.0.0.1 (moto's threaded server) and a count of the requests s3fs
sends, for the tests' fixtures (``conftest.py``) and ``bench/s3_reads.py``: both measure the same
thing, so both count it the same way."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """moto's S3 server on a free port with ``bucket`` created; its endpoint URL. The process's AWS
    credentials become moto's dummy ones: real keys are never sent to it."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


@contextmanager
def counting_s3_calls() -> Iterator[list[str]]:
    """The S3 API calls s3fs sends inside the block (a request each), in order, by call name."""
    import s3fs
    from fsspec.asyn import sync_wrapper

    calls: list[str] = []
    saved = s3fs.S3FileSystem._call_s3, s3fs.S3FileSystem.call_s3
    call_s3 = saved[0]

    async def counting(self, method, *args, **kwargs):
        calls.append(getattr(method, "__name__", str(method)))
        return await call_s3(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counting
    s3fs.S3FileSystem.call_s3 = sync_wrapper(counting)  # s3fs's own holds the uncounted one
    try:
        yield calls
    finally:
        s3fs.S3FileSystem._call_s3, s3fs.S3FileSystem.call_s3 = saved
