-- Curation checks: questions seen and dropped per check (benchmark NULL), then the questions
-- each benchmark caught (contamination checks only). $1-$4: the gate's verdicts in force
-- (stages/question_gate.py, Verdicts): the rule gate's version, the LLM judge's threshold, held
-- against the stored scores of the judge in force ($3 its prompt version, $4 its model); NULL
-- where that check is off, when none of its rows count.
SELECT check_name, NULL::VARCHAR AS benchmark, count(*) AS questions,
       count(*) FILTER (WHERE CASE check_name WHEN 'llm_judge' THEN score < $2 ELSE NOT kept END) AS dropped
FROM curation
WHERE (check_name <> 'question_gate' OR prompt_version = $1)
  AND (check_name <> 'llm_judge' OR (prompt_version = $3 AND model = $4))
GROUP BY check_name
UNION ALL
SELECT check_name, split_part(matched_id, ':', 1) AS benchmark, NULL AS questions, count(*) AS dropped
FROM curation
WHERE NOT kept AND check_name LIKE 'contamination_%'
GROUP BY ALL
ORDER BY check_name, benchmark NULLS FIRST
