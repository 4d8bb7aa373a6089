"""Scaling laws of synthetic data: fit, validate, compare and extrapolate error-vs-tokens curves.

``points`` reads measured points (files, the store), ``laws`` fits and extrapolates the two laws,
``report`` builds the per-series reports, tables, plots and Markdown, ``options`` is the one
declaration of the options the CLI and the flow take. The public names are re-exported here.
"""

from synthllm.scaling.laws import (
    BETA_BOUNDS,
    LAWS,
    PARAMETERS,
    Comparison,
    Estimate,
    Holdout,
    Law,
    LawFit,
    Prediction,
    compare_laws,
    extrapolate,
    fit_law,
    plateau_tokens,
    tokens_within,
    validate_holdout,
)
from synthllm.scaling.options import POINT_OPTIONS, ScalingOptions
from synthllm.scaling.points import (
    MetricKind,
    ScalingInputError,
    Series,
    add_training_results,
    gather_points,
    load_points,
    read_points_file,
    read_training_results,
    series_from_frame,
)
from synthllm.scaling.report import (
    ScalingReport,
    SeriesReport,
    fit_all,
    fit_series,
    plot_series,
    png_data_uri,
    report_files,
    report_markdown,
)

__all__ = [
    "BETA_BOUNDS", "LAWS", "PARAMETERS", "POINT_OPTIONS", "Comparison", "Estimate", "Holdout", "Law", "LawFit",
    "MetricKind", "Prediction", "ScalingInputError", "ScalingOptions", "ScalingReport", "Series", "SeriesReport",
    "add_training_results", "compare_laws", "extrapolate", "fit_all", "fit_law", "fit_series", "gather_points",
    "load_points", "plateau_tokens", "plot_series", "png_data_uri", "read_points_file", "read_training_results",
    "report_files", "report_markdown", "series_from_frame", "tokens_within", "validate_holdout",
]
