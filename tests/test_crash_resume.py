"""Crash-resume and scale-out with the real embedded engine (SmolLM2 via llama.cpp).

* A synthesize run killed with SIGKILL mid-generation, rerun with the same parameters, ends with
  no lost and no duplicated rows, and no stored LLM reply is asked for again.
* The synthesize flow on a local Dask cluster (2 worker processes) gives the same dataset as
  the default thread runner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import command_env

from synthllm.settings import load_settings
from synthllm.store import Store

pytestmark = pytest.mark.integration

REAL_ENGINE = [
    "--set", "filter.enabled=false",
    "--set", "generation.levels=[1]",
    "--set", "generation.max_documents=3",
    "--set", "generation.doc_chars=700",
    "--set", "generation.sampling.max_tokens=200",
    "--set", "answer.sampling.max_tokens=96",
    "--set", "engine.cache_flush_every=1",
    "--set", "engine.n_threads=1",
]


def ingest(store_url: str, sample_dir: Path, n_docs: int = 3) -> None:
    from synthllm.ingest import expand_sources, ingest_file

    settings = load_settings(store=store_url)
    source = expand_sources([str(sample_dir / "openstax-algebra.jsonl")], settings.store)[0]
    ingest_file(Store(settings.store), settings, "ingest", source)


def synthesize_command(store_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "synthllm.cli", "synthesize", "--store", store_url, *REAL_ENGINE, *extra]


def cache_keys(store: Store) -> pl.DataFrame:
    parts = store.glob(store.path("cache", "llm", "*", "*", "*.parquet"))  # parts and compacted shard files
    frames = [pl.read_parquet(p).select("key").with_columns(part=pl.lit(p)) for p in parts]
    return pl.concat(frames) if frames else pl.DataFrame(schema={"key": pl.String, "part": pl.String})


def test_sigkill_mid_generation_then_rerun(store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    ingest(store_url, sample_dir)
    store = Store(store_url)
    env = command_env(tmp_path / "prefect")
    process = subprocess.Popen(synthesize_command(store_url), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(cache_keys(store)) < 2 and process.poll() is None:
        time.sleep(0.5)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = cache_keys(store)
    assert len(before) >= 2

    rerun = subprocess.run(synthesize_command(store_url), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    after = cache_keys(store)
    # every stored reply was reused: no key was generated (and stored) twice
    assert after["key"].n_unique() == after.height
    assert set(before["key"]) <= set(after["key"])
    usage = store.read_table("llm_usage")
    assert usage["cached"].sum() >= len(before)
    questions = store.read_table("questions")
    answers = store.read_table("answers")
    failures = store.read_table("failures")
    assert questions["question_id"].n_unique() == questions.height
    assert answers["question_id"].n_unique() == answers.height
    # nothing lost: every document has questions or a recorded reason, every question an answer or a reason
    from synthllm.plans import select_documents

    chosen = load_settings(overrides={"filter.enabled": False, "generation.max_documents": 3}, store=store_url)
    docs = set(select_documents(store, chosen))
    assert len(docs) == 3
    explained = set(questions.explode("doc_ids")["doc_ids"]) | set(failures.filter(pl.col("stage") == "level1")["item_id"])
    assert explained == docs
    gated = store.read_table("curation").filter((pl.col("check_name") == "question_gate") & ~pl.col("kept"))
    answered = set(answers["question_id"]) | set(failures.filter(pl.col("stage") == "answer")["item_id"])
    assert answered | set(gated["question_id"]) == set(questions["question_id"])  # answered, or a recorded reason
    assert not answered & set(gated["question_id"])  # no answer is asked for a question the gate turned down


def synthesized_dataset(url: str, sample_dir: Path, env: dict[str, str], *options: str) -> tuple[pl.DataFrame, ...]:
    """Ingest the sample into ``url``, synthesize with two shard workers and one item a shard, and
    return its questions and answers in a stable order."""
    ingest(url, sample_dir)
    result = subprocess.run(
        synthesize_command(url, *options, "--set", "orchestration.task_workers=2", "--set", "generation.shard_size=1"),
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # one Prefect API for the run: worker processes report to the flow's (they used to start their own)
    assert result.stderr.count("Starting temporary server on") == 1, (options, result.stderr[-3000:])
    store = Store(url)
    dataset = (store.read_table("questions").select("question_id", "question", "doc_ids").sort("question_id"),
               store.read_table("answers").select("question_id", "answer").sort("question_id"))
    assert dataset[0].height > 0
    return dataset


@pytest.fixture(scope="module")
def thread_dataset(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, ...]:
    """The default thread runner's dataset, made once for every process runner to be compared with."""
    root = tmp_path_factory.mktemp("thread-runner")
    return synthesized_dataset(str(root / "store"), sample_dir, command_env(root / "prefect"),
                               "--set", "orchestration.task_runner=thread")


@pytest.mark.parametrize("runner", ["dask", "dask-cluster", "ray"])
def test_process_runners_give_the_same_dataset(runner: str, thread_dataset: tuple[pl.DataFrame, ...],
                                               sample_dir: Path, tmp_path: Path) -> None:
    """Shards in Dask or (local) Ray worker processes: the same dataset as threads, one Prefect API.
    ``dask-cluster``: a Dask cluster already running (``orchestration.dask_address``), as a
    deployment's; the CLI run's temporary API reaches its workers through the tasks' settings."""
    pytest.importorskip(f"prefect_{runner.split('-')[0]}")
    options = ["--set", f"orchestration.task_runner={runner.split('-')[0]}"]
    cluster = None
    if runner == "dask-cluster":
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        options += ["--set", f"orchestration.dask_address={cluster.scheduler_address}"]
    try:
        dataset = synthesized_dataset(str(tmp_path / "store"), sample_dir, command_env(tmp_path / "prefect"), *options)
        if cluster is not None:  # the shards ran in the cluster's workers
            computed = {name: prefix.all_durations.get("compute", 0.0)
                        for name, prefix in cluster.scheduler.task_prefixes.items()}
            assert computed.get("generate_shard", 0.0) > 0, computed
    finally:
        if cluster is not None:
            cluster.close()
    assert dataset[0].equals(thread_dataset[0])
    assert dataset[1].equals(thread_dataset[1])
