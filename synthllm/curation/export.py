"""Export the curated QA set as files ``datasets.load_dataset`` reads, with a dataset card.

Layout under ``<store>/exports/<name>/``::

    plain/data.parquet, plain/data.jsonl   one row per QA pair, provenance columns included
    sft/data.parquet,   sft/data.jsonl     chat format: ``messages`` = user question, assistant answer
    README.md                              dataset card: counts, models, prompts, curation applied
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from synthllm.resources import read_sql
from synthllm.settings import Settings
from synthllm.stages.question_gate import Verdicts, verdicts_in_force
from synthllm.store import Store

EXPORT_FORMATS = ("parquet", "jsonl")
LAYOUTS = ("plain", "sft")
EXPORT_BATCH_ROWS = 50_000  # rows in memory at a time, and per Parquet row group
_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CURATION_SUMMARY = "reports/curation/summary.json"


def check_export_request(name: str, formats: Sequence[str]) -> list[str]:
    if not _EXPORT_NAME.match(name):
        raise ValueError(f"export name {name!r}: use letters, digits, '.', '_', '-'")
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown or not formats:
        raise ValueError(f"export formats {list(formats)}: choose from {', '.join(EXPORT_FORMATS)}")
    return [f for f in EXPORT_FORMATS if f in formats]


def curated_dataset(store: Store, *, verdicts: Verdicts, min_agreement: float = 0.0,
                    require_decontamination: bool = True) -> pl.DataFrame:
    """Questions kept by every check, each with its answer (sql/curated_dataset.sql); of the
    gate's verdicts only ``verdicts`` count (``verdicts_in_force``)."""
    return store.query(
        read_sql("curated_dataset.sql"),
        [min_agreement, require_decontamination, *verdicts],
        tables=["questions", "answers", "curation"],
    )


def sft_records(dataset: pl.DataFrame) -> pl.DataFrame:
    """Chat/SFT rows: the question as the user turn, the full solution as the assistant turn."""
    return dataset.select(
        "question_id",
        "level",
        pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), pl.col("question").alias("content")),
            pl.struct(pl.lit("assistant").alias("role"), pl.col("answer").alias("content")),
        ).alias("messages"),
    )


# The funnel's steps in the order a question meets them (sql/curation_status.sql); each question
# is counted once, at the first step it does not pass.
FUNNEL_STEPS = {
    "question_gate": "question gate",
    "llm_judge": "LLM judge",
    "not_curated": "not yet curated (run `synthllm curate`)",
    "exact_dup": "exact duplicate",
    "near_dup": "near duplicate",
    "contamination": "benchmark contamination",
    "other_check": "other curation check",
    "no_answer": "no answer",
    "unverified_answer": "unverified answer",
    "low_agreement": "answer agreement below min_agreement",
    "exported": "exported",
}


def funnel_rows(store: Store, min_agreement: float, require_decontamination: bool,
                verdicts: Verdicts) -> pl.DataFrame:
    """Questions per (step, reason, level): where each generated question left the funnel."""
    status = store.query(
        read_sql("curation_status.sql"), [require_decontamination, min_agreement, *verdicts],
        tables=["questions", "curation", "answers"],
    )
    return status.group_by("step", "reason", "level").len("questions")


def curation_funnel(rows: pl.DataFrame) -> dict[str, int]:
    """Totals per step (``questions``: all generated), for run summaries."""
    totals = dict(rows.group_by("step").agg(pl.col("questions").sum()).iter_rows())
    return {"questions": int(rows["questions"].sum()), **{step: int(totals.get(step, 0)) for step in FUNNEL_STEPS}}


def funnel_table(rows: pl.DataFrame) -> list[str]:
    """Markdown: one row per step and reason, one column per level, then the total."""
    levels = sorted(rows["level"].unique().to_list()) if rows.height else []
    def counts(frame: pl.DataFrame) -> list[int]:
        per_level = dict(frame.group_by("level").agg(pl.col("questions").sum()).iter_rows())
        return [int(per_level.get(level, 0)) for level in levels] + [int(frame["questions"].sum())]

    table = [("generated", "", *counts(rows))]
    for step, label in FUNNEL_STEPS.items():
        of_step = rows.filter(pl.col("step") == step)
        if of_step.is_empty() and step not in ("exported",):
            continue
        reasons = sorted(r for r in of_step["reason"].unique().to_list() if r is not None)
        if not reasons:
            table.append((label, "", *counts(of_step)))
        for reason in reasons:
            table.append((label, reason, *counts(of_step.filter(pl.col("reason") == reason))))
    return _table(["step", "reason", *(f"level {level}" for level in levels), "total"], table)


def contamination_by_benchmark(store: Store, benchmarks: Sequence[str]) -> dict[str, int]:
    """Questions the benchmark checks dropped, per benchmark: every configured one, 0 included."""
    from synthllm.curation.decontam import parse_benchmark_spec

    counts = dict(store.query(read_sql("curation_contamination.sql"), tables=["curation"]).iter_rows())
    names = [parse_benchmark_spec(spec)[0] for spec in benchmarks]
    return {**dict.fromkeys(names, 0), **{name: int(n) for name, n in counts.items()}}


def check_counts(store: Store, verdicts: Verdicts) -> list[dict[str, Any]]:
    return store.query(read_sql("curation_checks.sql"), list(verdicts), tables=["curation"]).to_dicts()


class DatasetTally:
    """What the dataset card says of the exported rows, counted batch by batch as they are written."""

    COUNTED = ("level", "model", "answer_model", "prompt_version", "answer_prompt_version")

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns, self.rows = list(columns), 0
        self._counts: dict[str, Counter] = {column: Counter() for column in self.COUNTED}

    def add(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        for column, counts in self._counts.items():
            counts.update(dict(frame.group_by(column).len().iter_rows()))

    def counts(self, column: str) -> list[tuple[Any, int]]:
        """(value, rows) by value, a missing value last."""
        return sorted(self._counts[column].items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0))


class _ExportFile:
    """One export file written a batch at a time: a Parquet row group, or JSON lines, per batch."""

    def __init__(self, handle: BinaryIO, file_format: str, schema: pa.Schema) -> None:
        self.handle, self.schema = handle, schema
        self.parquet = pq.ParquetWriter(handle, schema, compression="zstd") if file_format == "parquet" else None

    def write(self, frame: pl.DataFrame) -> None:
        if self.parquet is not None:
            self.parquet.write_table(frame.to_arrow().cast(self.schema))
        else:
            self.handle.write(frame.write_ndjson().encode("utf-8"))

    def finish(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


def data_path(store: Store, name: str, layout: str, file_format: str) -> str:
    return store.path("exports", name, layout, f"data.{file_format}")


def write_dataset(store: Store, name: str, formats: Sequence[str], batches: pa.RecordBatchReader) -> DatasetTally:
    """Every layout in every format, from one pass over the curated rows: memory holds a batch,
    not the dataset (the paper's 7.4M QA pairs are tens of GB of JSON lines). Each file appears
    whole, and only when all were written (an export that fails leaves the last one in place)."""
    plain_empty = pl.from_arrow(batches.schema.empty_table())
    schemas = {"plain": plain_empty.to_arrow().schema, "sft": sft_records(plain_empty).to_arrow().schema}
    tally = DatasetTally(plain_empty.columns)
    with ExitStack() as stack:
        files = {}
        for layout in LAYOUTS:
            for file_format in formats:
                handle = stack.enter_context(store.open_atomic(data_path(store, name, layout, file_format)))
                files[layout, file_format] = _ExportFile(handle, file_format, schemas[layout])
                stack.callback(files[layout, file_format].finish)  # before its file is kept or thrown away
        for batch in batches:
            plain = pl.from_arrow(batch)
            tally.add(plain)
            frames = {"plain": plain, "sft": sft_records(plain)}
            for (layout, _), file in files.items():
                file.write(frames[layout])
    return tally


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("–" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |"
              for row in rows]
    return lines


def dataset_card(
    name: str,
    dataset: DatasetTally,
    formats: Sequence[str],
    funnel: pl.DataFrame,
    checks: list[dict[str, Any]],
    curation_run: dict[str, Any],
    contamination: dict[str, int],
) -> str:
    """README.md with Hugging Face front matter (one config per layout) and the dataset's facts."""
    main_format = formats[0]
    front = ["---", "configs:"]
    for layout in LAYOUTS:
        front += [f"- config_name: {layout}", f"  data_files: {layout}/data.{main_format}"]
        if layout == "plain":
            front.append("  default: true")
    front += ["---", ""]
    per_level = dataset.counts("level")
    settings = curation_run.get("settings", {})
    lines = [
        f"# {name}",
        "",
        "Synthetic question-answer pairs generated with synthllm (the SynthLLM method, arXiv 2503.19551):",
        "level 1 questions extracted from one reference document, level 2 recombining one document's",
        "concepts, level 3 combining concepts sampled from a concept graph across documents.",
        "",
        f"**{dataset.rows:,} QA pairs.** Files: " + ", ".join(f"`{l}/data.{f}`" for l in LAYOUTS for f in formats) + ".",
        "",
        "```python",
        "from datasets import load_dataset",
        f'plain = load_dataset("{main_format if main_format == "parquet" else "json"}", '
        f'data_files="{name}/plain/data.{main_format}", split="train")',
        "```",
        "",
        "## Levels",
        "",
        *_table(["level", "QA pairs"], per_level),
        "",
        "## Models and prompt versions",
        "",
        *_table(["question model", "QA pairs"], dataset.counts("model")),
        "",
        *_table(["answer model", "QA pairs"], dataset.counts("answer_model")),
        "",
        *_table(["question prompt", "QA pairs"], dataset.counts("prompt_version")),
        "",
        *_table(["answer prompt", "QA pairs"], dataset.counts("answer_prompt_version")),
        "",
        "## Filters applied",
        "",
        "Each generated question is counted once, at the first step it did not pass (question gate",
        "reason codes, the benchmark it copies, why its answer was not verified).",
        "",
        *funnel_table(funnel),
        "",
        "Curation checks (a question can fail several):",
        "",
        *_table(
            ["check", "questions checked", "dropped"],
            [(c["check_name"], c["questions"], c["dropped"]) for c in checks if c["benchmark"] is None],
        ),
        "",
        "## Contamination checks",
        "",
        f"Benchmarks: {', '.join(f'`{b}`' for b in settings.get('benchmarks', [])) or 'none'}; "
        f"normalised exact match and {settings.get('ngram', '?')}-token n-gram overlap "
        "(items shorter than n tokens: the whole item contained in the question).",
        "",
        *_table(["benchmark", "questions dropped"], list(contamination.items()) or [("–", 0)]),
        "",
        f"Near-duplicates: MinHash ({settings.get('minhash_num_perm', '?')} permutations, "
        f"{settings.get('minhash_shingle', '?')}-word shingles), Jaccard >= {settings.get('minhash_threshold', '?')}; "
        "the first question in (level, hash of the normalised text, question_id) order is kept, "
        "so the choice depends on the questions only.",
        "",
        f"Curation run: `{curation_run.get('run_id', 'unknown')}`.",
        "",
        "## Columns",
        "",
        "plain: " + ", ".join(f"`{c}`" for c in dataset.columns) + ".",
        "sft: `question_id`, `level`, `messages` (`[{role: user, content: question}, {role: assistant, content: answer}]`).",
        "",
        "Answers are model-generated; only answers with a final answer that passed verification are exported;",
        "`confidence` is the self-consistency agreement, `votes` the samples that agreed.",
        "The licence of the source corpus applies to text drawn from it.",
        "",
    ]
    return "\n".join(front + lines)


def export_dataset(store: Store, settings: Settings, name: str, formats: Sequence[str] = EXPORT_FORMATS) -> dict[str, Any]:
    """Write the curated set under ``exports/<name>/``; files of formats not asked for this time are removed."""
    formats = check_export_request(name, formats)
    min_agreement = settings.answer.min_agreement
    require_decontamination = bool(settings.curation.benchmarks)
    verdicts = verdicts_in_force(settings, store)
    with store.query_batches(read_sql("curated_dataset.sql"), [min_agreement, require_decontamination, *verdicts],
                             tables=["questions", "answers", "curation"], batch_rows=EXPORT_BATCH_ROWS) as batches:
        tally = write_dataset(store, name, formats, batches)
    written = [data_path(store, name, layout, file_format) for layout in LAYOUTS for file_format in formats]
    for layout in LAYOUTS:
        for file_format in sorted(set(EXPORT_FORMATS) - set(formats)):
            if store.exists(path := data_path(store, name, layout, file_format)):
                store.fs.rm(path)
    curation_run = json.loads(store.read_bytes(store.path(CURATION_SUMMARY))) if store.exists(store.path(CURATION_SUMMARY)) else {}
    if not curation_run:
        curation_run = {"settings": settings.curation.model_dump(mode="json")}
    funnel = funnel_rows(store, min_agreement, require_decontamination, verdicts)
    contamination = contamination_by_benchmark(store, curation_run["settings"].get("benchmarks", []))
    card = dataset_card(name, tally, formats, funnel, check_counts(store, verdicts), curation_run, contamination)
    card_path = store.path("exports", name, "README.md")
    store.write_text(card_path, card)
    return {
        "name": name,
        "rows": tally.rows,
        "per_level": {str(level): n for level, n in tally.counts("level")},
        "funnel": curation_funnel(funnel),
        "funnel_by_level": funnel.sort("step", "reason", "level").to_dicts(),
        "contamination_by_benchmark": contamination,
        "files": [*written, card_path],
    }
