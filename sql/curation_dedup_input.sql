-- Dedup input: each question once (a question id written by two runs counts once: the earliest),
-- only the columns the stable keep-first order and the text need.
SELECT question_id, level, created_at, question
FROM questions
QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at, shard_id) = 1
