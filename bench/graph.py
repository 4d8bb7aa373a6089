"""Benchmark of the level-3 concept graph: build, walk, ground on synthetic concept sets.

Each document gets 3 topics and 12 KCs. Topics follow a Zipf law over a 30k vocabulary; a KC
comes 70% of the time from a pool belonging to one of the document's topics (Zipf within the
pool) and otherwise from a Zipf law over a 200k vocabulary, so KCs cluster by topic as
extracted concepts do. Each size runs in its own process (clean memory figures); prints JSON
with wall seconds, CPU seconds (user + system, all threads) and peak RSS per phase.

``--stage``: the pipeline's graph task instead (``synthllm.stages.graph.build_concept_graph``) on
a local store holding the same links as ``document_concepts`` shards of 2,000 documents, with
the columns the concepts stage writes: it reads the links, writes the concepts and edges
shards, walks and grounds. Measured in a process of its own, started after the store is written.

    python bench/graph.py --sizes 10000,100000,1000000
    python bench/graph.py --sizes 100000,1000000 --stage
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthllm.graph import (  # noqa: E402
    assign_subsets,
    build_graphs,
    sample_combinations,
    split_budget,
)
from synthllm.grounding import InvertedIndex, ground  # noqa: E402
from synthllm.settings import GraphSettings  # noqa: E402

TOPICS_PER_DOC, KCS_PER_DOC = 3, 12
TOPIC_VOCABULARY, KC_VOCABULARY, KC_POOL = 30_000, 200_000, 400
LOCAL_KC_SHARE = 0.7


def _zipf(rng: np.random.Generator, n: int, vocabulary: int, exponent: float) -> np.ndarray:
    weight = 1.0 / np.arange(1, vocabulary + 1) ** exponent
    cdf = np.cumsum(weight)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), vocabulary - 1)


def synthetic_links(n_docs: int, seed: int = 0) -> pl.DataFrame:
    """document_concepts-like links (doc_id, topic_id, kc_id) for ``n_docs`` documents."""
    rng = np.random.default_rng(seed)
    topic = _zipf(rng, n_docs * TOPICS_PER_DOC, TOPIC_VOCABULARY, 1.0).reshape(n_docs, TOPICS_PER_DOC)
    kc_doc = np.repeat(np.arange(n_docs), KCS_PER_DOC)
    kc_topic = topic[kc_doc, rng.integers(0, TOPICS_PER_DOC, kc_doc.size)]
    local = (kc_topic.astype(np.int64) * 7919 + _zipf(rng, kc_doc.size, KC_POOL, 1.0) * 104_729) % KC_VOCABULARY
    anywhere = _zipf(rng, kc_doc.size, KC_VOCABULARY, 1.0)
    kc = np.where(rng.random(kc_doc.size) < LOCAL_KC_SHARE, local, anywhere)
    doc_names = pl.Series(np.arange(n_docs)).cast(pl.String).str.zfill(8)
    topic_links = pl.DataFrame({
        "doc_id": doc_names.gather(np.repeat(np.arange(n_docs), TOPICS_PER_DOC)),
        "topic_id": pl.Series(topic.ravel()).cast(pl.String),
        "kc_id": pl.Series([None] * topic.size, dtype=pl.String),
    })
    kc_links = pl.DataFrame({
        "doc_id": doc_names.gather(kc_doc),
        "topic_id": pl.Series(kc_topic).cast(pl.String),
        "kc_id": pl.Series(kc).cast(pl.String),
    })
    return pl.concat([
        topic_links.with_columns(topic_id="topic:" + pl.col("topic_id")),
        kc_links.with_columns(topic_id="topic:" + pl.col("topic_id"), kc_id="kc:" + pl.col("kc_id")),
    ]).unique(maintain_order=True)


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._running = False

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = self.process.memory_info().rss
        self.cpu_started = sum(self.process.cpu_times()[:2])
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = sum(self.process.cpu_times()[:2]) - self.cpu_started
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_size(n_docs: int, combinations: int | None, subset_size: int) -> dict:
    phases: dict[str, dict] = {}

    def record(name: str, meter: PeakRss, **extra: object) -> None:
        phases[name] = {"seconds": round(meter.seconds, 2), "cpu_seconds": round(meter.cpu_seconds, 2),
                        "peak_rss_mb": round(meter.peak / 2**20), **extra}

    with PeakRss() as meter:
        links = synthetic_links(n_docs)
    record("generate", meter, links=links.height)
    settings = GraphSettings(subset_size=subset_size)
    with PeakRss() as meter:
        graphs = build_graphs(links, settings)
    edges = sum(sum(v for k, v in g.stats().items() if k.startswith("edges_")) for g in graphs)
    record("build", meter, subsets=len(graphs), edges=edges,
           topics=sum(g.n_topics for g in graphs), kcs=sum(g.kcs.len() for g in graphs))
    # Enough epochs to reach the requested number of combinations (the default is 5).
    starts = sum(g.n_topics for g in graphs)
    if combinations:
        settings = settings.model_copy(update={"epochs": max(settings.epochs, math.ceil(combinations / starts))})
    budget = [None] * len(graphs) if not combinations else split_budget(combinations, [g.n_topics for g in graphs])
    with PeakRss() as meter:
        sampled = [sample_combinations(g, settings, b) for g, b in zip(graphs, budget)]
    record("sample", meter, combinations=sum(s.height for s in sampled), epochs=settings.epochs)
    with PeakRss() as meter:
        by_subset = assign_subsets(links, subset_size).partition_by("subset", as_dict=True)
        indexes = {subset: InvertedIndex.from_links(part) for (subset,), part in by_subset.items()}
    record("index", meter)
    with PeakRss() as meter:
        grounded = [ground(s, indexes[g.subset], settings.references, seed=settings.seed, workers=psutil.cpu_count())
                    for g, s in zip(graphs, sampled)]
    mean_jaccard = float(np.mean(pl.concat(grounded)["ref_jaccard"].list.first().drop_nulls().to_numpy()))
    record("ground", meter, mean_best_jaccard=round(mean_jaccard, 3))
    return {"documents": n_docs, "subset_size": subset_size, "phases": phases}


DOCS_PER_LINK_SHARD = 2000  # the concepts stage's shards: generation.shard_size documents


def write_link_store(root: Path, n_docs: int) -> None:
    """A store whose ``document_concepts`` holds :func:`synthetic_links`, shard by shard."""
    from synthllm.store import Store

    store = Store(str(root))
    links = synthetic_links(n_docs).with_columns(
        topic_surface=pl.col("topic_id").str.replace("topic:", ""), kc_surface=pl.col("kc_id").str.replace("kc:", ""),
        prompt_version=pl.lit("concepts-v3"), model=pl.lit("bench-model"),
        params_json=pl.lit('{"max_tokens": 512, "seed": 0, "temperature": 0.0, "top_p": 1.0}'),
        shard=pl.col("doc_id").cast(pl.Int64) // DOCS_PER_LINK_SHARD)
    for (shard,), part in links.partition_by("shard", as_dict=True, include_key=False).items():
        store.write_shard("document_concepts", f"concepts-{shard:05d}", part,
                          constants={"shard_id": f"concepts-{shard:05d}", "run_id": "bench"})


def run_stage(root: Path, n_docs: int, subset_size: int) -> dict:
    from synthllm.settings import Settings
    from synthllm.stages.graph import build_concept_graph
    from synthllm.store import Store

    store = Store(str(root))
    settings = Settings().model_copy(update={"graph": GraphSettings(subset_size=subset_size)})
    with PeakRss() as meter:
        result = build_concept_graph(store, settings, "bench", sorted(store.shard_ids("document_concepts")))
    return {"documents": n_docs, "subset_size": subset_size, "link_shards": len(store.shard_ids("document_concepts")),
            "stage": {"seconds": round(meter.seconds, 2), "cpu_seconds": round(meter.cpu_seconds, 2),
                      "peak_rss_mb": round(meter.peak / 2**20), "subsets": len(result["subsets"]),
                      "combinations": result["combinations"]}}


def stage_run(size: int, subset_size: int) -> dict:
    """Write the store in one process, run the graph task on it in another (clean memory figures)."""
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        for role in ("--write-store", "--stage-store"):
            out = subprocess.run([sys.executable, __file__, "--sizes", str(size), "--subset-size", str(subset_size),
                                  "--single", role, tmp], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


app = typer.Typer(add_completion=False)


@app.command()
def main(
    sizes: str = typer.Option("10000,100000,1000000", help="comma-separated document counts"),
    combinations: int = typer.Option(0, help="combinations to sample per size (0: 5 epochs; "
                                     "default run: 1M at the 1M size)"),
    subset_size: int = typer.Option(GraphSettings().subset_size, help="documents per graph subset"),
    stage: bool = typer.Option(False, help="the pipeline's graph task on a store, instead of the library phases"),
    single: bool = typer.Option(False, hidden=True, help="run one size in this process"),
    write_store: str = typer.Option("", hidden=True, help="with --single: write the links store there"),
    stage_store: str = typer.Option("", hidden=True, help="with --single: run the graph task on that store"),
) -> None:
    if single and write_store:
        write_link_store(Path(write_store), int(sizes))
        return
    if single:
        run = run_stage(Path(stage_store), int(sizes), subset_size) if stage_store else \
            run_size(int(sizes), combinations or None, subset_size)
        print(json.dumps(run))
        return
    results = []
    for size in (int(s) for s in sizes.split(",")):
        if stage:
            results.append(stage_run(size, subset_size))
            continue
        wanted = combinations or (1_000_000 if size >= 1_000_000 else 0)
        out = subprocess.run(
            [sys.executable, __file__, "--sizes", str(size), "--combinations", str(wanted),
             "--subset-size", str(subset_size), "--single"],
            check=True, capture_output=True, text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "graph", "cpus": psutil.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    app()
