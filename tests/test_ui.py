"""What a user sees in the Prefect UI: the parent run's progress and summary artifacts.

The flow tests run against the session's temporary API and read the artifacts back over the
client. ``test_run_page_in_a_browser`` starts a real ``prefect server`` on 127.0.0.1 and renders
the parent run's page in headless Chromium (skipped without /usr/bin/chromium; ``make ui-check``
runs the same check on the demo deployment with a worker).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_llm import PipelineResponder

from synthllm.engine_pool import install_engine
from synthllm.engines.scripted import ScriptedEngine
from synthllm.ingest import expand_sources, ingest_file
from synthllm.progress import PlainLines, RunProgress, RunReport, subscribed, summary_markdown
from synthllm.settings import load_settings
from synthllm.store import Store

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
OVERRIDES = {
    "generation.max_documents": 8,
    "generation.max_combinations": 6,
    "generation.shard_size": 3,
    "graph.epochs": 2,
    "curation.benchmarks": ["builtin:gsm8k"],
}


def _prepared_store(store_url: str, sample_dir: Path) -> str:
    """Sample documents ingested, and the scripted engine installed for the default (embedded) engine."""
    settings = load_settings(overrides=OVERRIDES, store=store_url)
    for source in expand_sources([str(sample_dir / "openstax-algebra.jsonl")], settings.store):
        ingest_file(Store(settings.store), settings, "ingest", source)
    install_engine(settings.engine, ScriptedEngine(PipelineResponder()))
    return store_url


def _artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in found}


def test_parent_run_shows_progress_summary_card_and_plot(prefect_harness, store_url, sample_dir) -> None:
    from flows.synthesize import run_pipeline_flow

    _prepared_store(store_url, sample_dir)
    events: list[tuple[str, str, float]] = []
    with subscribed(lambda event, step: events.append((event, step.name, step.fraction))):
        state = run_pipeline_flow(store=store_url, overrides=OVERRIDES, return_state=True)
    result = state.result()
    assert "filter" not in result  # the embedded model cannot rate documents: skipped
    artifacts = _artifacts(state.state_details.flow_run_id)

    assert artifacts["synthllm-run-progress"].data == 100.0
    summary = artifacts["synthllm-run-summary"].data
    assert "reference filtering skipped: the embedded model smollm2-135m-instruct" in summary
    assert "data:image/png;base64," in summary  # the diversity plot, inline
    assert "## Dataset card" in summary and result["export"]["path"] in summary
    for step in ("level1", "answer", "decontaminate", "export"):
        assert f"| {step} |" in summary
    # the parent's progress moved with every shard of every stage, not once per stage group
    shard_steps = {name for event, name, _ in events if event == "shard"}
    assert {"level1", "level2", "level3", "answer", "question_gate"} <= shard_steps
    # sub-flows report into the parent: none publishes a progress artifact of its own
    stored = Store(store_url).glob(Store(store_url).path("reports", "runs", "*", "summary.md"))
    assert len(stored) == 1 and "histograms.png" in Path(stored[0]).read_text()


def test_curate_report_inlines_its_plot(prefect_harness, store_url, sample_dir) -> None:
    from flows.curate import curate_flow
    from flows.synthesize import synthesize_flow

    _prepared_store(store_url, sample_dir)
    synthesize_flow(store=store_url, overrides={**OVERRIDES, "generation.levels": [1]})
    state = curate_flow(store=store_url, overrides=OVERRIDES, steps=["report"], return_state=True)
    artifacts = _artifacts(state.state_details.flow_run_id)
    report = artifacts["diversity-report"].data
    assert "](histograms.png)" not in report and "](data:image/png;base64," in report
    assert artifacts["curate-progress"].data == 100.0 and "curate-summary" in artifacts


def test_progress_moves_per_shard_and_never_back() -> None:
    progress = RunProgress({"a": 1.0, "b": 1.0})
    seen = [progress.fraction()]
    progress.plan("a", shards=2, items=20)
    for _ in range(2):
        progress.finish_shard("a", {"items": 10, "rows": 8, "failures": 2, "failure_reasons": {"no_json": 2}})
        seen.append(progress.fraction())
    progress.close("a")
    progress.plan("b", shards=4, items=4)
    progress.finish_shard("b", {"items": 1, "rows": 1, "failures": 0})
    seen.append(progress.fraction())
    assert seen == sorted(seen) and seen[1] == 0.25 and seen[-1] == pytest.approx(0.625)
    assert progress.steps["a"].failure_reasons == {"no_json": 4}
    assert "1/4 shards, 1/4 items" in progress.steps["b"].line()
    progress.plan("export", shards=1, items=0)  # a step that does not know its items ahead (export, ingest)
    progress.finish_shard("export", {"items": 5, "rows": 5, "failures": 0})
    assert "1/1 shards, 5 items," in progress.steps["export"].line()  # was "5/0 items"


def test_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = RunProgress({"level1": 1.0})
    with subscribed(PlainLines(stream)):
        progress.plan("level1", shards=2, items=6)
        progress.finish_shard("level1", {"items": 3, "rows": 5, "failures": 1, "failure_reasons": {"truncated": 1}})
    assert stream.getvalue().startswith("level1: 1/2 shards, 3/6 items,")
    assert "1 failures (truncated 1)" in stream.getvalue()


def test_summary_links_plots_by_path_when_not_inlined() -> None:
    progress = RunProgress({"answer": 1.0})
    progress.finish_shard("answer", {"items": 4, "rows": 4, "failures": 0})
    report = RunReport("run summary", "./store", 1.0, images={"plot": b"\x89PNG"}, image_paths={"plot": "s/plot.png"},
                       card="---\nconfigs:\n- config_name: plain\n---\n# Card\n\ntext")
    assert "](s/plot.png)" in summary_markdown(progress, report, inline_images=False)
    inlined = summary_markdown(progress, report)
    assert "](data:image/png;base64,iVBORw==)" in inlined and "### Card" in inlined
    assert "config_name" not in inlined  # the card's front matter is for the Hub, not the summary


@pytest.mark.integration
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium (apt-get install "
                    "chromium); `make ui-check` runs the same check")
def test_run_page_in_a_browser(tmp_path: Path, sample_dir) -> None:
    """A real server, the flow run against it, the run page rendered: artifacts listed, plot shown."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run([sys.executable, str(REPO / "infra" / "scripts" / "ui_check.py"), "--scripted", "--store",
                             str(tmp_path / "store"), "--screenshot", str(tmp_path / "run-page.png")],
                            capture_output=True, text=True, env=env, timeout=600, cwd=REPO, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run-page.png").stat().st_size > 10_000


def test_progress_artifact_writes_are_throttled_and_catch_up(monkeypatch, tmp_path: Path) -> None:
    """A streaming run plans shards for the next stages after every finished shard: each plan was
    an API write of the progress artifact (hundreds per run, on the flow's thread and the API's
    database). Plans now write at most every UPDATE_EVERY_S; a change held back is sent while the
    flow waits for shards (``flush``), and closing a step always writes."""
    import flows.tracking as tracking

    writes: list[tuple[float, str]] = []
    monkeypatch.setattr(tracking, "create_progress_artifact", lambda **_: "artifact-id")
    monkeypatch.setattr(tracking, "update_progress_artifact",
                        lambda artifact_id, progress, description: writes.append((progress, description)))
    tracker = tracking.Tracker("synthesize", Store(str(tmp_path / "store")), {"level1": 1.0, "answer": 1.0})
    tracker.plan("level1", 50, 50)
    for shard in range(50):
        tracker.plan("answer", 1, 10)
        tracker.finish_shard("level1", {"items": 1, "rows": 1, "failures": 0})
    assert len(writes) == 2  # each step's first plan; the other 99 calls came within a second
    tracker.flush()
    assert len(writes) == 2  # still inside the throttle window: nothing is lost, it is only held back
    monkeypatch.setattr(tracking, "UPDATE_EVERY_S", 0.0)
    tracker.flush()
    assert len(writes) == 3 and "0/50 shards" in writes[-1][1]  # the held-back plans, caught up
    tracker.flush()
    assert len(writes) == 3  # nothing held back: no write
    monkeypatch.setattr(tracking, "UPDATE_EVERY_S", 3600.0)
    tracker.close("level1")
    assert len(writes) == 4  # a closed step is always written
