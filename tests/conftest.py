"""Shared fixtures: an ephemeral Prefect API for the whole session, temp stores, sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for every test that runs flows. Flow runs send
    heartbeats, as users' runs do (``tasks.prefect_costs.end_flow_runs_without_waiting_for_heartbeats``)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def command_env(prefect_home: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: its own Prefect home and temporary API server, never
    the test session's harness (whose PREFECT_API_URL would otherwise be inherited)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    return {**env, "PREFECT_HOME": str(prefect_home)}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store_settings(request, tmp_path: Path):
    """The same test on a local folder and on a real S3 endpoint (moto's server)."""
    import uuid

    from synthllm.settings import StoreSettings

    if request.param == "local":
        return StoreSettings(url=str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return StoreSettings(url=f"s3://synthllm-test/{uuid.uuid4().hex}", s3_endpoint_url=endpoint)


@pytest.fixture
def any_store(store_settings):
    """A store on a local folder, then on a real S3 endpoint (see ``store_settings``)."""
    from synthllm.store import Store

    return Store(store_settings)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on 127.0.0.1 (moto's threaded server) with a bucket ``synthllm-test``."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="synthllm-test")
    yield endpoint
    server.stop()


@pytest.fixture
def count_s3_calls(monkeypatch):
    """Call it to record the S3 API calls s3fs sends from then on (a request each), in order."""

    def start() -> list[str]:
        import s3fs
        from fsspec.asyn import sync_wrapper

        calls: list[str] = []
        call_s3 = s3fs.S3FileSystem._call_s3

        async def counting(self, method, *args, **kwargs):
            calls.append(getattr(method, "__name__", str(method)))
            return await call_s3(self, method, *args, **kwargs)

        monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
        monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", sync_wrapper(counting))  # s3fs's holds the original
        return calls

    return start
