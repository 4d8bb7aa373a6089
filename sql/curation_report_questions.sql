-- Questions for the diversity report (each once). $1 curated_only: only questions no check dropped.
WITH unique_questions AS (
    SELECT question_id, level, question, doc_ids, combo_id, concepts
    FROM questions
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at, shard_id) = 1
),
dropped AS (
    SELECT DISTINCT question_id FROM curation WHERE NOT kept
)
SELECT q.*
FROM unique_questions q
WHERE NOT $1 OR q.question_id NOT IN (SELECT question_id FROM dropped)
ORDER BY q.level, q.question_id
