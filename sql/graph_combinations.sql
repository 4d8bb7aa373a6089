-- Combinations sampled from one version of the concept graph ($1 = graph key), in a stable order.
SELECT combo_id
FROM concept_combinations
WHERE shard_id LIKE 'combos-' || $1 || '-%' AND len(ref_doc_ids) > 0
ORDER BY subset, epoch, combo_id;
