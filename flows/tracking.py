"""The progress and summary artifacts of the run a user started.

The top-level flow run (``synthllm-run``, or any flow a deployment or the CLI starts) owns one
progress artifact and one summary artifact. Sub-flows it calls run in its process and thread,
so they find its tracker here and report their shards into it: progress moves on the parent's
run page shard by shard, across every stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from synthllm.progress import RunProgress, RunReport, summary_markdown
from synthllm.runs import new_run_id
from synthllm.store import Store

# The artifact is updated at most this often (and always when a step closes); a change held back
# is sent by the next update or by ``Tracker.flush``, which a flow waiting for shards calls.
UPDATE_EVERY_S = 1.0

_current: ContextVar[Tracker | None] = ContextVar("synthllm_tracker", default=None)


class Tracker:
    """Feeds a :class:`RunProgress` and mirrors it into the run's progress artifact."""

    def __init__(self, flow_name: str, store: Store, steps: dict[str, float]) -> None:
        self.flow_name, self.store = flow_name, store
        self.progress = RunProgress(steps)
        self.report = RunReport(title=f"{flow_name} summary", store=store.url, wall_s=0.0)
        self.run_id = new_run_id()
        self.started = time.monotonic()
        self.last_update, self.held_back = 0.0, False
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=f"{flow_name}-progress", description=f"{flow_name}: share of the run's shards finished")

    def declare(self, steps: dict[str, float]) -> None:
        """Steps a sub-flow adds that the parent did not know ahead."""
        for name, weight in steps.items():
            if name not in self.progress.steps:
                self.progress.step(name).weight = weight

    def plan(self, step: str, shards: int, items: int = 0) -> None:
        """A step's first plan is written at once (a flow may then wait minutes for its first
        shard); the plans a streaming run adds after each finished shard are throttled."""
        first = self.progress.step(step).started is None
        self.progress.plan(step, shards, items)
        self._update(force=first)

    def finish_shard(self, step: str, summary: dict[str, Any]) -> None:
        self.progress.finish_shard(step, summary)
        self._update()

    def close(self, step: str) -> None:
        self.progress.close(step)
        self._update(force=True)

    def note(self, line: str) -> None:
        """A line shown at the top of the summary (a skipped step and why)."""
        self.progress.notes.append(line)

    def flush(self) -> None:
        """Send a change the throttle held back (a flow calls this while it waits for shards)."""
        if self.held_back:
            self._update()

    def _update(self, force: bool = False) -> None:
        """Mirror the progress into the artifact: one API write, so at most every ``UPDATE_EVERY_S``
        (a streaming run plans shards for the next stages after every finished shard)."""
        now = time.monotonic()
        self.held_back = not force and now - self.last_update < UPDATE_EVERY_S
        if not self.held_back:
            self.last_update = now
            update_progress_artifact(self.artifact_id, progress=round(100 * self.progress.fraction(), 1),
                                     description=self.progress.description())

    def publish(self, failed: BaseException | None = None) -> str:
        """The summary artifact, also written to ``reports/runs/<run id>/summary.md`` in the store."""
        self.report.wall_s = time.monotonic() - self.started
        if failed is not None:
            self.note(f"the run failed: {type(failed).__name__}: {failed}")
        else:
            update_progress_artifact(self.artifact_id, progress=100.0, description=f"{self.flow_name} finished")
        path = self.store.path("reports", "runs", self.run_id, "summary.md")
        self.store.write_bytes(path, summary_markdown(self.progress, self.report, inline_images=False).encode())
        create_markdown_artifact(key=f"{self.flow_name}-summary", markdown=summary_markdown(self.progress, self.report),
                                 description=f"{self.flow_name}: steps, failures, export, dataset card, plots ({path})")
        return path


def current() -> Tracker | None:
    return _current.get()


@contextmanager
def tracked(flow_name: str, store: Store, steps: dict[str, float]) -> Iterator[Tracker]:
    """The tracker of the top-level run: the parent's when a parent run is tracking, else a new
    one for this run, whose summary is published when the block ends (also when it fails)."""
    parent = _current.get()
    if parent is not None:
        parent.declare(steps)
        yield parent
        return
    tracker = Tracker(flow_name, store, steps)
    token = _current.set(tracker)
    failed: BaseException | None = None
    try:
        yield tracker
    except BaseException as exc:
        failed = exc
        raise
    finally:
        _current.reset(token)
        try:
            path = tracker.publish(failed)
            get_run_logger().info("%s summary: %s", flow_name, path)
        except Exception as exc:  # noqa: BLE001 - a summary that cannot be written must not hide the run's outcome
            get_run_logger().warning("could not publish the %s summary: %s", flow_name, exc)
