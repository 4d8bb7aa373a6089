-- Stage 1 rating sample, first half: documents the previous round kept, never rated before.
-- $1 previous round, $2 this round, $3 salt (seed:round), $4 how many.
-- Ordered by a salted md5 of the id: a deterministic random sample that needs no id list in memory.
SELECT s.doc_id
FROM document_scores AS s
WHERE s.round = $1
  AND s.classifier_score IS NOT NULL
  AND s.kept
  AND NOT s.is_synthetic
  AND s.doc_id NOT IN (SELECT doc_id FROM document_scores WHERE classifier_score IS NULL AND round < $2)
ORDER BY md5(concat($3, ':', s.doc_id)), s.doc_id
LIMIT $4
