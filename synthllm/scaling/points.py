"""Measured points of scaling curves: files, tables and the store's ``training_results``.

A :class:`Series` is one curve (a model or a data mix): training tokens D and a metric L, checked
on construction so that the fitting code can take logs without guarding.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import fsspec
import numpy as np
import polars as pl

from synthllm.store import Store, stable_hash

if TYPE_CHECKING:
    from synthllm.settings import ScalingSettings

MetricKind = Literal["error", "accuracy", "loss"]


class ScalingInputError(ValueError):
    """The points cannot support the requested fit; the message says what to change."""


@dataclass(frozen=True, eq=False)
class Series:
    """The measured points of one curve, sorted by tokens and checked on construction."""

    name: str
    tokens: np.ndarray
    metric: np.ndarray
    metric_name: str = "error"
    scale: float | None = None  # 100 (percent) or 1 (fraction) for error rates, None for a loss

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=float).ravel()
        metric = np.asarray(self.metric, dtype=float).ravel()
        where = f"series {self.name!r}"
        if tokens.shape != metric.shape:
            raise ScalingInputError(f"{where}: {tokens.size} token counts but {metric.size} metric values")
        if tokens.size == 0:
            raise ScalingInputError(f"{where}: no points")
        _reject(where, ~(np.isfinite(tokens) & np.isfinite(metric)), "NaN or infinite tokens / metric")
        _reject(where, tokens <= 0, "tokens must be > 0", tokens)
        _reject(where, metric <= 0, "metric must be > 0 (the fit works on log L; an error of 0 has no log)", metric)
        if self.scale is not None:
            _reject(where, metric >= self.scale, f"an error rate must be below {self.scale:g}", metric)
        order = np.argsort(tokens, kind="stable")
        object.__setattr__(self, "tokens", tokens[order])
        object.__setattr__(self, "metric", metric[order])

    @property
    def n_distinct_tokens(self) -> int:
        return int(np.unique(self.tokens).size)

    def subset(self, mask: np.ndarray) -> Series:
        return Series(self.name, self.tokens[mask], self.metric[mask], self.metric_name, self.scale)


def _reject(where: str, bad: np.ndarray, reason: str, values: np.ndarray | None = None) -> None:
    if bad.any():
        index = np.flatnonzero(bad)[:5].tolist()
        shown = f" (values {values[bad][:5].tolist()})" if values is not None else ""
        raise ScalingInputError(f"{where}: {reason}; offending points (0-based) {index}{shown}")


def series_from_frame(
    frame: pl.DataFrame,
    *,
    series_col: str | None = "series",
    tokens_col: str = "tokens",
    metric_col: str = "metric",
    metric_kind: MetricKind = "error",
    tokens_per_unit: float = 1.0,
    series_name: str = "default",
    metric_name_col: str | None = None,
) -> list[Series]:
    """Split a table of points into series; ``series_col=None`` makes all rows one series.

    Error rates and accuracies above 1 are read as percent (scale 100), else as fractions;
    accuracies become error rates (scale - accuracy) so every fit is of a decreasing curve.
    """
    needed = [c for c in (series_col, tokens_col, metric_col) if c is not None]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        hint = " (or treat all rows as one series)" if series_col in missing else ""
        raise ScalingInputError(
            f"column(s) {missing} not found; columns are {frame.columns}: name the right ones{hint}"
        )
    if frame.height == 0:
        raise ScalingInputError("no points: the input holds no rows")
    if tokens_per_unit <= 0:
        raise ScalingInputError(f"tokens_per_unit must be > 0, got {tokens_per_unit}")
    try:
        tokens = frame[tokens_col].cast(pl.Float64, strict=True).to_numpy() * tokens_per_unit
        metric = frame[metric_col].cast(pl.Float64, strict=True).to_numpy()
    except pl.exceptions.InvalidOperationError as exc:
        raise ScalingInputError(f"{tokens_col!r} and {metric_col!r} must be numbers: {exc}") from exc
    scale: float | None = None
    name = metric_col
    if metric_kind in ("error", "accuracy"):
        top = float(np.nanmax(metric)) if np.isfinite(metric).any() else 0.0
        if top > 100:
            raise ScalingInputError(
                f"{metric_col!r} reaches {top:g}: an {metric_kind} rate must lie in [0, 1] or [0, 100]; "
                "use metric kind 'loss' for losses"
            )
        scale = 100.0 if top > 1 else 1.0
        if metric_kind == "accuracy":
            metric = scale - metric
            name = f"error (100 % - {metric_col})" if scale == 100 else f"error (1 - {metric_col})"
    elif metric_kind != "loss":
        raise ScalingInputError(f"unknown metric kind {metric_kind!r}: use error, accuracy or loss")
    names = frame[series_col].cast(pl.String).fill_null("").to_list() if series_col else [series_name] * frame.height
    metric_names = frame[metric_name_col].to_list() if metric_name_col in frame.columns else [None] * frame.height
    grouped: dict[str, list[int]] = {}
    for row, series in enumerate(names):
        grouped.setdefault(series, []).append(row)
    result = []
    for series, rows in grouped.items():
        label = next((metric_names[r] for r in rows if metric_names[r]), None) or name
        result.append(Series(series, tokens[rows], metric[rows], label, scale))
    return result


def read_points_file(source: str | Path) -> pl.DataFrame:
    """CSV, JSON (a list of records), JSON lines or Parquet; local paths or fsspec URLs."""
    suffix = Path(str(source)).suffix.lower()
    readers = {
        ".csv": pl.read_csv,
        ".tsv": lambda b: pl.read_csv(b, separator="\t"),
        ".json": pl.read_json,
        ".jsonl": pl.read_ndjson,
        ".ndjson": pl.read_ndjson,
        ".parquet": pl.read_parquet,
    }
    if suffix not in readers:
        raise ScalingInputError(f"{source}: unknown file type {suffix!r}; use {', '.join(readers)}")
    try:
        with fsspec.open(str(source), "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise ScalingInputError(f"points file not found: {source}") from exc
    try:
        return readers[suffix](io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - every parser error means the same thing to the user
        raise ScalingInputError(f"{source}: cannot read as {suffix[1:]}: {exc}") from exc


def load_points(
    source: str | Path,
    *,
    series_col: str | None = "series",
    tokens_col: str = "tokens",
    metric_col: str = "metric",
    metric_kind: MetricKind = "error",
    tokens_per_unit: float = 1.0,
    series_name: str | None = None,
) -> list[Series]:
    """Read a points file into series (see :func:`series_from_frame` for the arguments)."""
    return series_from_frame(
        read_points_file(source),
        series_col=series_col,
        tokens_col=tokens_col,
        metric_col=metric_col,
        metric_kind=metric_kind,
        tokens_per_unit=tokens_per_unit,
        series_name=series_name or Path(str(source)).stem,
    )


def read_training_results(
    store: Store, names: Sequence[str] | None = None, metric_kind: MetricKind = "error"
) -> list[Series]:
    """The store's ``training_results`` table as series (only ``names`` when given)."""
    frame = store.read_table("training_results")
    if names:
        unknown = sorted(set(names) - set(frame["series"].unique().to_list()))
        if unknown:
            raise ScalingInputError(f"series {unknown} not in training_results of {store.url}")
        frame = frame.filter(pl.col("series").is_in(list(names)))
    if frame.height == 0:
        raise ScalingInputError(f"training_results in {store.url} is empty: add points with `synthllm scaling add`")
    return series_from_frame(frame, metric_kind=metric_kind, metric_name_col="metric_name")


def gather_points(
    options: ScalingSettings,
    *,
    source: str | Path | None = None,
    store: Store | None = None,
    series: Sequence[str] | None = None,
    one_series: str | None = None,
) -> list[Series]:
    """Points from a file (``source``) or else the store's table, read as the settings say.

    ``series`` keeps only those series; ``one_series`` names the single series of a file
    without a series column.
    """
    if source is None:
        if store is None:
            raise ScalingInputError("give a points file or a store holding training_results")
        return read_training_results(store, series, options.metric_kind)
    points = load_points(
        source,
        series_col=None if one_series else options.series_col,
        tokens_col=options.tokens_col,
        metric_col=options.metric_col,
        metric_kind=options.metric_kind,
        tokens_per_unit=options.tokens_per_unit,
        series_name=one_series,
    )
    if series:
        points = [s for s in points if s.name in set(series)]
        if not points:
            raise ScalingInputError(f"no series named {list(series)} in {source}")
    return points


def add_training_results(
    store: Store, series: Sequence[Series], run_id: str, notes: str | None = None
) -> tuple[str, int]:
    """Write points into ``training_results``; the same points land in the same shard (idempotent)."""
    rows = [
        {"series": s.name, "tokens": float(t), "metric": float(m), "metric_name": s.metric_name, "notes": notes}
        for s in series
        for t, m in zip(s.tokens, s.metric, strict=True)
    ]
    shard_id = "import-" + stable_hash(rows)
    stamped = [{**row, "shard_id": shard_id, "run_id": run_id} for row in rows]
    count = store.write_shard("training_results", shard_id, stamped)
    return shard_id, count
