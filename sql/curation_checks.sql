-- Curation checks: questions seen and dropped per check (benchmark NULL), then the questions
-- each benchmark caught (contamination checks only). $1: the question gate's version in force
-- (NULL with the gate off): rows of other gate rules or settings are not counted.
SELECT check_name, NULL::VARCHAR AS benchmark, count(*) AS questions, count(*) FILTER (WHERE NOT kept) AS dropped
FROM curation
WHERE check_name <> 'question_gate' OR prompt_version = $1
GROUP BY check_name
UNION ALL
SELECT check_name, split_part(matched_id, ':', 1) AS benchmark, NULL AS questions, count(*) AS dropped
FROM curation
WHERE NOT kept AND check_name LIKE 'contamination_%'
GROUP BY ALL
ORDER BY check_name, benchmark NULLS FIRST
