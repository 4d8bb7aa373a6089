-- One row per distinct normalised concept: its raw surface forms and how many documents use it.
WITH nodes AS (
    SELECT doc_id, topic_id AS concept_id, 'topic' AS kind, topic_surface AS surface
    FROM document_concepts
    UNION ALL
    SELECT doc_id, kc_id, 'kc', kc_surface
    FROM document_concepts
    WHERE kc_id IS NOT NULL
)
SELECT
    concept_id,
    any_value(kind) AS kind,
    split_part(concept_id, ':', 2) AS name,
    list_sort(list_distinct(list(surface))) AS surface_forms,
    count(DISTINCT doc_id)::INTEGER AS n_documents
FROM nodes
GROUP BY concept_id
ORDER BY concept_id;
