-- Stage 1: corpus documents the classifier of round $1 scored and kept.
SELECT count(*) AS scored, count(*) FILTER (WHERE kept) AS kept
FROM document_scores
WHERE round = $1 AND classifier_score IS NOT NULL AND NOT is_synthetic
