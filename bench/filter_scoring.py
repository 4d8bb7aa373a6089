"""Benchmark of Stage 1's classifier: training on a rated sample, scoring a documents shard.

Scoring is the part that runs over the whole corpus, one task per documents shard, so its
throughput per core decides the cost of filtering millions of documents. Documents are the real
sample corpus (OpenStax + FineWeb-Edu texts), cycled to the shard size; ratings come from the
source (mathematics 9, web 2). Prints JSON: training seconds, scoring documents per second
(one process, one thread), model file size and peak RSS.

    python bench/filter_scoring.py --shard-size 10000 --ratings 2000
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import polars as pl
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synthllm import filtering as F  # noqa: E402
from synthllm.settings import FilterSettings  # noqa: E402


def _corpus() -> tuple[list[str], list[float]]:
    texts, ratings = [], []
    for path in sorted((REPO / "data" / "sample").glob("*.jsonl")):
        frame = pl.read_ndjson(path)
        texts += frame["text"].to_list()
        ratings += [9.0 if "openstax" in path.name else 2.0] * frame.height
    return texts, ratings


def main(shard_size: int = 10_000, ratings: int = 2_000, rater_chars: int = 2_000) -> None:
    settings = FilterSettings(rater_chars=rater_chars)
    texts, labels = _corpus()
    picks = [i % len(texts) for i in range(ratings)]
    # a numbered suffix makes the cycled copies distinct documents
    rated = pl.DataFrame(
        {
            "doc_id": [f"doc-{i}" for i in range(ratings)],
            "text": [f"{texts[j][: rater_chars - 16]} #{i}" for i, j in enumerate(picks)],
            "llm_rating": [labels[j] for j in picks],
        }
    )
    started = time.perf_counter()
    model = F.train_rating_model(rated, 1, settings)
    train_seconds = time.perf_counter() - started

    shard = [texts[i % len(texts)] + f" #{i}" for i in range(shard_size)]
    started = time.perf_counter()
    rows = F.score_rows(model, [f"doc-{i}" for i in range(shard_size)], shard, settings=settings,
                        shard_id="bench", run_id="bench")
    score_seconds = time.perf_counter() - started
    print(json.dumps({
        "ratings": ratings,
        "train_seconds": round(train_seconds, 3),
        "shard_size": shard_size,
        "rater_chars": rater_chars,
        "score_seconds": round(score_seconds, 3),
        "docs_per_second": round(shard_size / score_seconds, 1),
        "kept_share": round(sum(rows.column("kept").to_pylist()) / shard_size, 3),
        "model_bytes": len(model.to_bytes()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    typer.run(main)
