-- Documents whose concept extraction gave at least two key concepts (level 2 needs them).
SELECT doc_id
FROM document_concepts
WHERE kc_id IS NOT NULL
GROUP BY doc_id
HAVING count(DISTINCT kc_id) >= 2;
