-- Dedup input: each question once (a question id written by two runs counts once: the earliest),
-- only the columns the content order and the text need. Questions the question gate (its
-- version in force, $1; NULL with the gate off) or the LLM judge dropped are left out: a junk
-- question must not be kept in place of a good duplicate.
SELECT question_id, level, question
FROM questions
WHERE question_id NOT IN (
    SELECT question_id FROM curation
    WHERE NOT kept AND (check_name = 'llm_judge' OR (check_name = 'question_gate' AND prompt_version = $1))
)
QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at, shard_id) = 1
