-- Stage 1: the first $1 characters of the documents whose ids are in $2.
SELECT d.doc_id, left(d.text, $1) AS text
FROM documents AS d
WHERE d.doc_id IN (SELECT unnest($2::VARCHAR[]))
ORDER BY d.doc_id
