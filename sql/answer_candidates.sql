-- Questions to answer: every question no gate turned down. $1: the rule gate's version in force
-- (NULL with the gate off): verdicts of other rules or settings do not count. The LLM judge's do.
SELECT question_id
FROM questions
WHERE question_id NOT IN (
    SELECT question_id FROM curation
    WHERE NOT kept AND (check_name = 'llm_judge' OR (check_name = 'question_gate' AND prompt_version = $1))
)
ORDER BY level, question_id;
