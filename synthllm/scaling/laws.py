"""The two scaling laws: fit, validate, compare and extrapolate one error-vs-tokens curve.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import brentq, least_squares
from scipy.special import expit

from synthllm.scaling.points import ScalingInputError, Series

Law = Literal["plain", "rectified"]
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
