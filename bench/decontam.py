"""Benchmark: decontamination of synthetic questions against the paper's six benchmark sets.

Questions come from bench/dedup.py's generator; a share of them are planted benchmark items
(verbatim, lightly edited, or a short item inside a longer question). Two methods run on the same
questions, each in its own process so peak RSS is per method:

* ``synthllm``: :class:`synthllm.curation.decontam.ContaminationIndex` (exact + 13-gram + short items)
* ``python_13gram_set``: a plain Python set of 13-word tuples (``\\w+`` words), the usual baseline

Prints one JSON object::

    python bench/decontam.py --questions 100000

Target: >= 50,000 questions per CPU-second and <= 300 MB peak RSS for synthllm.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup import synthetic_questions  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
# the paper's six: five ship with synthllm; Minerva Math (CC BY-NC-SA) is read from a file path
BENCHMARKS = [
    "builtin:gsm8k",
    "builtin:math",
    "builtin:olympiadbench",
    "builtin:college_math",
    "builtin:gaokao2023en",
    str(SHARED / "minerva_math-test.jsonl"),
]
NGRAM = 13
_WORD = re.compile(r"\w+")


def planted_questions(size: int, share: float = 0.02, seed: int = 1) -> tuple[list[str], list[str], set[int]]:
    """Question ids, texts, and the positions of planted benchmark items."""
    from synthllm.curation.decontam import load_benchmark

    items = [t for spec in BENCHMARKS for t in load_benchmark(spec).texts]
    frame, _ = synthetic_questions(size, seed=seed)
    texts = frame["question"].to_list()
    rng = random.Random(seed)
    planted = set()
    for index in range(size):
        if rng.random() < share:
            item = rng.choice(items)
            kind = rng.random()
            texts[index] = item if kind < 0.4 else (item + " Show every step." if kind < 0.7 else f"First, {item}")
            planted.add(index)
    return frame["question_id"].to_list(), texts, planted


def write_questions(size: int, path: Path) -> None:
    import polars as pl

    ids, texts, planted = planted_questions(size)
    pl.DataFrame({"question_id": ids, "question": texts, "planted": [i in planted for i in range(size)]}).write_parquet(path)


def read_questions(path: Path) -> tuple[list[str], list[str], set[int]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    return table["question_id"], table["question"], {i for i, p in enumerate(table["planted"]) if p}


def run_synthllm(path: Path) -> dict:
    import polars as pl

    from synthllm.curation.decontam import ContaminationIndex, load_benchmark

    imports_mb = _rss_mb()
    questions = pl.read_parquet(path)
    ids = questions["question_id"].to_list()
    planted = set(np.flatnonzero(questions["planted"].to_numpy()).tolist())
    size = questions.height
    started, cpu_started = time.perf_counter(), time.process_time()
    index = ContaminationIndex([load_benchmark(spec) for spec in BENCHMARKS], NGRAM)
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    index_mb = _rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = index.check(questions)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    dropped = set(rows.filter(~pl.col("kept"))["question_id"])
    per_benchmark = (
        rows.filter(~pl.col("kept")).unique("question_id")
        .group_by(pl.col("matched_id").str.split(":").list.first().alias("benchmark")).len()
    )
    return {
        "method": "synthllm",
        "index_items": len(index),
        "index_seconds": round(build_s, 2),
        "index_cpu_seconds": round(build_cpu_s, 2),
        **_figures(size, seconds, cpu_seconds, dropped, ids, planted),
        "per_benchmark": dict(sorted(per_benchmark.iter_rows())),
        "rss_after_imports_mb": imports_mb,
        "rss_after_index_mb": index_mb,
    }


def run_baseline(path: Path) -> dict:
    from synthllm.curation.decontam import load_benchmark

    ids, texts, planted = read_questions(path)
    size = len(ids)
    started, cpu_started = time.perf_counter(), time.process_time()
    grams: set[tuple[str, ...]] = set()
    for spec in BENCHMARKS:
        for text in load_benchmark(spec).texts:
            words = _WORD.findall(text.lower())
            grams.update(tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    started, cpu_started = time.perf_counter(), time.process_time()
    dropped = set()
    for question_id, text in zip(ids, texts, strict=True):
        words = _WORD.findall(text.lower())
        if any(tuple(words[i : i + NGRAM]) in grams for i in range(len(words) - NGRAM + 1)):
            dropped.add(question_id)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "method": "python_13gram_set",
        "index_items": len(grams),
        "index_seconds": round(build_s, 2),
        "index_cpu_seconds": round(build_cpu_s, 2),
        **_figures(size, seconds, cpu_seconds, dropped, ids, planted),
    }


def _figures(size: int, seconds: float, cpu_seconds: float, dropped: set, ids: list[str], planted: set[int]) -> dict:
    planted_ids = {ids[i] for i in planted}
    return {
        "questions": size,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "questions_per_cpu_second": round(size / cpu_seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "planted": len(planted_ids),
        "planted_found": len(planted_ids & dropped),
        "other_dropped": len(dropped - planted_ids),
    }


def _rss_mb() -> int:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--single", choices=["synthllm", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        result = run_synthllm(args.input) if args.single == "synthllm" else run_baseline(args.input)
        print(json.dumps(result))
        return
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "questions.parquet"
        write_questions(args.questions, path)
        for method in ("synthllm", "baseline"):
            command = [sys.executable, __file__, "--single", method, "--input", str(path)]
            # one polars thread: questions per CPU-second is then per core
            completed = subprocess.run(command, capture_output=True, text=True,
                                       env={**os.environ, "POLARS_MAX_THREADS": "1"})
            if completed.returncode != 0:
                sys.stderr.write(completed.stderr)
                raise SystemExit(completed.returncode)
            results[method] = json.loads(completed.stdout)
    results["speedup_per_core"] = round(
        results["synthllm"]["questions_per_cpu_second"] / results["baseline"]["questions_per_cpu_second"], 2
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
