"""Shared fixtures: an ephemeral Prefect API for the whole session, temp stores, sample data."""

from __future__ import annotations

import os
from contextlib import ExitStack
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
    from s3_server import moto_s3

    with moto_s3("synthllm-test") as endpoint:
        yield endpoint


@pytest.fixture
def count_s3_calls():
    """Call it to record the S3 API calls s3fs sends from then on (a request each), in order."""
    from s3_server import counting_s3_calls

    with ExitStack() as stack:
        yield lambda: stack.enter_context(counting_s3_calls())
