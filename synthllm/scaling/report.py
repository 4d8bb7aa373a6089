"""Reports of scaling-law fits: per-series comparison and predictions, tables, plots, Markdown."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from synthllm.scaling.laws import (
    Comparison,
    Estimate,
    Law,
    LawFit,
    Prediction,
    compare_laws,
    extrapolate,
    plateau_tokens,
    tokens_within,
)
from synthllm.scaling.points import ScalingInputError, Series
from synthllm.store import stable_hash

if TYPE_CHECKING:
    from synthllm.settings import ScalingSettings

_DEFAULT_BUDGET_FACTORS = (10.0, 100.0, 1000.0)


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
