"""Scaling-law toolkit: parameter recovery, validation, law comparison, extrapolation, I/O, CLI, flow."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from synthllm.scaling import (
    LAWS,
    ScalingInputError,
    Series,
    add_training_results,
    compare_laws,
    extrapolate,
    fit_law,
    fit_series,
    load_points,
    plateau_tokens,
    read_training_results,
    tokens_within,
    validate_holdout,
)
from synthllm.store import Store

# The paper's protocol: nested subsets of 100K .. 7.4M examples at ~600 tokens each.
PAPER_TOKENS = 600 * np.array([1e5, 2e5, 4e5, 8e5, 1.6e6, 3.2e6, 7.4e6])
WIDE_TOKENS = np.geomspace(1e5, 1e12, 8)
PLAIN = {"B": 8000.0, "beta": 0.3, "E": 20.0}
PLAIN_WIDE = {"B": 50.0, "beta": 0.25, "E": 5.0}  # 55 % at 1e5 tokens, 5.05 % at 1e12
RECTIFIED = {"B": 1e6, "beta": 0.5, "E": 10.0, "D_l": 2e4}  # D_l ~ D^beta over the data: it matters


def law_values(params: dict[str, float], tokens: np.ndarray) -> np.ndarray:
    return params["B"] / (params.get("D_l", 0.0) + tokens ** params["beta"]) + params["E"]


def make_series(params, tokens=PAPER_TOKENS, noise=0.0, seed=0, name="s", scale=100.0) -> Series:
    values = law_values(params, tokens) * np.exp(noise * np.random.default_rng(seed).standard_normal(tokens.size))
    return Series(name, tokens, values, scale=scale)


def assert_params_close(found: dict[str, float], truth: dict[str, float], rel: float) -> None:
    for name, value in truth.items():
        assert found[name] == pytest.approx(value, rel=rel), (name, found, truth)


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize(
    ("law", "truth", "tokens"),
    [
        ("plain", PLAIN, PAPER_TOKENS),
        ("rectified", RECTIFIED, PAPER_TOKENS),
        ("plain", PLAIN_WIDE, WIDE_TOKENS),
        ("rectified", {"B": 3e3, "beta": 0.5, "E": 2.0, "D_l": 30.0}, WIDE_TOKENS),  # D_l matters at 1e5..1e7
        ("rectified", {"B": 5e8, "beta": 1.2, "E": 0.5, "D_l": 1e7}, WIDE_TOKENS),  # D^beta reaches 2.5e14
    ],
    ids=["plain", "rectified", "plain-1e5-1e12", "rectified-1e5-1e12", "rectified-steep"],
)
def test_recovers_parameters_from_exact_points(law, truth, tokens):
    fit = fit_law(make_series(truth, tokens), law, n_bootstrap=0)
    assert_params_close(fit.params, truth, rel=1e-5)
    assert fit.rmse_log < 1e-8


def test_noisy_points_intervals_cover_the_true_parameters():
    fit = fit_law(make_series(PLAIN_WIDE, WIDE_TOKENS, noise=0.01, seed=3), "plain", n_bootstrap=200)
    for name, value in PLAIN_WIDE.items():
        lo, hi = fit.intervals[name]
        assert lo <= value <= hi, (name, lo, value, hi)
        assert lo < fit.params[name] < hi
    assert fit.params["beta"] == pytest.approx(PLAIN_WIDE["beta"], rel=0.15)
    assert fit.params["E"] == pytest.approx(PLAIN_WIDE["E"], rel=0.15)


def test_noisy_rectified_fit_predicts_the_true_curve():
    series = make_series(RECTIFIED, noise=0.005, seed=1)
    fit = fit_law(series, "rectified", n_bootstrap=100)
    lo, hi = fit.intervals["E"]
    assert lo <= RECTIFIED["E"] <= hi
    dense = np.geomspace(PAPER_TOKENS[0], PAPER_TOKENS[-1], 50)
    np.testing.assert_allclose(fit.predict(dense), law_values(RECTIFIED, dense), rtol=0.01)


def test_percent_and_fraction_give_the_same_curve():
    percent = fit_law(make_series(RECTIFIED, noise=0.003, seed=2), "rectified", n_bootstrap=0)
    fraction_series = make_series(RECTIFIED, noise=0.003, seed=2)
    fraction = fit_law(Series("f", fraction_series.tokens, fraction_series.metric / 100, scale=1.0), "rectified",
                       n_bootstrap=0)
    assert fraction.params["beta"] == pytest.approx(percent.params["beta"], rel=1e-4)
    assert fraction.params["E"] * 100 == pytest.approx(percent.params["E"], rel=1e-4)
    assert fraction.params["D_l"] == pytest.approx(percent.params["D_l"], rel=1e-3)


# --------------------------------------------------------------------------- validation and comparison
def test_holdout_predicts_the_larger_sizes():
    exact = validate_holdout(make_series(RECTIFIED), "rectified", holdout=2, n_bootstrap=0)
    np.testing.assert_array_equal(exact.tokens, PAPER_TOKENS[-2:])
    assert exact.fit.series.tokens.max() == PAPER_TOKENS[-3]
    np.testing.assert_allclose(exact.predicted, law_values(RECTIFIED, PAPER_TOKENS[-2:]), rtol=1e-6)

    # 0.5 % noise on 6 points: the largest size is predicted within 4 % (8 noise sigmas) and
    # the bootstrap band holds the true curve there.
    noisy = validate_holdout(make_series(RECTIFIED, noise=0.005, seed=0), "rectified", holdout=1, n_bootstrap=100)
    assert noisy.to_dict()["mean_rel_error"] < 0.04
    lo, hi = noisy.interval
    truth = law_values(RECTIFIED, noisy.tokens)
    assert np.all(lo <= truth) and np.all(truth <= hi)


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_plain_law_preferred_for_plain_data(noise):
    comparison = compare_laws(make_series(PLAIN, noise=noise, seed=5), holdout=1, n_bootstrap=0)
    assert comparison.preferred == "plain"
    assert comparison.criterion == "aicc"
    assert comparison.delta > 2
    assert set(comparison.holdouts) == set(LAWS)
    if noise == 0:
        assert any("reduces to the plain one" in w for w in comparison.fits["rectified"].warnings)


def test_rising_metric_is_flagged():
    fit = fit_law(Series("acc", PAPER_TOKENS[:5], [20.0, 22.0, 25.0, 27.0, 30.0], scale=100.0), "plain", n_bootstrap=0)
    assert any("rises with D" in w for w in fit.warnings)


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_rectified_law_preferred_when_d_l_matters(noise):
    comparison = compare_laws(make_series(RECTIFIED, noise=noise, seed=6), holdout=2, n_bootstrap=0)
    assert comparison.preferred == "rectified"
    assert comparison.delta > 4
    assert comparison.weight > 0.85
    if noise == 0:  # with noise, 5 points can extrapolate either law better by chance
        held = {law: h.abs_error.mean() for law, h in comparison.holdouts.items()}
        assert held["rectified"] < held["plain"] / 100


def test_few_points_fall_back_to_bic():
    comparison = compare_laws(make_series(RECTIFIED, PAPER_TOKENS[:5]), holdout=0, n_bootstrap=0)
    assert comparison.criterion == "bic"  # AICc needs n > p + 1 = 5 for the rectified law
    assert comparison.fits["rectified"].aicc is None


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("tokens", "metric", "law", "message"),
    [
        ([1e6, 2e6, 4e6], [30.0, 25.0, 22.0], "rectified", "3 points, but the rectified law has 4 parameters"),
        ([1e6, 2e6], [30.0, 25.0], "plain", "2 points, but the plain law has 3 parameters"),
        ([1e6, 0.0, 4e6, 8e6], [30.0, 25.0, 22.0, 21.0], "plain", "tokens must be > 0"),
        ([1e6, -2e6, 4e6, 8e6], [30.0, 25.0, 22.0, 21.0], "plain", "tokens must be > 0"),
        ([1e6, 2e6, 4e6, 8e6], [30.0, math.nan, 22.0, 21.0], "plain", "NaN or infinite"),
        ([1e6, 1e6, 1e6, 1e6], [30.0, 29.0, 31.0, 30.5], "plain", "only 1 distinct token count"),
        ([1e6, 2e6, 4e6, 8e6], [30.0, 25.0, 0.0, 21.0], "plain", "metric must be > 0"),
        ([1e6, 2e6, 4e6, 8e6], [30.0, 25.0, 120.0, 21.0], "plain", "error rate must be below 100"),
    ],
)
def test_bad_input_gives_a_clear_error(tokens, metric, law, message):
    with pytest.raises(ScalingInputError, match=message):
        fit_law(Series("bad", tokens, metric, scale=100.0), law, n_bootstrap=0)


def test_holdout_leaving_too_few_points_is_explained():
    with pytest.raises(ScalingInputError, match="after holding out the 4 largest"):
        validate_holdout(make_series(RECTIFIED), "rectified", holdout=4, n_bootstrap=0)


# --------------------------------------------------------------------------- extrapolation
def test_extrapolation_intervals_and_accuracy():
    fit = fit_law(make_series(RECTIFIED, noise=0.005, seed=7), "rectified", n_bootstrap=100)
    budgets = [1e10, 1e11, 1e12]
    predictions = extrapolate(fit, budgets)
    assert [p.tokens for p in predictions] == budgets
    widths = []
    for p in predictions:
        assert p.metric.lo <= p.metric.value <= p.metric.hi
        assert p.accuracy.value == pytest.approx(100 - p.metric.value)
        assert p.accuracy.lo == pytest.approx(100 - p.metric.hi)
        widths.append(p.metric.hi - p.metric.lo)
    assert widths[0] < widths[-1]  # uncertainty grows with the distance from the data
    truth = law_values(RECTIFIED, np.array(budgets))
    assert all(p.metric.lo <= t <= p.metric.hi for p, t in zip(predictions, truth, strict=True))
    with pytest.raises(ScalingInputError, match="positive"):
        extrapolate(fit, [0.0])


def test_plateau_matches_the_closed_form_for_the_plain_law():
    fit = fit_law(make_series(PLAIN), "plain", n_bootstrap=0)
    gain = 0.5
    expected = (PLAIN["B"] * (1 - 2 ** -PLAIN["beta"]) / gain) ** (1 / PLAIN["beta"])
    assert plateau_tokens(fit, gain).value == pytest.approx(expected, rel=1e-6)


def test_plateau_of_the_rectified_law_is_the_last_crossing():
    fit = fit_law(make_series(RECTIFIED), "rectified", n_bootstrap=0)
    gain = 0.5
    tokens = plateau_tokens(fit, gain).value

    def gain_at(d):
        return float(fit.predict(d)[0] - fit.predict(2 * d)[0])

    assert gain_at(tokens) == pytest.approx(gain, rel=1e-6)
    assert gain_at(tokens * 1.5) < gain < gain_at(tokens / 1.5)
    assert plateau_tokens(fit, 1e3).value == 0.0  # a doubling never gains 1000 points


def test_tokens_within_reaches_the_asymptote_distance():
    plain = fit_law(make_series(PLAIN), "plain", n_bootstrap=0)
    assert tokens_within(plain, 2.0).value == pytest.approx((PLAIN["B"] / 2.0) ** (1 / PLAIN["beta"]), rel=1e-6)
    rectified = fit_law(make_series(RECTIFIED, noise=0.003, seed=8), "rectified", n_bootstrap=50)
    estimate = tokens_within(rectified, 1.0)
    assert rectified.predict(estimate.value)[0] - rectified.params["E"] == pytest.approx(1.0, rel=1e-6)
    assert estimate.lo <= estimate.value <= estimate.hi
    already = RECTIFIED["B"] / RECTIFIED["D_l"] + 1  # further than the curve ever is from E
    assert tokens_within(rectified, already * 2).value == 0.0


def test_fit_series_defaults_to_two_to_three_orders_past_the_data():
    report = fit_series(make_series(RECTIFIED), holdout=1, plateau_gain=0.5, within=1.0, n_bootstrap=20)
    budgets = [p.tokens for p in report.predictions["rectified"]]
    assert budgets == pytest.approx([PAPER_TOKENS[-1] * f for f in (10, 100, 1000)])
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON: no NaN, no infinity
    assert data["preferred"] == "rectified"
    assert data["plateau"]["gain_per_doubling"] == 0.5 and data["within"]["points"] == 1.0


# --------------------------------------------------------------------------- input files and the store
@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl", "parquet"])
def test_load_points_with_custom_columns(tmp_path, suffix):
    frame = pl.DataFrame(
        {
            "model": ["a"] * 4 + ["b"] * 4,
            "examples": [1e5, 2e5, 4e5, 8e5] * 2,
            "acc": [0.40, 0.45, 0.48, 0.50, 0.60, 0.62, 0.63, 0.64],
        }
    )
    path = tmp_path / f"points.{suffix}"
    {"csv": frame.write_csv, "json": frame.write_json, "jsonl": frame.write_ndjson, "parquet": frame.write_parquet}[
        suffix
    ](path)
    series = load_points(path, series_col="model", tokens_col="examples", metric_col="acc", metric_kind="accuracy",
                         tokens_per_unit=600)
    assert [s.name for s in series] == ["a", "b"]
    np.testing.assert_allclose(series[0].tokens, 600 * np.array([1e5, 2e5, 4e5, 8e5]))
    np.testing.assert_allclose(series[0].metric, [0.60, 0.55, 0.52, 0.50])  # error = 1 - accuracy
    assert series[0].scale == 1.0


def test_load_points_explains_missing_columns(tmp_path):
    path = tmp_path / "points.csv"
    pl.DataFrame({"tokens": [1.0, 2.0], "error": [3.0, 2.0]}).write_csv(path)
    with pytest.raises(ScalingInputError, match=r"column\(s\) \['series', 'metric'\] not found"):
        load_points(path)
    assert load_points(path, series_col=None, metric_col="error")[0].name == "points"


def test_store_round_trip_is_idempotent(tmp_path):
    store = Store(str(tmp_path / "store"))
    series = [make_series(PLAIN, name="x"), make_series(RECTIFIED, name="y")]
    first = add_training_results(store, series, run_id="r1", notes="test")
    again = add_training_results(store, series, run_id="r2", notes="test")
    assert first[0] == again[0] and first[1] == 14
    assert store.read_table("training_results").height == 14
    loaded = {s.name: s for s in read_training_results(store)}
    np.testing.assert_allclose(loaded["y"].metric, series[1].metric)
    assert [s.name for s in read_training_results(store, ["x"])] == ["x"]
    with pytest.raises(ScalingInputError, match="not in training_results"):
        read_training_results(store, ["nope"])


# --------------------------------------------------------------------------- CLI and flow
@pytest.fixture
def points_csv(tmp_path):
    rows = [
        {"model": name, "examples": int(n), "error_pct": float(v)}
        for name, params in (("plain-model", PLAIN), ("rectified-model", RECTIFIED))
        for n, v in zip(PAPER_TOKENS / 600, make_series(params, noise=0.003, seed=9).metric, strict=True)
    ]
    path = tmp_path / "points.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


COLUMNS = ["--series-col", "model", "--tokens-col", "examples", "--metric-col", "error_pct", "--tokens-per-unit", "600"]


def test_cli_fit_writes_json_and_plots(points_csv, tmp_path):
    from synthllm.commands.scaling import app

    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["fit", str(points_csv), *COLUMNS, "--budget", "1e11", "--plateau-gain", "0.5", "--bootstrap", "20",
              "--out", str(out), "--store", str(tmp_path / "store")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    preferred = {s["series"]: s["preferred"] for s in report["series"]}
    assert preferred == {"plain-model": "plain", "rectified-model": "rectified"}
    for entry in report["series"]:
        assert (out / entry["plot"]).read_bytes().startswith(b"\x89PNG")
        assert entry["predictions"]["rectified"][0]["tokens"] == 1e11
    assert "rectified law preferred" in result.output


def test_cli_add_then_fit_from_the_store(points_csv, tmp_path):
    from synthllm.commands.scaling import app

    store = str(tmp_path / "store")
    runner = CliRunner()
    added = runner.invoke(app, ["add", str(points_csv), *COLUMNS, "--store", store, "--notes", "paper"])
    assert added.exit_code == 0, added.output
    assert Store(store).read_table("training_results").height == 14
    result = runner.invoke(app, ["fit", "--store", store, "--series", "rectified-model", "--bootstrap", "0",
                                 "--json", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert [s["series"] for s in json.loads((tmp_path / "r" / "report.json").read_text())["series"]] == [
        "rectified-model"
    ]


def test_cli_reports_bad_input(tmp_path):
    from synthllm.commands.scaling import app

    path = tmp_path / "bad.csv"
    pl.DataFrame({"series": ["a"] * 4, "tokens": [1e6, 1e6, 1e6, 1e6], "metric": [30, 29, 31, 30]}).write_csv(path)
    result = CliRunner().invoke(app, ["fit", str(path), "--out", str(tmp_path / "r"), "--bootstrap", "0"])
    assert result.exit_code == 1
    assert "only 1 distinct token count" in result.output
    missing = CliRunner().invoke(app, ["fit", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_flow_publishes_png_json_and_artifacts(prefect_harness, points_csv, store_url):
    from prefect.artifacts import Artifact

    from flows.scaling import scaling_fit_flow

    options = {"series_col": "model", "tokens_col": "examples", "metric_col": "error_pct", "tokens_per_unit": 600,
               "n_bootstrap": 20, "plateau_gain": 0.5}  # a dict, as a deployment passes it
    result = scaling_fit_flow(source=str(points_csv), store=store_url, options=options, report_name="paper")
    store = Store(store_url)
    assert result["report"] == store.path("reports/scaling/paper/report.json")
    report = json.loads(store.read_bytes(result["report"]))
    assert {s["series"] for s in report["series"]} == {"plain-model", "rectified-model"}
    for path in result["plots"].values():
        assert path.startswith(store.path("reports/scaling/paper/"))
        assert store.read_bytes(path).startswith(b"\x89PNG")
    assert result["preferred"]["rectified-model"] == "rectified"
    markdown = Artifact.get("scaling-report")
    assert "data:image/png;base64," in markdown.data and "reports/scaling/paper/report.json" in markdown.data
    fits = Artifact.get("scaling-fits")
    assert "rectified-model" in str(fits.data)
    runs = store.read_table("runs")
    assert set(runs["event"].to_list()) == {"started", "finished"}


def test_scaling_options_are_declared_once_in_the_settings():
    """Every ScalingSettings field reaches the CLI and the flow, with the settings' help text."""
    from typer.main import get_command

    from flows.scaling import scaling_fit_flow
    from synthllm.commands.scaling import app
    from synthllm.scaling import POINT_OPTIONS
    from synthllm.settings import ScalingSettings

    fields = ScalingSettings.model_fields
    commands = get_command(app).commands
    fit_help = {p.name: p.help for p in commands["fit"].params}
    assert {name: fit_help.get(name) for name in fields} == {name: f.description for name, f in fields.items()}
    assert all(f.description for f in fields.values())
    assert {p.name for p in commands["add"].params} & set(fields) == set(POINT_OPTIONS)
    flow_schema = scaling_fit_flow.parameters
    assert set(flow_schema.definitions["ScalingOptions"]["properties"]) == set(fields)
    assert not set(fields) & set(flow_schema.properties)  # no second, flat declaration
