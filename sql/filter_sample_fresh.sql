-- Stage 1 random documents: the rating sample's fresh half and the cold-start negatives.
-- $1 this round (documents rated in earlier rounds are left out), $2 ids to leave out,
-- $3 salt (seed:round), $4 how many.
SELECT d.doc_id
FROM documents AS d
WHERE d.doc_id NOT IN (SELECT doc_id FROM document_scores WHERE classifier_score IS NULL AND round < $1)
  AND d.doc_id NOT IN (SELECT unnest($2::VARCHAR[]))
ORDER BY md5(concat($3, ':', d.doc_id)), d.doc_id
LIMIT $4
