"""Decontamination: drop questions that copy an evaluation benchmark item.

Two checks per question, on normalised words (see :mod:`synthllm.curation.text`):

* ``contamination_exact``: the question's normalised text equals a benchmark item's.
* ``contamination_ngram``: the question shares a word n-gram (default 13) with a benchmark item.
  One shared n-gram is enough: a 13-word run is specific enough that sharing it means copying,
  and it still catches lightly edited items as long as 13 consecutive words survive the edit.
  Items shorter than n words have no n-gram; for them the rule is the item's whole word
  sequence appearing contiguously in the question (an n-gram with n = the item's length).
  Short MATH items ("Compute $\\dbinom{8}{4}$.") are so specific that containing one is copying it.

Benchmarks: ``builtin:<name>`` for the sets shipped in ``synthllm/data/benchmarks`` (their README
gives each file's licence; the paper's six are the default where their licences let them ship) or
any JSONL / JSON / Parquet file, local or ``s3://``, as ``path[:field]`` (``field`` may join several
fields with ``+``; by default the first known layout the file's fields fit: ``question``,
``problem``, ``Body+Question``). Every dropped row names the item it matched as
``<benchmark>:<index>``.

The index holds 64-bit hashes only, and questions are checked a batch at a time, so memory stays
flat whatever the number of questions (bench/decontam.py: all six sets, ~160 MB over the imports).
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

from synthllm.curation.text import WordBatch
from synthllm.settings import StoreSettings

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
BUILTIN_BENCHMARKS: dict[str, tuple[str, str]] = {
    "gsm8k": ("gsm8k-test.jsonl", "question"),
    "math": ("math-test.jsonl", "problem"),
    "olympiadbench": ("olympiadbench-test.jsonl", "question"),
    "college_math": ("college_math-ccby-test.jsonl", "question"),
    "gaokao2023en": ("gaokao2023en-test.jsonl", "question"),
    "math500": ("math500-test.jsonl", "problem"),
    "svamp": ("svamp.json", "Body+Question"),
}
# Text fields of the known benchmark layouts, tried in order on a file given without :field:
# GSM8K, OlympiadBench, CollegeMath, Gaokao2023-En | MATH, MATH-500, Minerva Math | SVAMP.
KNOWN_LAYOUTS = ("question", "problem", "Body+Question")
# Questions checked per batch: bounds memory (~60 tokens x a few window arrays x 8 bytes per question).
CHECK_BATCH = 8192
# Membership prefilters, one byte per slot indexed by the top hash bits: one for the n-grams
# (2^24 slots, 16 MB: ~3% of positions pass with the six benchmarks and go on to the binary search)
# and small ones for the few short items' prefixes and whole windows (2^16 slots, 64 KB).
_PREFILTER_BITS = 24
_SHORT_PREFILTER_BITS = 16
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
        field = next((f for f in KNOWN_LAYOUTS if all(part in records[0] for part in f.split("+"))), None)
        if field is None:
            raise BenchmarkError(
                f"benchmark {spec!r}: no {' or '.join(KNOWN_LAYOUTS)} field (fields: {', '.join(records[0])}); "
                "name one as path:field"
            )
    fields = field.split("+")
    texts = [_record_text(r, fields, path, i) for i, r in enumerate(records)]
    return Benchmark(name=name, source=path, texts=texts)


class ContaminationIndex:
    """64-bit hashes of every benchmark item's normalised token sequence and token n-grams."""

    def __init__(self, benchmarks: Sequence[Benchmark], ngram: int) -> None:
        names = [b.name for b in benchmarks]
        if len(set(names)) != len(names):
            raise BenchmarkError(f"two benchmarks share a name: {names}; rename a file")
        self.ngram = ngram
        self.benchmarks = list(benchmarks)
        self.item_ids = [b.item_id(i) for b in benchmarks for i in range(len(b.texts))]
        self._item_id_series = pl.Series(self.item_ids, dtype=pl.String)
        self.item_benchmarks = np.repeat(np.arange(len(benchmarks)), [len(b.texts) for b in benchmarks])
        texts = [t for b in benchmarks for t in b.texts]
        lengths, text_hashes, hashes, items = [], [], [], []
        for start in range(0, len(texts), CHECK_BATCH):  # a batch at a time: flat peak memory
            words = WordBatch.from_texts(texts[start : start + CHECK_BATCH], maths=False)
            lengths.append(words.lengths)
            text_hashes.append(words.text_hashes())
            # n-grams, an item shorter than n as one window of all its tokens
            batch_hashes, batch_items = words.ngram_hashes(ngram, short_texts=True, mix=False)
            hashes.append(batch_hashes)
            items.append(batch_items + start)
        self._item_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        # exact: the first item with a given text is the one reported (stable sort keeps item order)
        with_words = np.flatnonzero(self._item_lengths > 0)
        all_text_hashes = np.concatenate(text_hashes)[with_words] if texts else np.zeros(0, np.uint64)
        order = np.argsort(all_text_hashes, kind="stable")
        self._text_hashes, self._text_items = all_text_hashes[order], with_words[order]
        hashes = np.concatenate(hashes) if texts else np.zeros(0, np.uint64)
        items = np.concatenate(items) if texts else np.zeros(0, np.int64)
        order = np.lexsort((items, hashes))
        self._hashes, self._items = hashes[order], items[order]
        short_windows = self._item_lengths[self._items] < ngram
        self._full_filter = _Prefilter(self._hashes[~short_windows], _PREFILTER_BITS)
        self._short_filter = _Prefilter(self._hashes[short_windows], _SHORT_PREFILTER_BITS)
        # token counts of short items: questions are searched for windows of these sizes too
        self.short_lengths = sorted({int(n) for n in self._item_lengths if 0 < n < ngram})
        self._anchor_size, self._anchor_filter = self._short_item_anchors(texts)

    def _short_item_anchors(self, texts: list[str]) -> tuple[int, _Prefilter]:
        """The first ``k`` tokens of every short item (``k``: the shortest one's length): only a
        position where such a prefix starts can start a short item, so only those positions are
        tested at the other short window sizes."""
        short_items = np.flatnonzero((self._item_lengths > 0) & (self._item_lengths < self.ngram))
        if not len(short_items):
            return 0, _Prefilter(np.zeros(0, np.uint64), _SHORT_PREFILTER_BITS)
        size = self.short_lengths[0]
        words = WordBatch.from_texts([texts[i] for i in short_items], maths=False)
        prefixes = next(combined[words.starts] for n, combined, _ in words.windows(size) if n == size)
        return size, _Prefilter(prefixes, _SHORT_PREFILTER_BITS)

    def __len__(self) -> int:
        return len(self.item_ids)

    def benchmark_of(self, item: int) -> str:
        return self.benchmarks[self.item_benchmarks[item]].name

    def _lookup(self, sorted_hashes: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``hashes`` found in ``sorted_hashes`` and where each one's run starts."""
        where = np.searchsorted(sorted_hashes, hashes)
        found = np.flatnonzero(sorted_hashes[np.minimum(where, len(sorted_hashes) - 1)] == hashes)
        return found, where[found]

    def exact_matches(self, words: WordBatch) -> np.ndarray:
        """Per question the item with the same token sequence, or -1."""
        result = np.full(len(words), -1, dtype=np.int64)
        if len(self._text_hashes):
            found, where = self._lookup(self._text_hashes, words.text_hashes())
            with_words = words.lengths[found] > 0
            result[found[with_words]] = self._text_items[where[with_words]]
        return result

    def ngram_matches(self, words: WordBatch) -> tuple[np.ndarray, np.ndarray]:
        """Per question the item it shares most n-grams with (ties: the first item) and how many
        distinct ones; -1 and 0 for a clean question."""
        best = np.full(len(words), -1, dtype=np.int64)
        shared = np.zeros(len(words), dtype=np.int64)
        if not len(self._hashes):
            return best, shared
        found_hashes, found_positions = [], []
        short_sizes, anchors = set(self.short_lengths), np.zeros(0, np.int64)
        for size, combined, tokens_left in words.windows(self.ngram):
            # prefilter positions (windows running past their text too), then keep the real ones
            if size == self._anchor_size:
                anchors = self._anchor_filter.passing(combined)
            if size == self.ngram:
                maybe = self._full_filter.passing(combined)
            elif size in short_sizes:
                maybe = anchors[self._short_filter.passing(combined[anchors])]
            else:
                continue
            maybe = maybe[tokens_left[maybe] >= size]
            hit, _ = self._lookup(self._hashes, combined[maybe])
            found_hashes.append(combined[maybe[hit]])
            found_positions.append(maybe[hit])
        hashes = np.concatenate(found_hashes)
        owners = words.owners()[np.concatenate(found_positions)]
        if not len(hashes):
            return best, shared
        pairs = pl.DataFrame({"question": owners, "gram": hashes}).unique()
        left = np.searchsorted(self._hashes, pairs["gram"].to_numpy(), side="left")
        right = np.searchsorted(self._hashes, pairs["gram"].to_numpy(), side="right")
        runs = right - left
        # every (question, item) pair an n-gram links, then the item with the most shared n-grams
        item_positions = np.repeat(left - np.cumsum(np.r_[0, runs[:-1]]), runs) + np.arange(runs.sum())
        links = pl.DataFrame(
            {"question": np.repeat(pairs["question"].to_numpy(), runs), "item": self._items[item_positions]}
        )
        counted = links.group_by("question", "item").len("shared").sort(
            ["question", "shared", "item"], descending=[False, True, False]
        ).unique("question", keep="first")
        questions = counted["question"].to_numpy()
        best[questions] = counted["item"].to_numpy()
        shared[questions] = counted["shared"].to_numpy()
        return best, shared

    def _detail(self, item: int, shared: int) -> str:
        length = int(self._item_lengths[item])
        return f"shares {shared} {self.ngram}-gram(s)" if length >= self.ngram else f"contains the whole {length}-word item"

    def check(self, questions: pl.DataFrame, batch_size: int = CHECK_BATCH) -> pl.DataFrame:
        """``contamination_exact`` and ``contamination_ngram`` rows for every question."""
        frames = [self._check_batch(questions.slice(start, batch_size)) for start in range(0, questions.height, batch_size)]
        return pl.concat(frames) if frames else pl.DataFrame(schema=_ROW_SCHEMA)

    def _rows(
        self, question_ids: pl.Series, check: str, items: np.ndarray, scores: np.ndarray, details: list[str | None]
    ) -> pl.DataFrame:
        """Rows of one check; ``items``: the matched item per question, -1 for a clean one."""
        matched = pl.Series(items >= 0)
        no_text, no_score = pl.Series([None], dtype=pl.String), pl.Series([None], dtype=pl.Float64)
        return pl.DataFrame(
            {
                "question_id": question_ids,
                "check_name": pl.repeat(check, len(items), eager=True, dtype=pl.String),
                "kept": items < 0,
                "matched_id": self._item_id_series.gather(items.clip(0)).zip_with(matched, no_text),
                "score": pl.Series(scores, dtype=pl.Float64).zip_with(matched, no_score),
                "detail": pl.Series(details, dtype=pl.String),
            },
            schema=_ROW_SCHEMA,
        )

    def _check_batch(self, questions: pl.DataFrame) -> pl.DataFrame:
        words = WordBatch.from_texts(questions["question"], maths=False)
        exact = self.exact_matches(words)
        best, shared = self.ngram_matches(words)
        details: list[str | None] = [None] * len(best)
        for question in np.flatnonzero(best >= 0).tolist():
            details[question] = self._detail(int(best[question]), int(shared[question]))
        ids = questions["question_id"]
        return pl.concat(
            [
                self._rows(ids, "contamination_exact", exact, np.ones(len(exact)), [None] * len(exact)),
                self._rows(ids, "contamination_ngram", best, shared.astype(float), details),
            ]
        )


class _Prefilter:
    """2^bits flags, set where some indexed hash has those top bits: most absent hashes fail it
    at the cost of one table read, before the binary search over the sorted hashes."""

    def __init__(self, hashes: np.ndarray, bits: int) -> None:
        self._shift = np.uint64(64 - bits)
        self._table = np.zeros(1 << bits, dtype=bool)
        self._table[hashes >> self._shift] = True

    def passing(self, hashes: np.ndarray) -> np.ndarray:
        """Positions in ``hashes`` that may be indexed."""
        return np.flatnonzero(self._table[hashes >> self._shift])


_ROW_SCHEMA = {
    "question_id": pl.String,
    "check_name": pl.String,
    "kept": pl.Boolean,
    "matched_id": pl.String,
    "score": pl.Float64,
    "detail": pl.String,
}


@lru_cache(maxsize=4)
def _cached_index(specs: tuple[str, ...], ngram: int, store_json: str) -> ContaminationIndex:
    store = StoreSettings.model_validate_json(store_json)
    return ContaminationIndex([load_benchmark(s, store) for s in specs], ngram)


def contamination_index(specs: Sequence[str], ngram: int, store: StoreSettings | None = None) -> ContaminationIndex:
    """The index for these benchmarks, built once per process (every question shard reuses it)."""
    return _cached_index(tuple(specs), ngram, (store or StoreSettings()).model_dump_json())
