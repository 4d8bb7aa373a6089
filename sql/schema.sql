-- synthllm tables. This file is the one schema: shards are cast to these types before they are
-- written, and an empty table stands in for any table that has no shard yet.
-- Large row sets live as Parquet shards under <store>/tables/<table>/<shard>.parquet;
-- DuckDB views over them are the catalog (see synthllm/store.py).
-- Provenance on every row: run_id, the shard that wrote it, and for generated rows the source
-- ids, prompt version, model and sampling params.

CREATE TABLE runs (
    run_id       VARCHAR NOT NULL,  -- one id per flow run (the Prefect flow-run id when there is one)
    flow         VARCHAR NOT NULL,
    event        VARCHAR NOT NULL,  -- started | finished | failed
    event_at     TIMESTAMP NOT NULL,
    params_json  VARCHAR,           -- settings and flow parameters (secrets removed)
    summary_json VARCHAR            -- counts written by the run
);

CREATE TABLE failures (
    stage        VARCHAR NOT NULL,  -- ingest | rate | concepts | level1 | level2 | level3 | answer | ...
    item_id      VARCHAR,           -- the document / question / combination that failed
    reason       VARCHAR NOT NULL,  -- machine-readable reason (invalid_json, empty_text, truncated, ...)
    detail       VARCHAR,           -- human-readable explanation
    raw          VARCHAR,           -- the raw input record or model output, kept whole
    source       VARCHAR,           -- source URI (ingest) or model id (generation)
    prompt_version VARCHAR,         -- the stage's prompt (or rule set) version: coverage is per version
    params_json  VARCHAR,           -- sampling params of the failed request (max_tokens decides re-asks)
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

CREATE TABLE documents (
    doc_id       VARCHAR NOT NULL,  -- the source id (id field) or, without one, the content hash
    text         VARCHAR NOT NULL,  -- Unicode-normalised text
    content_hash VARCHAR NOT NULL,  -- sha256 of the normalised text: exact dedup key
    n_chars      INTEGER NOT NULL,
    n_tokens_est INTEGER NOT NULL,  -- ~4 characters per token
    source       VARCHAR NOT NULL,  -- source URI
    line_no      BIGINT,            -- record number in the source
    meta_json    VARCHAR,           -- the record's other fields
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL,
    ingested_at  TIMESTAMP NOT NULL
);

-- Stage 1: reference filtering. One row per judgement of a document in a round: rater rows
-- (llm_rating set, classifier_score NULL, kept = the rater's verdict) for the rated sample, and
-- classifier rows (classifier_score set, kept = the filter's decision) for every document.
-- Shard ids start with r<round>-. The kept set: sql/reference_documents.sql.
CREATE TABLE document_scores (
    doc_id       VARCHAR NOT NULL,
    round        INTEGER NOT NULL,
    llm_rating   DOUBLE,            -- 1-10 from the LLM rater (sampled documents only)
    relevance    DOUBLE,
    clarity      DOUBLE,
    language     DOUBLE,
    classifier_score DOUBLE,        -- classifier's predicted rating (every document)
    kept         BOOLEAN NOT NULL,
    is_synthetic BOOLEAN NOT NULL,  -- a cold-start positive written by the LLM
    prompt_version VARCHAR,
    model        VARCHAR,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

-- Concepts: one row per distinct normalised topic or key concept.
CREATE TABLE concepts (
    concept_id   VARCHAR NOT NULL,  -- kind:normalised form
    kind         VARCHAR NOT NULL,  -- topic | kc
    name         VARCHAR NOT NULL,  -- normalised form
    surface_forms VARCHAR[],        -- raw strings seen
    n_documents  INTEGER NOT NULL,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

-- Per-document concept extraction: one row per (document, topic, key concept) link.
-- A topic link has kc_id NULL.
CREATE TABLE document_concepts (
    doc_id       VARCHAR NOT NULL,
    topic_id     VARCHAR NOT NULL,
    kc_id        VARCHAR,
    topic_surface VARCHAR NOT NULL,
    kc_surface   VARCHAR,
    education_level VARCHAR,
    subject      VARCHAR,
    prompt_version VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    params_json  VARCHAR,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

CREATE TABLE concept_edges (
    subset       INTEGER NOT NULL,  -- graph subset (per-subset graphs on large corpora)
    kind         VARCHAR NOT NULL,  -- topic-topic | topic-kc | kc-kc
    src          VARCHAR NOT NULL,
    dst          VARCHAR NOT NULL,
    count        INTEGER NOT NULL,  -- documents in which both occur
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

CREATE TABLE concept_combinations (
    combo_id     VARCHAR NOT NULL,
    subset       INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    start_topic  VARCHAR NOT NULL,
    walk         VARCHAR[] NOT NULL, -- visited nodes in order
    topics       VARCHAR[] NOT NULL,
    kcs          VARCHAR[] NOT NULL,
    kc_topics    VARCHAR[],          -- per KC (aligned with kcs): the topic it is paired with in prompts
    ref_doc_ids  VARCHAR[] NOT NULL, -- grounding documents, best first
    ref_jaccard  DOUBLE[] NOT NULL,
    seed         BIGINT NOT NULL,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

CREATE TABLE questions (
    question_id  VARCHAR NOT NULL,  -- hash of (level, source, prompt version, model, params, index)
    level        INTEGER NOT NULL,
    question     VARCHAR NOT NULL,
    doc_ids      VARCHAR[] NOT NULL, -- source / reference documents
    combo_id     VARCHAR,            -- level 3
    concepts     VARCHAR[],          -- concepts the model says it used (levels 2-3)
    is_original  BOOLEAN,            -- level 1: taken from the document vs new
    school_level VARCHAR,
    prompt_version VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    params_json  VARCHAR NOT NULL,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

CREATE TABLE answers (
    question_id  VARCHAR NOT NULL,
    answer       VARCHAR NOT NULL,  -- the chosen full solution
    final_answer VARCHAR,           -- the winning final answer as written, units kept (synthllm/answers.py)
    normalized_answer VARCHAR,      -- its comparable form: "0.5" for \dfrac{1}{2}, "12" for 12 cm; NULL: none
    votes        INTEGER,           -- samples whose final answer is equivalent to it (math-verify)
    confidence   DOUBLE,            -- votes / samples asked (truncated and empty samples count as asked)
    rejection    VARCHAR,           -- NULL: accepted; no_output | truncated | no_final_answer | low_confidence | verify_timeout
    n_samples    INTEGER NOT NULL,
    prompt_version VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    params_json  VARCHAR NOT NULL,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

-- Curation decisions: one row per question per check.
CREATE TABLE curation (
    question_id  VARCHAR NOT NULL,
    check_name   VARCHAR NOT NULL,  -- question_gate | llm_judge | exact_dup | near_dup | contamination_exact | contamination_ngram | low_agreement
    kept         BOOLEAN NOT NULL,
    matched_id   VARCHAR,           -- the kept duplicate, or the benchmark item (benchmark:id)
    score        DOUBLE,            -- Jaccard estimate / overlapping n-grams
    detail       VARCHAR,           -- question_gate / llm_judge: the reason code
    prompt_version VARCHAR,         -- question_gate / llm_judge: rule set or prompt version (coverage)
    model        VARCHAR,           -- question_gate / llm_judge: "rules" or the judge's model id
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

-- Token accounting per stage, shard and model.
CREATE TABLE llm_usage (
    stage        VARCHAR NOT NULL,
    backend      VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    requests     BIGINT NOT NULL,   -- requests asked of this layer
    calls        BIGINT NOT NULL,   -- engine calls made (retries included, cache hits excluded)
    cached       BIGINT NOT NULL,   -- requests answered by the response cache
    failures     BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    seconds      DOUBLE NOT NULL,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);

-- Scaling-law inputs: a team's measured training results (synthllm scaling add / fit).
CREATE TABLE training_results (
    series       VARCHAR NOT NULL,  -- one curve per model / data mix
    tokens       DOUBLE NOT NULL,   -- synthetic training tokens D
    metric       DOUBLE NOT NULL,   -- error rate or loss L
    metric_name  VARCHAR,
    notes        VARCHAR,
    shard_id     VARCHAR NOT NULL,
    run_id       VARCHAR NOT NULL
);
