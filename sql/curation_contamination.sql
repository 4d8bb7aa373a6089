-- Questions dropped by the benchmark checks, per benchmark (each question once: an exact match's
-- benchmark before an n-gram match's).
WITH dropped AS (
    SELECT question_id, split_part(matched_id, ':', 1) AS benchmark
    FROM curation
    WHERE NOT kept AND check_name LIKE 'contamination_%'
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY check_name) = 1
)
SELECT benchmark, count(*) AS questions
FROM dropped
GROUP BY benchmark
ORDER BY benchmark
