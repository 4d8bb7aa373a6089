-- Stage 1 result: the reference documents, i.e. the corpus documents the last filter round kept.
-- Classifier rows only (rater rows have classifier_score NULL); cold-start examples excluded.
SELECT s.doc_id, s.classifier_score
FROM document_scores AS s
WHERE s.classifier_score IS NOT NULL
  AND s.kept
  AND NOT s.is_synthetic
  AND s.round = (SELECT max(round) FROM document_scores WHERE classifier_score IS NOT NULL)
ORDER BY s.doc_id
