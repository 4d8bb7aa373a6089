-- Stage 1 training set of round $1: every rater row of rounds 1..$1 with the first $2 characters
-- of the rated document.
SELECT s.doc_id, s.llm_rating, left(d.text, $2) AS text
FROM document_scores AS s
JOIN documents AS d USING (doc_id)
WHERE s.classifier_score IS NULL
  AND NOT s.is_synthetic
  AND s.llm_rating IS NOT NULL
  AND s.round BETWEEN 1 AND $1
ORDER BY s.doc_id
