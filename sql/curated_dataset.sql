-- The curated QA set: questions kept by every curation check that ran on them, joined with their
-- verified answer (the latest when a question was answered more than once). An answer with a
-- rejection or without a final answer is unverified and left out.
-- $1 min_agreement: answers with a lower self-consistency confidence are left out.
-- $2 require_decontamination: only questions the benchmark checks have seen.
-- $3-$6 the gate's verdicts in force (stages/question_gate.py, Verdicts): the rule gate's version,
--    the LLM judge's threshold, held against the stored scores of the judge in force ($5 its
--    prompt version, $6 its model); NULL where that check is off, when none of its rows count.
WITH unique_questions AS (
    SELECT *
    FROM questions
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at, shard_id) = 1
),
checks AS (
    SELECT question_id,
           bool_and(CASE check_name WHEN 'llm_judge' THEN score >= $4 ELSE kept END) AS kept,
           bool_or(check_name = 'exact_dup') AS checked,
           bool_or(check_name LIKE 'contamination_%') AS decontaminated
    FROM curation
    WHERE (check_name <> 'question_gate' OR prompt_version = $3)
      AND (check_name <> 'llm_judge' OR (prompt_version = $5 AND model = $6))
    GROUP BY question_id
),
best_answers AS (
    SELECT *
    FROM answers
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY created_at DESC, model, run_id) = 1
)
SELECT q.question_id,
       q.question,
       a.answer,
       a.final_answer,
       a.normalized_answer,
       q.level,
       a.confidence,
       a.votes,
       a.n_samples,
       q.doc_ids,
       q.combo_id,
       q.concepts,
       q.school_level,
       q.is_original,
       q.model,
       a.model AS answer_model,
       q.prompt_version,
       a.prompt_version AS answer_prompt_version,
       q.run_id,
       a.run_id AS answer_run_id
FROM unique_questions q
JOIN checks c USING (question_id)
JOIN best_answers a USING (question_id)
WHERE c.kept
  AND c.checked
  AND (c.decontaminated OR NOT $2)
  AND a.final_answer IS NOT NULL
  AND a.rejection IS NULL
  AND (a.confidence IS NULL OR a.confidence >= $1)
ORDER BY q.level, q.question_id
