"""Scaling laws of synthetic data: fit, validate, compare and extrapolate error-vs-tokens curves.

Two laws, one curve per series (a model or a data mix)::

    plain      L(D) = B / D^β + E
    rectified  L(D) = B / (D_l + D^β) + E

D is training tokens, L an error rate (percent or fraction) or a loss. Everything is computed in
logs (``logaddexp``): D^β itself is never formed, so D = 1e12 cannot overflow. Fits are bounded multi-start least
squares on log L, in coordinates normalised by the series' geometric-mean D and largest L, so one
set of bounds serves percent and fraction, 1e5 and 1e12 tokens. Uncertainty comes from a residual
bootstrap: case resampling of 4-8 points would often leave fewer distinct D than parameters.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np
import polars as pl
from scipy.optimize import brentq, least_squares
from scipy.special import expit

from synthllm.store import Store, stable_hash

if TYPE_CHECKING:
    from synthllm.settings import ScalingSettings

Law = Literal["plain", "rectified"]
MetricKind = Literal["error", "accuracy", "loss"]
LAWS: tuple[Law, ...] = ("plain", "rectified")
PARAMETERS: dict[str, tuple[str, ...]] = {"plain": ("B", "beta", "E"), "rectified": ("B", "beta", "E", "D_l")}

BETA_BOUNDS = (0.01, 3.0)
# Bound on |log B| and |log D_l| in normalised units: wide enough for β·log(D/D0) over any
# realistic data, narrow enough to keep the optimiser off flat, meaningless regions.
_LOG_BOUND = 60.0
# Metrics are reported with finite precision; a perfect fit must not win an information
# criterion by log(1e-30). 1e-4 in log space is a 0.01 % relative error.
_RESIDUAL_FLOOR = 1e-4
_BETA_STARTS = (0.05, 0.2, 0.5, 1.0, 2.0)
_E_START_FRACTIONS = (0.0, 0.5, 0.9)  # of the smallest observed metric
_MAX_STARTS = 12
_LN2 = math.log(2.0)
# Plateau search grid over log D: 1 token .. 1e40 tokens, 2.3 % steps, refined with brentq.
_PLATEAU_GRID = np.linspace(0.0, math.log(1e40), 4001)
_DEFAULT_BUDGET_FACTORS = (10.0, 100.0, 1000.0)


class ScalingInputError(ValueError):
    """The points cannot support the requested fit; the message says what to change."""


# --------------------------------------------------------------------------- points
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


# --------------------------------------------------------------------------- the laws
def _curve(theta: np.ndarray, law: Law, log_tokens: np.ndarray) -> np.ndarray:
    """L at log D for one parameter vector (p,) or many (k, p): E + exp(log B - log(D_l + D^β))."""
    return theta[..., 2, None] + np.exp(theta[..., 0, None] - _log_denominator(theta, law, log_tokens))


def _log_denominator(theta: np.ndarray, law: Law, log_tokens: np.ndarray) -> np.ndarray:
    powered = theta[..., 1, None] * log_tokens
    return powered if law == "plain" else np.logaddexp(theta[..., 3, None], powered)


def _residual_functions(law: Law, u: np.ndarray, log_y: np.ndarray):
    """Log-space residuals and their analytic Jacobian (scipy's finite differences are slower)."""

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.log(_curve(theta, law, u)) - log_y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        log_b, beta, floor = theta[:3]
        powered = beta * u
        if law == "plain":
            log_den, d_beta = powered, u
        else:
            log_den = np.logaddexp(theta[3], powered)
            share = expit(powered - theta[3])  # D^β / (D_l + D^β)
            d_beta = u * share
        excess = np.exp(log_b - log_den)
        prediction = floor + excess
        columns = [excess / prediction, -excess * d_beta / prediction, 1.0 / prediction]
        if law == "rectified":
            columns.append(-excess * (1.0 - share) / prediction)
        return np.column_stack(columns)

    return residuals, jacobian


def _bounds(law: Law, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lower = [-_LOG_BOUND, BETA_BOUNDS[0], 0.0] + ([-_LOG_BOUND] if law == "rectified" else [])
    upper = [_LOG_BOUND, BETA_BOUNDS[1], float(y.min())] + ([_LOG_BOUND] if law == "rectified" else [])
    return np.array(lower), np.array(upper)


def _starts(law: Law, u: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """A grid over β, E and D_l; log B follows from the others by least squares in closed form."""
    starts = []
    for beta in _BETA_STARTS:
        powered = beta * u
        # D_l well below the data's D^β (plain-like), at its middle, at its top.
        log_dls = [None] if law == "plain" else [powered.min() - 3.0, float(np.median(powered)), powered.max()]
        for fraction in _E_START_FRACTIONS:
            floor = fraction * y.min()
            for log_dl in log_dls:
                log_den = powered if log_dl is None else np.logaddexp(log_dl, powered)
                log_b = float(np.mean(np.log(y - floor) + log_den))
                starts.append(np.array([log_b, beta, floor] + ([] if log_dl is None else [log_dl])))
    return starts


def _solve(
    law: Law, u: np.ndarray, y: np.ndarray, starts: Sequence[np.ndarray], polish: bool
) -> tuple[np.ndarray, float]:
    """Least squares from the most promising starts (trf), then a local polish (dogbox).

    trf explores better from a grid of starts; dogbox converges in a few steps where a
    parameter sits on its bound (D_l -> 0), where trf crawls for hundreds of evaluations.
    """
    residuals, jacobian = _residual_functions(law, u, np.log(y))
    lower, upper = _bounds(law, y)
    span = upper - lower

    def run(start: np.ndarray, method: str, tolerance: float, max_nfev: int):
        # A strictly feasible start, a sliver away from the bounds.
        x0 = np.clip(start, lower + 1e-9 * span, upper - 1e-9 * span)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return least_squares(
                residuals, x0, jac=jacobian, bounds=(lower, upper), method=method,
                ftol=tolerance, xtol=tolerance, gtol=tolerance, max_nfev=max_nfev,
            )

    if len(starts) > _MAX_STARTS:
        # The grid's own residuals are a good screen; only the most promising starts are run.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            costs = [float(np.sum(residuals(start) ** 2)) for start in starts]
        starts = [starts[i] for i in np.argsort(np.nan_to_num(costs, nan=np.inf))[:_MAX_STARTS]]
    results = [run(start, "trf" if len(starts) > 1 else "dogbox", 1e-8, 100) for start in starts]
    results = [r for r in results if np.isfinite(r.cost)]
    if not results:
        raise ScalingInputError("the fit failed from every starting point")
    best = min(results, key=lambda r: r.cost)
    if polish:
        polished = run(best.x, "dogbox", 1e-12, 200)
        best = polished if polished.cost <= best.cost else best
    return best.x, 2.0 * float(best.cost)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap interval (``lo``/``hi`` are None without a bootstrap)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "lo": _finite(self.lo), "hi": _finite(self.hi)}


@dataclass(frozen=True, eq=False)
class LawFit:
    """One law fitted to one series. ``theta`` is (log B, β, E[, log D_l]) in the series' units."""

    law: Law
    series: Series
    theta: np.ndarray
    bootstrap: np.ndarray  # (n_bootstrap, p) refits on resampled residuals; empty without
    confidence: float
    rss: float  # sum of squared log-space residuals
    warnings: tuple[str, ...] = ()

    @property
    def n_params(self) -> int:
        return len(PARAMETERS[self.law])

    @property
    def n_points(self) -> int:
        return int(self.series.tokens.size)

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(PARAMETERS[self.law], _natural(self.theta).tolist(), strict=True))

    @property
    def intervals(self) -> dict[str, tuple[float, float]] | None:
        if not len(self.bootstrap):
            return None
        lo, hi = _quantiles(_natural(self.bootstrap), self.confidence)
        return {name: (float(a), float(b)) for name, a, b in zip(PARAMETERS[self.law], lo, hi, strict=True)}

    def predict(self, tokens: float | Sequence[float] | np.ndarray) -> np.ndarray:
        log_tokens = np.log(np.asarray(tokens, dtype=float))
        return _curve(self.theta, self.law, np.atleast_1d(log_tokens))

    def predict_interval(self, tokens: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The curve's confidence band (not a band for single noisy measurements)."""
        if not len(self.bootstrap):
            return None
        curves = _curve(self.bootstrap, self.law, np.log(np.atleast_1d(np.asarray(tokens, dtype=float))))
        lo, hi = _quantiles(curves, self.confidence)
        return lo, hi

    @property
    def _log_sigma2(self) -> float:
        return math.log(max(self.rss / self.n_points, _RESIDUAL_FLOOR**2))

    @property
    def aic(self) -> float:
        return self.n_points * self._log_sigma2 + 2 * self.n_params

    @property
    def aicc(self) -> float | None:
        """AIC with the small-sample correction; undefined unless n > p + 1."""
        room = self.n_points - self.n_params - 1
        return self.aic + 2 * self.n_params * (self.n_params + 1) / room if room > 0 else None

    @property
    def bic(self) -> float:
        return self.n_points * self._log_sigma2 + self.n_params * math.log(self.n_points)

    @property
    def rmse_log(self) -> float:
        """Root-mean-square log residual: about the typical relative error of the fit."""
        return math.sqrt(self.rss / self.n_points)

    def to_dict(self) -> dict[str, Any]:
        params = self.params
        intervals = self.intervals
        out: dict[str, Any] = {
            "law": self.law,
            "params": {k: _finite(v) for k, v in params.items()},
            "intervals": {k: [_finite(a), _finite(b)] for k, (a, b) in intervals.items()} if intervals else None,
            "confidence": self.confidence,
            "n_points": self.n_points,
            "n_bootstrap": len(self.bootstrap),
            "rmse_log": self.rmse_log,
            "aic": self.aic,
            "aicc": self.aicc,
            "bic": self.bic,
            "warnings": list(self.warnings),
        }
        if self.law == "rectified":
            # D_l^(1/β): the token count where D^β equals D_l, i.e. where the curve bends.
            out["params"]["D_l_tokens"] = _finite(_exp_or_inf(self.theta[3] / self.theta[1]))
        return out


def _exp_or_inf(log_value: float) -> float:
    return math.inf if log_value > 700 else math.exp(log_value)


def _natural(theta: np.ndarray) -> np.ndarray:
    """(log B, β, E, log D_l) -> (B, β, E, D_l)."""
    out = np.array(theta, dtype=float, copy=True)
    with np.errstate(over="ignore"):
        out[..., 0] = np.exp(out[..., 0])
        if out.shape[-1] == 4:
            out[..., 3] = np.exp(out[..., 3])
    return out


def _quantiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval; sample-valued quantiles so infinite samples stay meaningful."""
    tail = (1.0 - confidence) / 2.0
    return (
        np.quantile(samples, tail, axis=0, method="inverted_cdf"),
        np.quantile(samples, 1.0 - tail, axis=0, method="inverted_cdf"),
    )


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: None stands for 'beyond any token count' (see docs/scaling.md)."""
    return None if value is None or not math.isfinite(value) else float(value)


# --------------------------------------------------------------------------- fitting
def fit_law(
    series: Series,
    law: Law,
    *,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> LawFit:
    """Fit one law by bounded multi-start least squares on log L, with bootstrap intervals."""
    if law not in LAWS:
        raise ScalingInputError(f"unknown law {law!r}: use {' or '.join(LAWS)}")
    n_params = len(PARAMETERS[law])
    where = f"series {series.name!r}"
    if series.tokens.size < n_params:
        raise ScalingInputError(
            f"{where}: {series.tokens.size} points, but the {law} law has {n_params} parameters "
            f"({', '.join(PARAMETERS[law])}); measure more token budgets"
        )
    if series.n_distinct_tokens < n_params:
        raise ScalingInputError(
            f"{where}: only {series.n_distinct_tokens} distinct token count(s) "
            f"({np.unique(series.tokens).tolist()}); the {law} law needs {n_params} to be determined"
        )
    log_d0 = float(np.mean(np.log(series.tokens)))
    scale = float(series.metric.max())
    u = np.log(series.tokens) - log_d0
    y = series.metric / scale
    theta, rss = _solve(law, u, y, _starts(law, u, y), polish=True)

    warnings: list[str] = []
    if np.ptp(y) > 0 and np.corrcoef(u, y)[0, 1] > 0:
        warnings.append("the metric rises with D: both laws expect a falling error or loss (an accuracy?)")
    samples = []
    if series.tokens.size > n_params and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        log_fit = np.log(_curve(theta, law, u))
        residuals = np.log(y) - log_fit
        # Centred residuals, inflated for the parameters they were fitted with.
        residuals = (residuals - residuals.mean()) * math.sqrt(u.size / (u.size - n_params))
        for _ in range(n_bootstrap):
            y_star = np.exp(log_fit + rng.choice(residuals, size=u.size, replace=True))
            samples.append(_solve(law, u, y_star, [theta], polish=False)[0])
    elif n_bootstrap > 0:
        warnings.append(f"{series.tokens.size} points for {n_params} parameters: no residuals, no intervals")
    if law == "rectified" and expit(theta[3] - theta[1] * u.min()) < 0.01:
        warnings.append("D_l is under 1% of D^beta at the smallest D: the rectified law reduces to the plain one")
    if abs(theta[1] - BETA_BOUNDS[0]) < 1e-6 or abs(theta[1] - BETA_BOUNDS[1]) < 1e-6:
        warnings.append(f"beta hit its bound {theta[1]:g}: the data barely constrain the exponent")
    return LawFit(
        law=law,
        series=series,
        theta=_to_series_units(theta, log_d0, scale),
        bootstrap=_to_series_units(np.array(samples), log_d0, scale) if samples else np.empty((0, n_params)),
        confidence=confidence,
        rss=rss,
        warnings=tuple(warnings),
    )


def _to_series_units(theta: np.ndarray, log_d0: float, scale: float) -> np.ndarray:
    """Undo the normalisation D = D0·x, L = s·y: B/(D_l + D^β) = s·B'/(D_l' + x^β)."""
    out = np.array(theta, dtype=float, copy=True)
    beta = out[..., 1]
    out[..., 0] = out[..., 0] + beta * log_d0 + math.log(scale)
    out[..., 2] = out[..., 2] * scale
    if out.shape[-1] == 4:
        out[..., 3] = out[..., 3] + beta * log_d0
    return out


@dataclass(frozen=True, eq=False)
class Holdout:
    """A fit on the smaller token counts and its predictions for the held-out larger ones."""

    fit: LawFit
    tokens: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    interval: tuple[np.ndarray, np.ndarray] | None

    @property
    def abs_error(self) -> np.ndarray:
        return np.abs(self.predicted - self.actual)

    @property
    def rel_error(self) -> np.ndarray:
        return self.abs_error / self.actual

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": self.fit.law,
            "train_max_tokens": float(self.fit.series.tokens.max()),
            "fit": self.fit.to_dict(),
            "points": [
                {
                    "tokens": float(t),
                    "actual": float(a),
                    "predicted": float(p),
                    "lo": float(self.interval[0][i]) if self.interval else None,
                    "hi": float(self.interval[1][i]) if self.interval else None,
                }
                for i, (t, a, p) in enumerate(zip(self.tokens, self.actual, self.predicted, strict=True))
            ],
            "mean_abs_error": float(self.abs_error.mean()),
            "max_abs_error": float(self.abs_error.max()),
            "mean_rel_error": float(self.rel_error.mean()),
        }


def validate_holdout(
    series: Series,
    law: Law,
    *,
    holdout: int = 1,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> Holdout:
    """Fit on all but the ``holdout`` largest distinct token counts and predict those."""
    distinct = np.unique(series.tokens)
    if holdout < 1 or holdout >= distinct.size:
        raise ScalingInputError(
            f"series {series.name!r}: cannot hold out {holdout} of {distinct.size} distinct token counts"
        )
    train = series.tokens < distinct[-holdout]
    try:
        fit = fit_law(series.subset(train), law, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    except ScalingInputError as exc:
        raise ScalingInputError(
            f"after holding out the {holdout} largest token count(s) (holdout 0 skips validation): {exc}"
        ) from exc
    tokens, actual = series.tokens[~train], series.metric[~train]
    return Holdout(fit, tokens, actual, fit.predict(tokens), fit.predict_interval(tokens))


@dataclass(frozen=True, eq=False)
class Comparison:
    """Both laws on the same points: which one the data prefer, and by how much."""

    fits: dict[Law, LawFit]
    holdouts: dict[Law, Holdout]  # empty when nothing was held out
    criterion: Literal["aicc", "bic"]
    preferred: Law
    delta: float  # criterion(other) - criterion(preferred), >= 0
    weight: float  # Akaike/Schwarz weight of the preferred law between the two, in [0.5, 1]

    @property
    def label(self) -> str:
        return {"aicc": "AICc", "bic": "BIC"}[self.criterion]

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "preferred": self.preferred,
            "delta": self.delta,
            "weight": self.weight,
            "fits": {law: fit.to_dict() for law, fit in self.fits.items()},
            "holdout": {law: h.to_dict() for law, h in self.holdouts.items()},
        }


def compare_laws(
    series: Series,
    *,
    holdout: int = 1,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Fit both laws to all points, validate both on the same held-out points, rank them.

    The ranking uses AICc when every law leaves n > p + 1 points, else BIC (AICc is undefined).
    """
    options = {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed}
    fits = {law: fit_law(series, law, **options) for law in LAWS}
    holdouts = {law: validate_holdout(series, law, holdout=holdout, **options) for law in LAWS} if holdout else {}
    criterion: Literal["aicc", "bic"] = "aicc" if all(f.aicc is not None for f in fits.values()) else "bic"
    scores = {law: getattr(fit, criterion) for law, fit in fits.items()}
    preferred = min(LAWS, key=lambda law: (scores[law], len(PARAMETERS[law])))
    other = next(law for law in LAWS if law != preferred)
    delta = float(scores[other] - scores[preferred])
    return Comparison(fits, holdouts, criterion, preferred, delta, float(expit(delta / 2.0)))


# --------------------------------------------------------------------------- extrapolation
@dataclass(frozen=True)
class Prediction:
    tokens: float
    metric: Estimate
    accuracy: Estimate | None  # scale - error, for error rates

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "metric": self.metric.to_dict(),
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
        }


def extrapolate(fit: LawFit, budgets: Sequence[float]) -> list[Prediction]:
    """Predicted metric (and accuracy, for error rates) at token budgets, with bootstrap intervals."""
    budgets_array = np.asarray(budgets, dtype=float)
    if budgets_array.size == 0 or not np.all(np.isfinite(budgets_array) & (budgets_array > 0)):
        raise ScalingInputError(f"token budgets must be positive numbers, got {list(budgets)}")
    values = fit.predict(budgets_array)
    band = fit.predict_interval(budgets_array)
    predictions = []
    for i, tokens in enumerate(budgets_array):
        metric = Estimate(float(values[i]), *((float(band[0][i]), float(band[1][i])) if band else (None, None)))
        accuracy = None
        if fit.series.scale is not None:
            s = fit.series.scale
            accuracy = Estimate(s - metric.value, *((s - metric.hi, s - metric.lo) if band else (None, None)))
        predictions.append(Prediction(float(tokens), metric, accuracy))
    return predictions


def plateau_tokens(fit: LawFit, gain_per_doubling: float) -> Estimate:
    """Tokens from which one more doubling of D gains less than ``gain_per_doubling``.

    The gain L(D) - L(2D) rises then falls for the rectified law (flat while D_l dominates), so
    the answer is the last crossing of the threshold. 0 means the gain never reaches it; inf
    (None in JSON) that it is still above it at 1e40 tokens.
    """
    if not gain_per_doubling > 0:
        raise ScalingInputError(f"gain per doubling must be > 0, got {gain_per_doubling}")
    log_gain = math.log(gain_per_doubling)
    return _estimate(fit, lambda theta: _plateau_log_tokens(theta, fit.law, log_gain))


def _plateau_log_tokens(theta: np.ndarray, law: Law, log_gain: float) -> float:
    def log_gain_at(x: np.ndarray | float) -> np.ndarray:
        x = np.atleast_1d(x)
        here = theta[0] - _log_denominator(theta, law, x)
        doubled = theta[0] - _log_denominator(theta, law, x + _LN2)
        with np.errstate(divide="ignore"):
            return here + np.log(-np.expm1(doubled - here))

    above = np.flatnonzero(log_gain_at(_PLATEAU_GRID) >= log_gain)
    if above.size == 0:
        return -math.inf
    last = above[-1]
    if last == _PLATEAU_GRID.size - 1:
        return math.inf
    return brentq(lambda x: float(log_gain_at(x)[0]) - log_gain, _PLATEAU_GRID[last], _PLATEAU_GRID[last + 1])


def tokens_within(fit: LawFit, points: float) -> Estimate:
    """Tokens needed to get within ``points`` (metric units) of the asymptote E.

    Solves B / (D_l + D^β) = points in logs; 0 means the curve starts closer than that.
    """
    if not points > 0:
        raise ScalingInputError(f"distance to the asymptote must be > 0, got {points}")
    log_points = math.log(points)

    def log_tokens(theta: np.ndarray) -> float:
        target = theta[0] - log_points  # log(B / points) = log(D_l + D^β)
        if fit.law == "plain":
            return target / theta[1]
        if theta[3] >= target:
            return -math.inf
        return (target + math.log1p(-math.exp(theta[3] - target))) / theta[1]

    return _estimate(fit, log_tokens)


def _estimate(fit: LawFit, log_tokens_of: Callable[[np.ndarray], float]) -> Estimate:
    """Apply a log-tokens solver to the fit and every bootstrap refit; report tokens."""

    def tokens(theta: np.ndarray) -> float:
        log_tokens = log_tokens_of(theta)
        return 0.0 if log_tokens == -math.inf else _exp_or_inf(log_tokens)

    value = tokens(fit.theta)
    if not len(fit.bootstrap):
        return Estimate(value)
    lo, hi = _quantiles(np.array([tokens(theta) for theta in fit.bootstrap]), fit.confidence)
    return Estimate(value, float(lo), float(hi))


# --------------------------------------------------------------------------- reports
@dataclass(frozen=True, eq=False)
class SeriesReport:
    """Everything computed for one series."""

    comparison: Comparison
    predictions: dict[Law, list[Prediction]]
    plateau: dict[Law, Estimate]  # empty without a plateau threshold
    within: dict[Law, Estimate]  # empty without a distance to E
    plateau_gain: float | None
    within_points: float | None

    @property
    def series(self) -> Series:
        return self.comparison.fits["plain"].series

    def to_dict(self) -> dict[str, Any]:
        series = self.series
        out: dict[str, Any] = {
            "series": series.name,
            "metric_name": series.metric_name,
            "scale": series.scale,
            "points": [
                {"tokens": float(t), "metric": float(m)} for t, m in zip(series.tokens, series.metric, strict=True)
            ],
            **self.comparison.to_dict(),
            "predictions": {law: [p.to_dict() for p in preds] for law, preds in self.predictions.items()},
            "plateau": None,
            "within": None,
        }
        if self.plateau_gain:
            plateau = {law: estimate.to_dict() for law, estimate in self.plateau.items()}
            out["plateau"] = {"gain_per_doubling": self.plateau_gain, **plateau}
        if self.within_points:
            out["within"] = {"points": self.within_points, **{k: e.to_dict() for k, e in self.within.items()}}
        return out


def fit_series(
    series: Series,
    *,
    holdout: int = 1,
    budgets: Sequence[float] | None = None,
    plateau_gain: float | None = None,
    within: float | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> SeriesReport:
    """Compare both laws, then extrapolate each to the budgets (default 10x-1000x the largest D)."""
    comparison = compare_laws(series, holdout=holdout, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    if not budgets:
        budgets = [series.tokens.max() * factor for factor in _DEFAULT_BUDGET_FACTORS]
    fits = comparison.fits
    return SeriesReport(
        comparison=comparison,
        predictions={law: extrapolate(fit, budgets) for law, fit in fits.items()},
        plateau={law: plateau_tokens(fit, plateau_gain) for law, fit in fits.items()} if plateau_gain else {},
        within={law: tokens_within(fit, within) for law, fit in fits.items()} if within else {},
        plateau_gain=plateau_gain,
        within_points=within,
    )


@dataclass(frozen=True, eq=False)
class ScalingReport:
    """All series of one run; series that could not be fitted are listed with the reason."""

    series: list[SeriesReport]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def plot_names(self) -> dict[str, str]:
        """A file name per series: a readable slug plus a hash, so distinct names never collide."""
        return {
            r.series.name: f"{re.sub(r'[^A-Za-z0-9._-]+', '-', r.series.name).strip('-')[:60] or 'series'}-"
            f"{stable_hash(r.series.name, length=6)}.png"
            for r in self.series
        }

    def to_dict(self) -> dict[str, Any]:
        plots = self.plot_names
        return {
            "series": [{**r.to_dict(), "plot": plots[r.series.name]} for r in self.series],
            "skipped": self.skipped,
        }

    def fit_rows(self) -> list[dict[str, Any]]:
        """One row per series and law: parameters, criterion, held-out error, plateau, within."""
        rows = []
        for report in self.series:
            comparison = report.comparison
            for law, fit in comparison.fits.items():
                params = fit.params
                holdout = comparison.holdouts.get(law)
                rows.append(
                    {
                        "series": report.series.name,
                        "law": law,
                        "preferred": law == comparison.preferred,
                        "n": fit.n_points,
                        "B": _sig(params["B"]),
                        "beta": _sig(params["beta"]),
                        "E": _sig(params["E"]),
                        "D_l": _sig(params.get("D_l")),
                        comparison.criterion: _sig(getattr(fit, comparison.criterion)),
                        "holdout_mae": _sig(float(holdout.abs_error.mean())) if holdout else None,
                        "plateau_tokens": _sig(report.plateau[law].value) if report.plateau else None,
                        "within_tokens": _sig(report.within[law].value) if report.within else None,
                    }
                )
        return rows

    def prediction_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "series": report.series.name,
                "law": law,
                "preferred": law == report.comparison.preferred,
                "tokens": _sig(p.tokens),
                "metric": _sig(p.metric.value),
                "lo": _sig(p.metric.lo),
                "hi": _sig(p.metric.hi),
                "accuracy": _sig(p.accuracy.value) if p.accuracy else None,
            }
            for report in self.series
            for law, predictions in report.predictions.items()
            for p in predictions
        ]


def _sig(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def fit_all(series: Sequence[Series], options: ScalingSettings) -> ScalingReport:
    """Fit every series with the settings' options; a series that cannot be fitted is skipped with its reason."""
    reports, skipped = [], {}
    for one in series:
        try:
            reports.append(
                fit_series(
                    one,
                    holdout=options.holdout,
                    budgets=options.budgets,
                    plateau_gain=options.plateau_gain,
                    within=options.within,
                    n_bootstrap=options.n_bootstrap,
                    confidence=options.confidence,
                    seed=options.seed,
                )
            )
        except ScalingInputError as exc:
            skipped[one.name] = str(exc)
    return ScalingReport(reports, skipped)


# --------------------------------------------------------------------------- output files
def plot_series(report: SeriesReport) -> bytes:
    """PNG: measured and held-out points, both laws (all points solid, without held-out dashed),
    the preferred law's confidence band, and predictions at the budgets; log-scale D."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series, comparison = report.series, report.comparison
    budgets = [p.tokens for p in report.predictions[comparison.preferred]]
    held_tokens = next(iter(comparison.holdouts.values())).tokens if comparison.holdouts else []
    held = np.isin(series.tokens, held_tokens)
    x = np.geomspace(series.tokens.min() / 2, max(series.tokens.max() * 2, max(budgets) * 1.5), 300)

    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {"plain": "tab:blue", "rectified": "tab:orange"}
    for law, fit in comparison.fits.items():
        tag = " (preferred)" if law == comparison.preferred else ""
        axes.plot(x, fit.predict(x), color=colours[law], label=f"{law}{tag}: {_law_label(fit)}")
        if law in comparison.holdouts:
            axes.plot(x, comparison.holdouts[law].fit.predict(x), color=colours[law], linestyle="--", linewidth=1,
                      label=f"{law}, fitted without held-out points")
    best = comparison.fits[comparison.preferred]
    band = best.predict_interval(x)
    if band:
        axes.fill_between(x, band[0], band[1], color=colours[comparison.preferred], alpha=0.15,
                          label=f"{best.confidence:.0%} band ({comparison.preferred})")
    axes.axhline(best.params["E"], color="grey", linestyle=":", linewidth=1, label=f"E = {best.params['E']:.3g}")
    axes.scatter(series.tokens[~held], series.metric[~held], color="black", zorder=3, label="measured")
    if held.any():
        axes.scatter(series.tokens[held], series.metric[held], facecolors="none", edgecolors="red", s=80,
                     marker="D", zorder=3, linewidths=1.5, label="held out")
    predictions = report.predictions[comparison.preferred]
    if predictions[0].metric.lo is not None:
        values = np.array([p.metric.value for p in predictions])
        # A percentile band need not contain the point estimate (skewed bootstrap): clip at 0.
        errors = np.clip([[p.metric.value - p.metric.lo, p.metric.hi - p.metric.value] for p in predictions], 0, None).T
        axes.errorbar(budgets, values, yerr=errors, fmt="s", color=colours[comparison.preferred], capsize=3,
                      markersize=4, label="predicted at budgets")
    axes.set_xscale("log")
    axes.set_xlabel("training tokens D")
    unit = " (%)" if series.scale == 100 else ""
    axes.set_ylabel(f"{series.metric_name}{unit}")
    axes.set_title(f"{series.name}: {comparison.preferred} preferred, Δ{comparison.label} = {comparison.delta:.1f}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _law_label(fit: LawFit) -> str:
    p = fit.params
    text = f"B={p['B']:.3g}, β={p['beta']:.3g}, E={p['E']:.3g}"
    return text + (f", D_l={p['D_l']:.3g}" if "D_l" in p else "")


def report_markdown(report: ScalingReport, images: dict[str, str]) -> str:
    """Markdown summary: the fits table, predictions, and one image per series (``images``: series -> link)."""
    lines = ["# Scaling-law fits", ""]
    for report_one in report.series:
        c = report_one.comparison
        lines.append(
            f"- **{report_one.series.name}**: {c.preferred} law preferred "
            f"(Δ{c.label} = {c.delta:.2f}, weight {c.weight:.2f})"
        )
        lines += [f"  - {law}: {warning}" for law, fit in c.fits.items() for warning in fit.warnings]
    for name, reason in report.skipped.items():
        lines.append(f"- **{name}**: skipped: {reason}")
    for title, rows in (("Fits", report.fit_rows()), ("Predictions", report.prediction_rows())):
        if rows:
            lines += ["", f"## {title}", "", _markdown_table(rows)]
    for name, link in images.items():
        lines += ["", f"## {name}", "", f"![{name}]({link})"]
    return "\n".join(lines) + "\n"


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    body = ["| " + " | ".join(_markdown_cell(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *body])


def _markdown_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def report_files(report: ScalingReport) -> dict[str, bytes]:
    """The files of a report, by name: report.json, report.md and one PNG per series."""
    plots = report.plot_names
    files = {name: plot_series(r) for r in report.series for name in [plots[r.series.name]]}
    files["report.json"] = json.dumps(report.to_dict(), indent=2, allow_nan=False).encode("utf-8")
    files["report.md"] = report_markdown(report, {series: name for series, name in plots.items()}).encode("utf-8")
    return files
