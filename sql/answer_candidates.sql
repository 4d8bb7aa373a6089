-- Questions to answer: every question no gate (rules or LLM judge) turned down.
SELECT question_id
FROM questions
WHERE question_id NOT IN (
    SELECT question_id FROM curation WHERE check_name IN ('question_gate', 'llm_judge') AND NOT kept
)
ORDER BY level, question_id;
