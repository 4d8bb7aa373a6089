"""The command line as a user meets it: clean settings errors, status, export --out, progress
lines, reuse of a running Prefect server, stop on signals, no third-party progress bars."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from conftest import command_env
from test_curation import curated_store  # noqa: F401 - fixture
from typer.testing import CliRunner

import flows.curate  # noqa: F401 - Prefect's log handlers bind to the real stderr, not CliRunner's
from synthllm.cli import app, stop_on_signals
from synthllm.commands import server
from synthllm.engines.base import stop_requested
from synthllm.store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("args", "named"), [
    (["synthesize", "--set", "generation.shard_size=abc"], "generation.shard_size"),
    (["export", "--set", "generation.nope=1"], "generation.nope"),
    (["ingest", "corpus.jsonl", "--set", "ingest.min_chars=0"], "ingest.min_chars"),
    (["dedup", "--set", "curation.nope=1"], "curation.nope"),
    (["status"], "SYNTHLLM_ORCHESTRATION__TASK_WORKERS"),
])
def test_bad_settings_end_with_one_message_and_exit_2(args, named, store_url, monkeypatch) -> None:
    if args == ["status"]:
        monkeypatch.setenv("SYNTHLLM_ORCHESTRATION__TASK_WORKERS", "0")
    outcome = CliRunner().invoke(app, [*args, "--store", store_url])
    assert outcome.exit_code == 2, outcome.output
    assert isinstance(outcome.exception, SystemExit)  # no traceback
    assert "settings error: invalid settings" in outcome.output
    assert named in outcome.output


@pytest.mark.integration
def test_ingest_takes_set_into_s3(prefect_harness, s3_endpoint, tmp_path) -> None:
    """``--set`` on ingest (as on the other flow commands): the S3 endpoint and an ingest setting."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "long", "text": "A triangle has three sides and three angles."}\n'
                      '{"id": "short", "text": "Too short."}\n')
    outcome = CliRunner().invoke(app, ["ingest", str(corpus), "--store", "s3://synthllm-test/cli-ingest",
                                       "--set", f"store.s3_endpoint_url={s3_endpoint}", "--set", "ingest.min_chars=20"])
    assert outcome.exit_code == 0, outcome.output
    store = Store(Store("s3://synthllm-test/cli-ingest").settings.model_copy(update={"s3_endpoint_url": s3_endpoint}))
    assert store.query("SELECT doc_id FROM documents", tables=["documents"])["doc_id"].to_list() == ["long"]
    assert store.query("SELECT item_id FROM failures", tables=["failures"])["item_id"].to_list() == ["short"]


def test_scaling_commands_report_bad_settings(store_url, monkeypatch) -> None:
    monkeypatch.setenv("SYNTHLLM_SCALING__HOLDOUT", "-1")
    outcome = CliRunner().invoke(app, ["scaling", "fit", "--store", store_url])
    assert outcome.exit_code == 1 and isinstance(outcome.exception, SystemExit), outcome.output
    assert "error: invalid settings" in outcome.output and "scaling.holdout" in outcome.output


def test_status_lists_corrupt_files(store_url) -> None:
    store = Store(store_url)
    store.write_shard("documents", "good", [{"doc_id": "d1", "text": "x", "source": "s", "n_chars": 1}])
    store.write_bytes(store.shard_path("documents", "broken"), b"not parquet")
    outcome = CliRunner().invoke(app, ["status", "--store", store_url])
    assert outcome.exit_code == 0, outcome.output
    assert "corrupt files" in outcome.output and "broken.parquet" in outcome.output


def test_status_names_the_runs_holding_the_store(any_store, store_url) -> None:
    """A second run waits for a lease; ``status`` says which run holds it, and whether it is live
    or a killed run's lease waiting to expire (local folder and S3)."""
    from synthllm.lease import LeaseRecord, acquire, lease_path
    from synthllm.status import store_status

    killed = LeaseRecord("curation", "run-k", "tk", "2024-01-01T00:00:00+00:00", "2024-01-01T00:01:00+00:00")
    any_store.write_bytes(lease_path(any_store, "curation"), killed.encode())
    with acquire(any_store, "stage-answer", "run-a", ttl_s=30):
        leases = {row["lease"]: row for row in store_status(any_store)["leases"]}
        assert {name: (row["held_by"], row["live"]) for name, row in leases.items()} == {
            "curation": ("run-k", False), "stage-answer": ("run-a", True)}
    assert [row["lease"] for row in store_status(any_store)["leases"]] == ["curation"]  # released

    local = Store(store_url)
    with acquire(local, "filter", "run-f", ttl_s=30):
        outcome = CliRunner().invoke(app, ["status", "--store", store_url])
    assert outcome.exit_code == 0, outcome.output
    assert "leases" in outcome.output and "run-f" in outcome.output and "filter" in outcome.output


def test_export_out_copies_the_dataset_and_takes_set(curated_store, prefect_harness, tmp_path) -> None:  # noqa: F811
    from flows.curate import curate_flow

    store, _ = curated_store
    curate_flow(store=store.url, steps=["dedup", "decontaminate"])
    out = tmp_path / "published"
    outcome = CliRunner().invoke(app, ["export", "--store", store.url, "--name", "x", "--format", "parquet",
                                       "--out", str(out), "--set", "answer.min_agreement=0.0"])
    assert outcome.exit_code == 0, outcome.output
    copied = pl.read_parquet(out / "plain" / "data.parquet")
    assert copied.height == pl.read_parquet(store.path("exports", "x", "plain", "data.parquet")).height > 0
    assert (out / "README.md").read_text().startswith("---")
    # progress comes as plain lines when stdout is not a terminal
    assert "export: 1/1 shards" in outcome.output


@pytest.mark.integration
def test_export_out_to_s3(curated_store, prefect_harness, s3_endpoint) -> None:  # noqa: F811
    from flows.curate import curate_flow

    store, _ = curated_store
    curate_flow(store=store.url, steps=["dedup", "decontaminate"])
    outcome = CliRunner().invoke(app, ["export", "--store", store.url, "--name", "y", "--format", "jsonl",
                                       "--out", "s3://synthllm-test/published/y",
                                       "--set", f"store.s3_endpoint_url={s3_endpoint}"])
    assert outcome.exit_code == 0, outcome.output
    remote = Store(Store(store.url).settings.model_copy(update={"url": "s3://synthllm-test/published/y",
                                                                "s3_endpoint_url": s3_endpoint}))
    assert remote.exists(remote.path("plain", "data.jsonl")) and remote.exists(remote.path("README.md"))


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args) -> None:
        pass


def test_a_temporary_api_batches_task_run_writes_unless_the_user_set_otherwise(tmp_path) -> None:
    """The temporary API of a run without a server writes task-run states in batches (one
    transaction per state was most of its CPU); a value in the user's environment wins."""
    probe = ("import json, tasks.common\n"
             "from prefect.client.orchestration import get_client\n"
             "with get_client(sync_client=True) as client:\n"
             "    print(json.dumps(client._client.get('/admin/settings').json()['server']['services']"
             "['task_run_recorder']))")
    env = {key: value for key, value in command_env(tmp_path / "home").items() if key not in server.SERVER_ENV}
    env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] = "7"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300, check=True)
    recorder = json.loads(done.stdout.strip().splitlines()[-1])
    assert (recorder["batch_size"], recorder["read_batch_size"], recorder["flush_interval"]) == (7, 100, 1.0)


def test_commands_reuse_a_recorded_running_server(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
        assert server.use_running_server() is None  # nothing recorded: Prefect's temporary server
        server.record_path().write_text(json.dumps({"api_url": url, "pid": 0}))
        assert server.use_running_server() == url and os.environ["PREFECT_API_URL"] == url
    finally:
        httpd.shutdown()
    monkeypatch.delenv("PREFECT_API_URL")
    assert server.use_running_server() is None  # recorded but gone: not used
    (tmp_path / "profiles.toml").write_text('active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://h:4200/api"\n')
    assert server.use_running_server() == "http://h:4200/api" and "PREFECT_API_URL" not in os.environ


def test_signal_asks_engines_to_stop_and_second_one_aborts() -> None:
    with pytest.raises(KeyboardInterrupt), stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_requested()
        os.kill(os.getpid(), signal.SIGINT)
    assert not stop_requested() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("importer", ["synthllm.cli", "flows.curate"])
def test_no_loading_weights_bar_from_the_embedder(importer) -> None:
    code = (f"import {importer}\nfrom synthllm.curation.stages import _lazy_minilm\n"
            "print(len(_lazy_minilm(8)(['a question', 'another one'])))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
                          env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading weights" not in done.stderr + done.stdout and "%|" not in done.stderr
