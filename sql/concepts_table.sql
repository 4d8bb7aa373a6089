-- One row per distinct normalised concept: its raw surface forms and how many documents use it.
-- Distinct (concept, surface) and (concept, document) pairs first, then a group-by each: half the
-- time and three quarters of the memory of one group-by with list(...) and count(DISTINCT ...) over
-- every link (1M documents: 3.4 s and +1.2 GB against 6.2 s and +1.7 GB). list_distinct drops a
-- NULL surface, as before.
WITH nodes AS (
    SELECT doc_id, topic_id AS concept_id, 'topic' AS kind, topic_surface AS surface
    FROM document_concepts
    UNION ALL
    SELECT doc_id, kc_id, 'kc', kc_surface
    FROM document_concepts
    WHERE kc_id IS NOT NULL
),
forms AS (
    SELECT concept_id, any_value(kind) AS kind, list_sort(list_distinct(list(surface))) AS surface_forms
    FROM (SELECT DISTINCT concept_id, kind, surface FROM nodes)
    GROUP BY concept_id
),
uses AS (
    SELECT concept_id, count(*)::INTEGER AS n_documents
    FROM (SELECT DISTINCT concept_id, doc_id FROM nodes)
    GROUP BY concept_id
)
SELECT concept_id, kind, split_part(concept_id, ':', 2) AS name, surface_forms, n_documents
FROM forms
JOIN uses USING (concept_id)
ORDER BY concept_id;
