-- Stage 1 counts of round $1: corpus documents the classifier scored and kept, documents the
-- rater rated, and cold-start examples the classifier kept (a check on round 0).
SELECT
    count(*) FILTER (WHERE classifier_score IS NOT NULL AND NOT is_synthetic) AS scored,
    count(*) FILTER (WHERE classifier_score IS NOT NULL AND NOT is_synthetic AND kept) AS kept,
    count(*) FILTER (WHERE classifier_score IS NULL) AS rated,
    count(*) FILTER (WHERE is_synthetic AND kept) AS examples_kept
FROM document_scores
WHERE round = $1
