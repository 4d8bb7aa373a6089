"""Progress of a run across its flows and stages, its final summary, and the CLI's live display.

Pure bookkeeping and formatting: the flows feed a :class:`RunProgress` as shards finish and
publish what it computes as Prefect artifacts (``flows/tracking.py``); the CLI subscribes to
the same events to draw a live display. Nothing here talks to Prefect.
"""

from __future__ import annotations

import base64
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

# Steps whose shards do little work (rules, graph, bookkeeping) weigh less in the overall share.
LIGHT_WEIGHT = 0.25


@dataclass
class StepProgress:
    """One step of a run (a stage, ingest, a filter round, curation): shards and items so far."""

    name: str
    weight: float = 1.0
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    items_total: int = 0
    items_done: int = 0
    rows: int = 0
    failures: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    cached: int = 0
    completion_tokens: int = 0
    started: float | None = None
    ended: float | None = None

    @property
    def fraction(self) -> float:
        if self.ended is not None:
            return 1.0
        return self.shards_done / self.shards_total if self.shards_total else 0.0

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    @property
    def items_per_s(self) -> float:
        return self.items_done / self.seconds if self.seconds > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first item finished."""
        left = self.items_total - self.items_done
        return left / self.items_per_s if self.items_per_s > 0 and left > 0 else None

    def line(self) -> str:
        """The plain-text progress line the CLI prints when stdout is not a terminal."""
        eta = self.eta_s()
        reasons = ", ".join(f"{r} {n}" for r, n in self.failure_reasons.most_common(3))
        items = f"{self.items_done}/{self.items_total}" if self.items_total else str(self.items_done)  # total unknown
        return (f"{self.name}: {self.shards_done}/{self.shards_total} shards, {items}"
                f" items, {self.items_per_s:.1f} items/s, ETA {'-' if eta is None else f'{eta:.0f} s'},"
                f" {self.failures} failures{f' ({reasons})' if reasons else ''}")

    def row(self) -> dict[str, Any]:
        tokens_per_s = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
        return {"step": self.name, "shards": self.shards_done, "skipped": self.shards_skipped,
                "items": self.items_done, "rows": self.rows, "failures": self.failures,
                "cache_hits": self.cached, "completion_tokens": self.completion_tokens,
                "tokens_per_s": round(tokens_per_s, 1), "wall_s": round(self.seconds, 1)}


Listener = Callable[[str, StepProgress], None]
_listeners: list[Listener] = []


@contextmanager
def subscribed(listener: Listener) -> Iterator[None]:
    """Call ``listener(event, step)`` for every ``plan`` / ``shard`` / ``close`` event of this process."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class RunProgress:
    """The steps of one top-level run, in order, with weights, fed as shards finish.

    The overall share weighs each step's shards-done share: it moves with every shard, and
    steps declared up front keep it from going backwards when later steps are planned."""

    def __init__(self, steps: dict[str, float] | None = None) -> None:
        self.steps = {name: StepProgress(name, weight) for name, weight in (steps or {}).items()}
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def step(self, name: str) -> StepProgress:
        if name not in self.steps:
            self.steps[name] = StepProgress(name)
        return self.steps[name]

    def plan(self, name: str, shards: int, items: int) -> None:
        with self.lock:
            step = self.step(name)
            step.started = step.started or time.monotonic()
            step.ended = None
            step.shards_total += shards
            step.items_total += items
        self._emit("plan", step)

    def finish_shard(self, name: str, summary: dict[str, Any]) -> None:
        """Add one finished shard: ``summary`` holds items, rows, failures and optionally
        failure_reasons, cached, completion_tokens, skipped (a ShardSummary's dict)."""
        with self.lock:
            step = self.step(name)
            step.started = step.started or time.monotonic()
            step.shards_done += 1
            step.shards_skipped += int(bool(summary.get("skipped")))
            step.items_done += summary.get("items", 0)
            step.rows += summary.get("rows", 0)
            step.failures += summary.get("failures", 0)
            step.failure_reasons.update(summary.get("failure_reasons") or {})
            step.cached += summary.get("cached", 0)
            step.completion_tokens += summary.get("completion_tokens", 0)
        self._emit("shard", step)

    def close(self, name: str) -> None:
        with self.lock:
            step = self.step(name)
            step.started = step.started or time.monotonic()
            step.ended = time.monotonic()
        self._emit("close", step)

    def fraction(self) -> float:
        total = sum(s.weight for s in self.steps.values())
        return sum(s.weight * s.fraction for s in self.steps.values()) / total if total else 0.0

    def description(self) -> str:
        """The running step's line, shown next to the progress bar in the UI."""
        running = [s for s in self.steps.values() if s.started is not None and s.ended is None]
        return running[-1].line() if running else "waiting for the first step"

    def rows(self) -> list[dict[str, Any]]:
        return [s.row() for s in self.steps.values() if s.started is not None]

    def failure_rows(self) -> list[dict[str, Any]]:
        return [{"step": s.name, "reason": reason, "items": count}
                for s in self.steps.values() for reason, count in s.failure_reasons.most_common()]

    def _emit(self, event: str, step: StepProgress) -> None:
        for listener in _listeners:
            listener(event, step)


def png_data_uri(png: bytes) -> str:
    """A PNG inlined for markdown artifacts: the Prefect UI cannot fetch files from the store."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    header = list(rows[0])
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(_cell(row.get(c)) for c in header) + " |" for row in rows)]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class RunReport:
    """What the final summary of a run shows besides the step table."""

    title: str
    store: str
    wall_s: float
    export: dict[str, Any] | None = None  # path, rows, per_level
    card: str | None = None               # the dataset card (markdown)
    images: dict[str, bytes] = field(default_factory=dict)  # caption -> PNG
    image_paths: dict[str, str] = field(default_factory=dict)  # caption -> where the PNG is stored


def summary_markdown(progress: RunProgress, report: RunReport, inline_images: bool = True) -> str:
    """The run's summary: steps, failures by reason, the export, the dataset card, the plots.

    ``inline_images`` embeds the PNGs (UI artifact); otherwise they are linked by stored path."""
    lines = [f"# {report.title}", "", f"Store: `{report.store}`. Wall time: {report.wall_s:,.1f} s.", ""]
    lines += [*(f"- {note}" for note in progress.notes), ""] if progress.notes else []
    lines += ["## Steps", "", *markdown_table(progress.rows()), ""]
    lines += ["## Failures by reason", "", *markdown_table(progress.failure_rows()), ""]
    if report.export:
        per_level = ", ".join(f"level {k}: {v:,}" for k, v in sorted((report.export.get("per_level") or {}).items()))
        levels = f" ({per_level})" if per_level else ""
        lines += ["## Export", "", f"`{report.export['path']}`: {report.export.get('rows', 0):,} rows{levels}.", ""]
    for caption, png in report.images.items():
        source = png_data_uri(png) if inline_images else report.image_paths.get(caption, caption)
        stored = report.image_paths.get(caption)
        lines += [f"## {caption}", "", f"![{caption}]({source})", ""]
        lines += [f"Stored at `{stored}`.", ""] if stored else []
    if report.card:
        lines += ["## Dataset card", "", _demote_headings(report.card), ""]
    return "\n".join(lines)


def _demote_headings(markdown: str) -> str:
    """The card without its YAML front matter (the Hub reads it; rendered it is noise), its
    headings nested under the summary's own "Dataset card" heading."""
    if markdown.startswith("---\n") and "\n---\n" in markdown[4:]:
        markdown = markdown[4:].split("\n---\n", 1)[1]
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())


class PlainLines:
    """Progress as one printed line per finished shard: for logs, pipes and CI."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: str, step: StepProgress) -> None:
        if event in ("shard", "close"):
            print(("done " if event == "close" else "") + step.line(), file=self.stream, flush=True)


@contextmanager
def _logs_above(console) -> Iterator[None]:
    """Log handlers that print through a rich console (Prefect's) print above the live bars
    instead of tearing them; restored afterwards."""
    import logging

    from rich.console import Console

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    swapped = [(h, h.console) for lg in loggers for h in lg.handlers if isinstance(getattr(h, "console", None), Console)]
    for handler, _ in swapped:
        handler.console = console
    try:
        yield
    finally:
        for handler, original in swapped:
            handler.console = original


def _bar_state(event: str, step: StepProgress) -> dict[str, Any]:
    """Items when the step knows its total, else shards (ingest counts files, not records ahead)."""
    if step.items_total:
        done, total, unit = step.items_done, step.items_total, "items"
    else:
        done, total, unit = step.shards_done, step.shards_total, "shards"
    if event == "close":
        done = total = max(done, total)
    return {"completed": done, "total": max(total, done, 1), "unit": unit}


@contextmanager
def live_display(console=None) -> Iterator[None]:
    """A rich progress bar per step (items done / total, rate, ETA, failures) while a flow
    runs in this process; plain lines instead when stdout is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console()
    if not console.is_terminal:
        with subscribed(PlainLines(console.file)):
            yield
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed:,.0f}/{task.total:,.0f} {task.fields[unit]}"),
               TextColumn("{task.fields[rate]:.1f} items/s"), TimeRemainingColumn(),
               TextColumn("[red]{task.fields[failures]} failed"))
    tasks: dict[str, Any] = {}
    with Progress(*columns, console=console, transient=False) as bars, _logs_above(bars.console):
        def update(event: str, step: StepProgress) -> None:
            state = _bar_state(event, step)
            if step.name not in tasks:
                tasks[step.name] = bars.add_task(step.name, total=state["total"], unit=state["unit"], rate=0.0,
                                                 failures=0)
            bars.update(tasks[step.name], **state, rate=step.items_per_s, failures=step.failures)

        with subscribed(update):
            yield
