-- One row per question: the first step of the funnel it did not pass, and why.
-- Steps in order: question_gate (reason code), llm_judge, not_curated (dedup or, with $1
-- require_decontamination, the benchmark checks have not seen it), exact_dup, near_dup,
-- contamination (benchmark), other_check, no_answer, unverified_answer (rejection, or no final
-- answer), low_agreement (confidence below $2), exported. $3-$6: the gate's verdicts in force
-- (stages/question_gate.py, Verdicts): the rule gate's version, the LLM judge's threshold, held
-- against the stored scores of the judge in force ($5 its prompt version, $6 its model; reason
-- judge_below_threshold, as the judge writes it); NULL where that check is off, when none of its
-- rows count.
WITH unique_questions AS (
    SELECT question_id, level
    FROM questions
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at, shard_id) = 1
),
checks AS (
    SELECT question_id,
           bool_or(check_name = 'exact_dup') AS checked,
           bool_or(check_name LIKE 'contamination_%') AS decontaminated,
           min(detail) FILTER (WHERE NOT kept AND check_name = 'question_gate') AS gate_reason,
           min('judge_below_threshold') FILTER (WHERE check_name = 'llm_judge' AND score < $4) AS judge_reason,
           bool_or(NOT kept AND check_name = 'exact_dup') AS exact_dup,
           bool_or(NOT kept AND check_name = 'near_dup') AS near_dup,
           arg_min(split_part(matched_id, ':', 1), check_name)
               FILTER (WHERE NOT kept AND check_name LIKE 'contamination_%') AS benchmark,
           min(check_name) FILTER (
               WHERE NOT kept AND check_name NOT IN ('question_gate', 'llm_judge', 'exact_dup', 'near_dup')
                 AND check_name NOT LIKE 'contamination_%'
           ) AS other_check
    FROM curation
    WHERE (check_name <> 'question_gate' OR prompt_version = $3)
      AND (check_name <> 'llm_judge' OR (prompt_version = $5 AND model = $6))
    GROUP BY question_id
),
best_answers AS (
    SELECT question_id, final_answer, rejection, confidence
    FROM answers
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at DESC, model, run_id) = 1
)
SELECT q.question_id,
       q.level,
       CASE
           WHEN c.gate_reason IS NOT NULL THEN 'question_gate'
           WHEN c.judge_reason IS NOT NULL THEN 'llm_judge'
           WHEN NOT coalesce(c.checked, false) OR ($1 AND NOT coalesce(c.decontaminated, false)) THEN 'not_curated'
           WHEN c.exact_dup THEN 'exact_dup'
           WHEN c.near_dup THEN 'near_dup'
           WHEN c.benchmark IS NOT NULL THEN 'contamination'
           WHEN c.other_check IS NOT NULL THEN 'other_check'
           WHEN a.question_id IS NULL THEN 'no_answer'
           WHEN a.rejection IS NOT NULL OR a.final_answer IS NULL THEN 'unverified_answer'
           WHEN a.confidence < $2 THEN 'low_agreement'
           ELSE 'exported'
       END AS step,
       CASE
           WHEN c.gate_reason IS NOT NULL THEN c.gate_reason
           WHEN c.judge_reason IS NOT NULL THEN c.judge_reason
           WHEN NOT coalesce(c.checked, false) OR ($1 AND NOT coalesce(c.decontaminated, false)) THEN NULL
           WHEN c.exact_dup OR c.near_dup THEN NULL
           WHEN c.benchmark IS NOT NULL THEN c.benchmark
           WHEN c.other_check IS NOT NULL THEN c.other_check
           WHEN a.question_id IS NULL THEN NULL
           WHEN a.rejection IS NOT NULL THEN a.rejection
           WHEN a.final_answer IS NULL THEN 'no_final_answer'
       END AS reason
FROM unique_questions q
LEFT JOIN checks c USING (question_id)
LEFT JOIN best_answers a USING (question_id)
ORDER BY q.level, q.question_id
