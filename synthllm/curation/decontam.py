"""Decontamination: drop questions that copy an evaluation benchmark item.

Two checks per question, on normalised words (see :mod:`synthllm.curation.text`):

* ``contamination_exact``: the question's normalised text equals a benchmark item's.
* ``contamination_ngram``: the question shares a word n-gram (default 13) with a benchmark item.
  One shared n-gram is enough: a 13-word run is specific enough that sharing it means copying,
  and it still catches lightly edited items as long as 13 consecutive words survive the edit.
  Items shorter than n words have no n-gram; for them the rule is the item's whole word
  sequence appearing contiguously in the question (an n-gram with n = the item's length).
  Short MATH items ("Compute $\\dbinom{8}{4}$.") are so specific that containing one is copying it.

Benchmarks: ``builtin:gsm8k``, ``builtin:math``, ``builtin:math500``, ``builtin:svamp`` (shipped in
``synthllm/data/benchmarks``) or any JSONL / JSON / Parquet file, local or ``s3://``, as
``path[:field]`` (``field`` may join several fields with ``+``; by default ``question``, else
``problem``). Every dropped row names the item it matched as ``<benchmark>:<index>``.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from synthllm.curation.text import WordBatch, normalized_texts
from synthllm.settings import StoreSettings

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
BUILTIN_BENCHMARKS: dict[str, tuple[str, str]] = {
    "gsm8k": ("gsm8k-test.jsonl", "question"),
    "math": ("math-test.jsonl", "problem"),
    "math500": ("math500-test.jsonl", "problem"),
    "svamp": ("svamp.json", "Body+Question"),
}
DEFAULT_FIELDS = ("question", "problem")
_FIELD_SUFFIX = re.compile(r"^[\w.+-]+$")
_EXTENSIONS = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz", ".parquet")


class BenchmarkError(ValueError):
    """A benchmark spec that cannot be read."""


@dataclass(frozen=True)
class Benchmark:
    """The texts of one benchmark and the id each is reported under."""

    name: str
    source: str
    texts: list[str]

    def item_id(self, index: int) -> str:
        return f"{self.name}:{index}"


def parse_benchmark_spec(spec: str) -> tuple[str, str, str | None]:
    """``(name, path, field)`` of ``builtin:<name>`` or ``path[:field]``."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_BENCHMARKS:
            raise BenchmarkError(f"unknown builtin benchmark {spec!r}; known: {', '.join(sorted(BUILTIN_BENCHMARKS))}")
        filename, field = BUILTIN_BENCHMARKS[name]
        return name, str(BUILTIN_DIR / filename), field
    path, field = spec, None
    head, _, tail = spec.rpartition(":")
    if head and _FIELD_SUFFIX.match(tail) and not tail.startswith("//"):
        path, field = head, tail
    lowered = path.lower()
    if not lowered.endswith(_EXTENSIONS):
        raise BenchmarkError(f"benchmark {spec!r}: expected a {', '.join(_EXTENSIONS)} file, optionally followed by :field")
    name = PurePosixPath(path).name
    for extension in sorted(_EXTENSIONS, key=len, reverse=True):
        if lowered.endswith(extension):
            name = name[: -len(extension)]
            break
    return name, path, field


def _read_records(path: str, store: StoreSettings | None) -> list[dict]:
    from synthllm.ingest import storage_options

    options = storage_options(path, store) if store is not None else {}
    try:
        with fsspec.open(path, "rb", **options) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file not found: {path}") from None
    lowered = path.lower()
    if lowered.endswith(".gz"):
        data = gzip.decompress(data)
        lowered = lowered.removesuffix(".gz")
    if lowered.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    if lowered.endswith(".json") and text.lstrip().startswith("["):
        return json.loads(text)
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}:{line_no}: invalid JSON: {exc}") from None
    return records


def _record_text(record: dict, fields: Sequence[str], path: str, index: int) -> str:
    values = [record.get(f) for f in fields]
    if any(not isinstance(v, str) for v in values):
        raise BenchmarkError(f"{path} item {index}: field(s) {'+'.join(fields)} missing or not text")
    return " ".join(values)


def load_benchmark(spec: str, store: StoreSettings | None = None) -> Benchmark:
    """Read a benchmark's texts; ids are positions in the file (blank JSONL lines do not count)."""
    name, path, field = parse_benchmark_spec(spec)
    records = _read_records(path, store)
    if not records:
        raise BenchmarkError(f"benchmark {spec!r} has no items")
    if field is None:
        field = next((f for f in DEFAULT_FIELDS if f in records[0]), None)
        if field is None:
            raise BenchmarkError(
                f"benchmark {spec!r}: no {' or '.join(DEFAULT_FIELDS)} field (fields: {', '.join(records[0])}); "
                "name one as path:field"
            )
    fields = field.split("+")
    texts = [_record_text(r, fields, path, i) for i, r in enumerate(records)]
    return Benchmark(name=name, source=path, texts=texts)


class ContaminationIndex:
    """Normalised texts and n-gram hashes of every item of some benchmarks."""

    def __init__(self, benchmarks: Sequence[Benchmark], ngram: int) -> None:
        names = [b.name for b in benchmarks]
        if len(set(names)) != len(names):
            raise BenchmarkError(f"two benchmarks share a name: {names}; rename a file")
        self.ngram = ngram
        self.benchmarks = list(benchmarks)
        self.item_ids = [b.item_id(i) for b in benchmarks for i in range(len(b.texts))]
        texts = [t for b in benchmarks for t in b.texts]
        exact = pl.DataFrame({"normalized": normalized_texts(texts), "item": np.arange(len(texts))})
        # the first item with a given text is the one reported
        self._exact = exact.filter(pl.col("normalized") != "").unique("normalized", keep="first", maintain_order=True)
        words = WordBatch.from_texts(texts)
        hashes, items = words.ngram_hashes(ngram, short_texts=True)
        order = np.lexsort((items, hashes))
        self._hashes, self._items = hashes[order], items[order]
        self._distinct_hashes = pl.Series(np.unique(self._hashes)).implode()
        self._item_lengths = words.lengths
        # word counts of short items: questions are searched for n-grams of these sizes too
        self.short_lengths = sorted({int(n) for n in words.lengths if 0 < n < ngram})

    def __len__(self) -> int:
        return len(self.item_ids)

    def _contains(self, hashes: np.ndarray) -> np.ndarray:
        """Membership in the index (a hash set in Polars: ~10x faster than a binary search)."""
        return pl.Series(hashes).is_in(self._distinct_hashes).to_numpy()

    def exact_matches(self, questions: pl.Series) -> list[int | None]:
        keyed = pl.DataFrame({"normalized": normalized_texts(questions)})
        joined = keyed.join(self._exact, on="normalized", how="left", maintain_order="left")
        return joined["item"].to_list()

    def ngram_matches(self, questions: pl.Series) -> list[tuple[int, int] | None]:
        """Per question, ``(item, shared n-grams)`` of the item it shares most n-grams with, or None."""
        words = WordBatch.from_texts(questions)
        found_hashes, found_questions = [], []
        for hashes, owners in words.ngram_hashes_by_size([self.ngram, *self.short_lengths]).values():
            hit = self._contains(hashes)
            found_hashes.append(hashes[hit])
            found_questions.append(owners[hit])
        hashes = np.concatenate(found_hashes)
        owners = np.concatenate(found_questions)
        result: list[tuple[int, int] | None] = [None] * len(questions)
        if len(hashes) == 0:
            return result
        pairs = np.unique(np.stack([owners, hashes.view(np.int64)], axis=1), axis=0)
        overlap: dict[int, dict[int, int]] = {}
        for question, gram in pairs:
            gram_hash = np.int64(gram).view(np.uint64)
            left = np.searchsorted(self._hashes, gram_hash, side="left")
            right = np.searchsorted(self._hashes, gram_hash, side="right")
            counts = overlap.setdefault(int(question), {})
            for item in self._items[left:right]:
                counts[int(item)] = counts.get(int(item), 0) + 1
        for question, counts in overlap.items():
            best = min(counts, key=lambda item: (-counts[item], item))
            result[question] = (best, counts[best])
        return result

    def check(self, questions: pl.DataFrame) -> pl.DataFrame:
        """``contamination_exact`` and ``contamination_ngram`` rows for every question."""
        texts = questions["question"]
        exact = self.exact_matches(texts)
        ngram = self.ngram_matches(texts)
        ids = questions["question_id"].to_list()
        rows: list[dict] = []
        for question_id, exact_item, ngram_match in zip(ids, exact, ngram, strict=True):
            rows.append(
                {
                    "question_id": question_id,
                    "check_name": "contamination_exact",
                    "kept": exact_item is None,
                    "matched_id": None if exact_item is None else self.item_ids[exact_item],
                    "score": None if exact_item is None else 1.0,
                    "detail": None,
                }
            )
            matched_id, score, detail = None, None, None
            if ngram_match is not None:
                item, shared = ngram_match
                matched_id, score = self.item_ids[item], float(shared)
                length = int(self._item_lengths[item])
                detail = (
                    f"shares {shared} {self.ngram}-gram(s)"
                    if length >= self.ngram
                    else f"contains the whole {length}-word item"
                )
            rows.append(
                {
                    "question_id": question_id,
                    "check_name": "contamination_ngram",
                    "kept": ngram_match is None,
                    "matched_id": matched_id,
                    "score": score,
                    "detail": detail,
                }
            )
        return pl.DataFrame(
            rows,
            schema={
                "question_id": pl.String,
                "check_name": pl.String,
                "kept": pl.Boolean,
                "matched_id": pl.String,
                "score": pl.Float64,
                "detail": pl.String,
            },
        )


@lru_cache(maxsize=4)
def _cached_index(specs: tuple[str, ...], ngram: int, store_json: str) -> ContaminationIndex:
    store = StoreSettings.model_validate_json(store_json)
    return ContaminationIndex([load_benchmark(s, store) for s in specs], ngram)


def contamination_index(specs: Sequence[str], ngram: int, store: StoreSettings | None = None) -> ContaminationIndex:
    """The index for these benchmarks, built once per process (every question shard reuses it)."""
    return _cached_index(tuple(specs), ngram, (store or StoreSettings()).model_dump_json())
