"""Curation and measurement: dedup, decontamination, the diversity report, dataset export.

Pure logic works on polars frames (``dedup``, ``ContaminationIndex.check``, ``build_report``);
:mod:`synthllm.curation.stages` and :func:`export_dataset` run it over a store.
"""

from synthllm.curation.decontam import Benchmark, ContaminationIndex, contamination_index, load_benchmark
from synthllm.curation.dedup import MinHasher, dedup
from synthllm.curation.diversity import build_report, minilm_embedder
from synthllm.curation.export import EXPORT_FORMATS, curated_dataset, export_dataset
from synthllm.curation.stages import (
    remove_stale_decontamination,
    run_decontamination,
    run_dedup,
    run_diversity_report,
    write_curation_summary,
)

__all__ = [
    "EXPORT_FORMATS",
    "Benchmark",
    "ContaminationIndex",
    "MinHasher",
    "build_report",
    "contamination_index",
    "curated_dataset",
    "dedup",
    "export_dataset",
    "load_benchmark",
    "minilm_embedder",
    "remove_stale_decontamination",
    "run_decontamination",
    "run_dedup",
    "run_diversity_report",
    "write_curation_summary",
]
