-- One row per question: what curation decided and whether it has an answer.
-- checked: dedup saw it; decontaminated: the benchmark checks saw it; dropped_by: failed checks.
WITH unique_questions AS (
    SELECT question_id, level
    FROM questions
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at, shard_id) = 1
),
checks AS (
    SELECT question_id,
           bool_or(check_name = 'exact_dup') AS checked,
           bool_or(check_name LIKE 'contamination_%') AS decontaminated,
           list(DISTINCT check_name ORDER BY check_name) FILTER (WHERE NOT kept) AS dropped_by
    FROM curation
    GROUP BY question_id
),
best_answers AS (
    SELECT question_id, confidence
    FROM answers
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at DESC, model, run_id) = 1
)
SELECT q.question_id,
       q.level,
       coalesce(c.checked, false) AS checked,
       coalesce(c.decontaminated, false) AS decontaminated,
       coalesce(c.dropped_by, []) AS dropped_by,
       a.question_id IS NOT NULL AS has_answer,
       a.confidence
FROM unique_questions q
LEFT JOIN checks c USING (question_id)
LEFT JOIN best_answers a USING (question_id)
ORDER BY q.level, q.question_id
