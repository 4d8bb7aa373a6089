"""API keys reach the engine from every documented source and nowhere else: not Prefect's
database, not the store, not the logs; a refused key stops the run (issue 11, finding 3)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import command_env
from openai_pipeline import openai_overrides, pipeline_server

from synthllm.ingest import expand_sources, ingest_file
from synthllm.settings import load_settings, resolve_settings
from synthllm.store import Store

pytestmark = pytest.mark.integration
RUN = {"filter.enabled": False, "generation.levels": [1], "generation.max_documents": 2, "orchestration.task_retries": 0}


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "SYNTHLLM_ENGINE__API_KEY", "SYNTHLLM_ANSWER__ENGINE__API_KEY"):
        monkeypatch.delenv(name, raising=False)


def ingest(store_url: str, sample_dir: Path) -> None:
    settings = load_settings(store=store_url)
    for source in expand_sources([str(sample_dir / "openstax-algebra.jsonl")], settings.store):
        ingest_file(Store(settings.store), settings, "ingest", source)


def cli(store_url: str, tmp_path: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "synthllm.cli", "synthesize", "--store", store_url, *args]
    if config:
        command += ["--config", str(config)]
    env = command_env(tmp_path / "prefect")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def sets(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={yaml.safe_dump(value).strip()}")
            if not (isinstance(value, str) and value == "...")]


def files_containing(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_key_from_the_config_file_reaches_the_server(store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    ingest(store_url, sample_dir)
    with pipeline_server(api_key="sk-from-config") as server:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({"engine": {"api_key": "sk-from-config"}}))
        result = cli(store_url, tmp_path, *sets({**RUN, **openai_overrides(server)}), config=config)
        assert result.returncode == 0, result.stderr[-3000:]
        assert server.total_answered > 0 and set(server.authorizations) == {"Bearer sk-from-config"}
    assert Store(store_url).read_table("questions").height > 0


def test_a_key_given_with_set_is_used_and_stored_nowhere(store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    ingest(store_url, sample_dir)
    secret = "sk-set-on-the-command-line-31337"
    with pipeline_server(api_key=secret) as server:
        result = cli(store_url, tmp_path, *sets({**RUN, **openai_overrides(server)}), "--set", f"engine.api_key={secret}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert server.total_answered > 0 and set(server.authorizations) == {f"Bearer {secret}"}
    assert secret not in result.stdout + result.stderr
    assert files_containing(tmp_path / "prefect", secret) == []  # Prefect's database and logs
    assert files_containing(Path(store_url), secret) == []  # tables, runs, artifacts, cache


def test_a_refused_key_stops_the_run_with_a_clear_error(store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    ingest(store_url, sample_dir)
    with pipeline_server(api_key="sk-right") as server:
        result = cli(store_url, tmp_path, *sets({**RUN, **openai_overrides(server)}), "--set", "engine.api_key=sk-wrong")
        assert result.returncode != 0
        assert server.base_url in result.stderr + result.stdout and "sk-wrong" not in result.stderr + result.stdout
        assert server.total_answered == 0
    store = Store(store_url)
    assert store.read_table("failures").height == 0 and store.read_table("questions").height == 0


def test_a_key_in_flow_parameters_is_refused() -> None:
    with pytest.raises(ValueError, match="engine.api_key must not be a flow parameter"):
        resolve_settings(overrides={"engine.api_key": "sk-leak"})


def test_two_runs_on_one_store_ask_each_prompt_once(store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    """A store-level lease per stage: the second run waits, then finds the work done (issue 11, finding 11)."""
    from fake_openai_server import Text
    from scripted_llm import PipelineResponder

    ingest(store_url, sample_dir)
    reply = PipelineResponder()
    from openai_pipeline import request_of

    waiting = threading.Event()  # one run logged that the other holds the leases

    def answer(body):
        # The lease holder's first reply waits until the other run is waiting for the lease, so
        # the two always overlap (a fast holder could otherwise finish before the other started).
        waiting.wait(300)
        return Text(reply(request_of(body)), delay_s=0.05)

    def read(run: subprocess.Popen, lines: list[str]) -> None:
        for line in run.stdout:
            lines.append(line)
            if "is being run by" in line:
                waiting.set()

    with pipeline_server() as server:
        server.responder = answer
        command = [sys.executable, "-m", "synthllm.cli", "synthesize", "--store", store_url,
                   *sets({**RUN, "generation.max_documents": 4, "generation.shard_size": 2, **openai_overrides(server)})]
        runs = [subprocess.Popen(command, env=command_env(tmp_path / f"prefect-{i}"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
        logs: list[list[str]] = [[], []]
        readers = [threading.Thread(target=read, args=(run, lines)) for run, lines in zip(runs, logs)]
        for reader in readers:
            reader.start()
        for run in runs:
            run.wait(timeout=600)
        for reader in readers:
            reader.join(30)
        outputs = ["".join(lines) for lines in logs]
        assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert waiting.is_set() and any("is being run by" in output for output in outputs)
    store = Store(store_url)
    questions, answers = store.read_table("questions"), store.read_table("answers")
    assert questions["question_id"].n_unique() == questions.height and answers.height == questions.height
    assert server.total_received == 4 + questions.height  # 4 documents, then one answer per question: once
