-- Questions to answer: every question no gate turned down. Only the verdicts in force count
-- (stages/question_gate.py, Verdicts): $1 the rule gate's version, $2 the LLM judge's threshold,
-- held against the stored scores of the judge in force ($3 its prompt version, $4 its model);
-- NULL where that check is off.
SELECT question_id
FROM questions
WHERE question_id NOT IN (
    SELECT question_id FROM curation
    WHERE (check_name = 'question_gate' AND prompt_version = $1 AND NOT kept)
       OR (check_name = 'llm_judge' AND prompt_version = $3 AND model = $4 AND score < $2)
)
ORDER BY level, question_id;
