"""Stage 1: keep the corpus documents that are good references for the target domain.

The LLM rater is the expensive judge, so it only sees samples; a cheap classifier trained on its
ratings scores every document. Rounds (the paper's method, see docs/filtering.md):

- round 0 (cold start): the LLM writes example documents of the domain (positives); random
  corpus documents are the negatives; a binary classifier's probability p maps onto the rating
  scale as ``1 + 9 p``.
- rounds 1..R: the LLM rates half a sample of documents the previous round kept and half fresh
  random ones; a regressor trained on every rating so far predicts a 1-10 rating for every
  document; documents scoring above ``threshold`` are kept.

Features are hashed word and symbol 1-2-grams (:class:`~sklearn.feature_extraction.text.HashingVectorizer`):
no vocabulary to fit or ship, constant memory, and each shard is vectorised on its own, so
scoring streams over millions of documents on CPU (the paper used StableLM-2 embeddings and a
random forest; METHOD.md allows any cheap embedding plus an sklearn-style model).

``document_scores`` holds one row per judgement: rater rows (``classifier_score`` NULL, ``kept``
= the rater's own verdict) and classifier rows (every document, ``kept`` = the filter's
decision). Shard ids start with ``r<round>-`` so one round's rows can be replaced as a whole.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import joblib
import numpy as np
import polars as pl
import pyarrow as pa

from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.stages.common import failure_from_result, make_request
from synthllm.prompts import load_prompt
from synthllm.resources import read_sql
from synthllm.runs import Failure
from synthllm.settings import FilterSettings
from synthllm.store import Store, stable_hash

if TYPE_CHECKING:  # scikit-learn takes seconds to import: only the functions that train or score load it
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.isotonic import IsotonicRegression

RATE_PROMPT = "rate_document"
WRITE_PROMPT = "write_reference_example"
# Cold-start positives cycle through these (the paper: textbook pages, exam papers, blog posts).
EXAMPLE_KINDS = ("textbook page", "exam paper", "blog post", "set of lecture notes")
EXAMPLE_LEVELS = ("middle school", "high school", "undergraduate")

# Words, LaTeX commands and single symbols: "=", "+", "^" and "\frac" carry most of the signal
# for mathematics, and the default token pattern (words of 2+ characters) drops all of them.
TOKEN_PATTERN = r"\\[A-Za-z]+|\w+|[^\w\s]"
N_FEATURES = 2**20
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0)
CALIBRATION_FOLDS = 5
SCORE_BATCH = 2048  # documents vectorised at once: bounds the sparse matrix, not the result
MODEL_DIR = ("models", "filter")


class FilterError(RuntimeError):
    """Stage 1 cannot go on: no documents, or too few usable ratings to train on."""


# --------------------------------------------------------------------------- features and model
def vectorizer() -> HashingVectorizer:
    """Stateless: the same object on every worker gives the same features."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        ngram_range=(1, 2),
        n_features=N_FEATURES,
        alternate_sign=False,
        token_pattern=TOKEN_PATTERN,
        norm="l2",
    )


def feature_config(settings: FilterSettings) -> dict[str, Any]:
    return {"tokens": TOKEN_PATTERN, "n_features": N_FEATURES, "ngrams": [1, 2], "chars": settings.rater_chars}


@dataclass
class FilterModel:
    """A trained round: scores any text on the 1-10 rating scale."""

    round: int
    kind: Literal["binary", "rating"]
    estimator: Any
    calibrator: IsotonicRegression | None  # rating models: raw prediction -> rater's scale
    rater_chars: int
    version: str
    n_train: int

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted rating in [1, 10]; the classifier sees the same prefix the rater saw."""
        hasher = vectorizer()
        scores = [np.empty(0)]
        for start in range(0, len(texts), SCORE_BATCH):
            features = hasher.transform([text[: self.rater_chars] for text in texts[start : start + SCORE_BATCH]])
            if self.kind == "binary":
                scores.append(1.0 + 9.0 * self.estimator.predict_proba(features)[:, 1])
            else:
                scores.append(self.calibrator.predict(self.estimator.predict(features)))
        return np.concatenate(scores)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        joblib.dump(self, buffer, compress=3)
        return buffer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> "FilterModel":
        model = joblib.load(io.BytesIO(data))
        if not isinstance(model, FilterModel):
            raise FilterError(f"not a filter model: {type(model).__name__}")
        return model


def _version(kind: str, round_: int, settings: FilterSettings, ids: Sequence[str], targets: Sequence[float]) -> str:
    """Same training data, features and estimators -> same version -> scoring shards are reused."""
    estimators = {"binary": "SGDClassifier(log_loss)", "rating": f"RidgeCV{RIDGE_ALPHAS}+isotonic/{CALIBRATION_FOLDS}"}
    return stable_hash(
        kind, estimators[kind], settings.seed, round_, feature_config(settings),
        list(zip(ids, map(float, targets), strict=True)),
    )


def train_cold_start(positives: dict[str, str], negatives: dict[str, str], settings: FilterSettings) -> FilterModel:
    """Round 0: LLM-written domain documents against random corpus documents (id -> text)."""
    if not positives or not negatives:
        raise FilterError(f"cold start needs positives and negatives, got {len(positives)} and {len(negatives)}")
    ids = [*positives, *negatives]
    labels = [1] * len(positives) + [0] * len(negatives)
    texts = [text[: settings.rater_chars] for text in [*positives.values(), *negatives.values()]]
    # Logistic regression fitted by SGD: scipy's L-BFGS takes seconds on 2^20 weights, SGD
    # milliseconds. Balanced: a handful of positives against a larger random sample.
    from sklearn.linear_model import SGDClassifier

    estimator = SGDClassifier(loss="log_loss", class_weight="balanced", random_state=settings.seed)
    estimator.fit(vectorizer().transform(texts), labels)
    version = _version("binary", 0, settings, ids, labels)
    return FilterModel(0, "binary", estimator, None, settings.rater_chars, version, len(ids))


def train_rating_model(ratings: pl.DataFrame, round_: int, settings: FilterSettings) -> FilterModel:
    """Rounds 1..R: regress the LLM's overall rating on the features (columns doc_id, text, llm_rating)."""
    if ratings.height < 2:
        raise FilterError(
            f"round {round_}: {ratings.height} usable ratings, need at least 2 "
            "(see the failures table, stage 'rate')"
        )
    ratings = ratings.sort("doc_id")
    features = vectorizer().transform([text[: settings.rater_chars] for text in ratings["text"].to_list()])
    targets = ratings["llm_rating"].cast(pl.Float64).to_numpy()
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    # Ridge: a linear model on sparse hashed features, alpha by efficient leave-one-out.
    estimator = RidgeCV(alphas=RIDGE_ALPHAS).fit(features, targets)
    # With few ratings and many features, predictions for unseen documents shrink toward the
    # mean rating, so a fixed threshold keeps too little. An isotonic map from out-of-fold
    # predictions to the ratings puts them back on the rater's scale.
    folds = KFold(min(CALIBRATION_FOLDS, ratings.height), shuffle=True, random_state=settings.seed)
    out_of_fold = cross_val_predict(Ridge(alpha=estimator.alpha_), features, targets, cv=folds)
    calibrator = IsotonicRegression(y_min=1.0, y_max=10.0, out_of_bounds="clip").fit(out_of_fold, targets)
    version = _version("rating", round_, settings, ratings["doc_id"].to_list(), targets)
    return FilterModel(round_, "rating", estimator, calibrator, settings.rater_chars, version, ratings.height)


def model_path(store: Store, round_: int) -> str:
    return store.path(*MODEL_DIR, f"round-{round_}.joblib")


def save_model(store: Store, model: FilterModel) -> str:
    path = model_path(store, model.round)
    store.write_bytes(path, model.to_bytes())
    return path


def load_model(store: Store, round_: int, version: str) -> FilterModel:
    """The model a scoring task was promised; a different version means the round was retrained."""
    path = model_path(store, round_)
    if not store.exists(path):
        raise FilterError(f"no filter model at {path}")
    model = FilterModel.from_bytes(store.read_bytes(path))
    if model.version != version:
        raise FilterError(f"{path} holds version {model.version}, expected {version}")
    return model


# --------------------------------------------------------------------------- LLM requests
@dataclass(frozen=True)
class ExampleSpec:
    """What one cold-start example should be; its index also seeds the sampler."""

    index: int
    kind: str
    level: str
    subtopic: str


def example_specs(settings: FilterSettings) -> list[ExampleSpec]:
    """Kinds and levels cycle; subtopics are the syllabus shuffled with ``filter.seed`` and cycled,
    so examples cover as many different subtopics as there are examples (up to the syllabus size)."""
    subtopics = list(settings.syllabus)
    random.Random(settings.seed).shuffle(subtopics)
    return [
        ExampleSpec(
            i, EXAMPLE_KINDS[i % len(EXAMPLE_KINDS)], EXAMPLE_LEVELS[(i // len(EXAMPLE_KINDS)) % len(EXAMPLE_LEVELS)],
            subtopics[i % len(subtopics)],
        )
        for i in range(settings.cold_start_positives)
    ]


def example_requests(specs: Sequence[ExampleSpec], settings: FilterSettings) -> list[ChatRequest]:
    """A distinct seed per example: repeated (kind, level) pairs still give different documents."""
    prompt = load_prompt(WRITE_PROMPT)
    sampling = settings.writer_sampling
    return [
        make_request(prompt, sampling, sampling.seed + spec.index, domain=settings.domain, kind=spec.kind,
                     level=spec.level, subtopic=spec.subtopic)
        for spec in specs
    ]


def parse_examples(
    specs: Sequence[ExampleSpec], results: Sequence[ChatResult], model_id: str
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Example documents (id, text, kind, level); truncated ones are kept: still domain text."""
    examples: dict[str, dict[str, Any]] = {}
    failures: list[Failure] = []
    for spec, result in zip(specs, results, strict=True):
        item_id = f"example-{spec.index}"
        text = result.text.strip()
        doc_id = f"synthetic-{stable_hash(text)}"
        if not result.ok:
            failures.append(failure_from_result("cold_start", item_id, result, model_id))
        elif not text:
            failures.append(
                Failure("cold_start", item_id, "empty_output", "the model wrote nothing", result.text, model_id)
            )
        elif doc_id in examples:
            failures.append(
                Failure("cold_start", item_id, "duplicate_output", f"same text as {doc_id}", text, model_id)
            )
        else:
            examples[doc_id] = {
                "doc_id": doc_id, "text": text, "kind": spec.kind, "level": spec.level, "model": model_id
            }
    return list(examples.values()), failures


def examples_path(store: Store, settings: FilterSettings, model_id: str) -> str:
    """Keyed by everything that shapes the examples, so a changed setting writes new ones."""
    key = stable_hash(
        settings.domain, settings.cold_start_positives, settings.writer_sampling.model_dump(), settings.syllabus,
        settings.seed, load_prompt(WRITE_PROMPT).version, model_id,
    )
    return store.path(*MODEL_DIR, f"cold-start-{key}.parquet")


# --------------------------------------------------------------------------- sampling (SQL)
def sample_salt(settings: FilterSettings, round_: int) -> str:
    return f"{settings.seed}:{round_}"


def rating_sample(store: Store, settings: FilterSettings, round_: int) -> list[str]:
    """Round ``round_``'s documents to rate: half kept by the previous round, the rest fresh.

    Never a document rated in an earlier round. Deterministic: ordered by a salted md5 of the id.
    """
    salt = sample_salt(settings, round_)
    want_kept = settings.rate_sample_size // 2 if round_ > 1 or settings.cold_start_positives else 0
    kept = store.query(
        read_sql("filter_sample_kept.sql"), [round_ - 1, round_, salt, want_kept], ["document_scores"]
    )["doc_id"].to_list()
    fresh = random_documents(store, settings.rate_sample_size - len(kept), salt, before_round=round_, exclude=kept)
    return kept + fresh


def random_documents(
    store: Store, count: int, salt: str, *, before_round: int, exclude: Sequence[str] = ()
) -> list[str]:
    """``count`` random document ids not rated before ``before_round`` and not in ``exclude``."""
    if count <= 0:
        return []
    frame = store.query(
        read_sql("filter_sample_fresh.sql"),
        [before_round, list(exclude), salt, count],
        ["documents", "document_scores"],
    )
    return frame["doc_id"].to_list()


def document_texts(store: Store, doc_ids: Sequence[str], chars: int) -> dict[str, str]:
    """The first ``chars`` characters of some documents (id -> text)."""
    if not doc_ids:
        return {}
    frame = store.query(read_sql("filter_document_texts.sql"), [chars, list(doc_ids)], ["documents"])
    return dict(zip(frame["doc_id"].to_list(), frame["text"].to_list(), strict=True))


def training_ratings(store: Store, round_: int, chars: int) -> pl.DataFrame:
    """Every rating of rounds 1..``round_`` with the rated text: the training set of that round."""
    return store.query(read_sql("filter_training_ratings.sql"), [round_, chars], ["documents", "document_scores"])


def round_counts(store: Store, round_: int) -> dict[str, int]:
    """Documents a round scored, kept and rated, and cold-start examples it kept."""
    frame = store.query(read_sql("filter_round_counts.sql"), [round_], ["document_scores"])
    return {name: int(value) for name, value in frame.row(0, named=True).items()}


def reference_documents(store: Store) -> pl.DataFrame:
    """Stage 1's result: doc_id and classifier_score of the documents the last round kept."""
    return store.query(read_sql("reference_documents.sql"), tables=["document_scores"])


# --------------------------------------------------------------------------- scoring
def score_key(model: FilterModel, settings: FilterSettings) -> str:
    """Names a round's scoring shards: a new model or threshold means new shards."""
    return stable_hash(model.version, settings.threshold, length=12)


def score_rows(
    model: FilterModel,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    settings: FilterSettings,
    shard_id: str,
    run_id: str,
    is_synthetic: bool = False,
    prompt_version: str | None = None,
    llm_model: str | None = None,
) -> pa.Table:
    """Classifier rows for ``document_scores``: the predicted rating and the keep decision."""
    scores = model.score(texts)
    count = len(doc_ids)
    return pa.table(
        {
            "doc_id": pa.array(doc_ids, pa.string()),
            "round": pa.array([model.round] * count, pa.int32()),
            "classifier_score": pa.array(scores, pa.float64()),
            "kept": pa.array(scores > settings.threshold, pa.bool_()),
            "is_synthetic": pa.array([is_synthetic] * count, pa.bool_()),
            "prompt_version": pa.array([prompt_version] * count, pa.string()),
            "model": pa.array([llm_model] * count, pa.string()),
            "shard_id": pa.array([shard_id] * count, pa.string()),
            "run_id": pa.array([run_id] * count, pa.string()),
        }
    )


# --------------------------------------------------------------------------- shard bookkeeping
def round_prefix(round_: int) -> str:
    return f"r{round_}-"


def rating_shard_id(round_: int, doc_ids: Sequence[str], settings: FilterSettings, model_id: str) -> str:
    key = stable_hash(
        sorted(doc_ids), settings.domain, settings.rater_chars, settings.threshold,
        settings.rater_sampling.model_dump(), load_prompt(RATE_PROMPT).version, model_id,
    )
    return f"{round_prefix(round_)}rate-{key}"


def score_shard_id(round_: int, key: str, documents_shard: str) -> str:
    return f"{round_prefix(round_)}score-{key}-{documents_shard}"


def prune_round(store: Store, round_: int, keep: set[str], kind: Literal["", "rate", "score"] = "") -> list[str]:
    """Delete a round's shards (of one ``kind``, or all) that the current run did not write or confirm.

    Those come from an older configuration; without them ``document_scores`` describes one filter
    run, so plain SQL over it is right.
    """
    prefix = round_prefix(round_) + kind
    stale = sorted(s for s in store.shard_ids("document_scores") if s.startswith(prefix) and s not in keep)
    for shard in stale:
        store.fs.rm(store.shard_path("document_scores", shard))
    return stale


def _round_of(name: str, prefix: str) -> int | None:
    head = name.removeprefix(prefix).split("-", 1)[0].split(".", 1)[0]
    return int(head) if name.startswith(prefix) and head.isdigit() else None


def prune_rounds_after(store: Store, last_round: int) -> list[str]:
    """Delete rounds (shards and models) beyond the configured last one, left by a run with more rounds."""
    stale = [
        store.shard_path("document_scores", shard)
        for shard in store.shard_ids("document_scores")
        if (_round_of(shard, "r") or 0) > last_round
    ]
    stale += [
        path for path in store.glob(store.path(*MODEL_DIR, "round-*.joblib"))
        if (_round_of(path.rsplit("/", 1)[1], "round-") or 0) > last_round
    ]
    for path in sorted(stale):
        store.fs.rm(path)
    return sorted(stale)


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
