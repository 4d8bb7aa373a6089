-- Items a stage has already dealt with for one prompt version and model: rows written, or a
-- recorded failure. $1 = stage, $2 = prompt version, $3 = model id.
-- Planning only the rest keeps finished shards untouched when the corpus grows.
SELECT doc_id AS item_id FROM document_concepts
WHERE $1 = 'concepts' AND prompt_version = $2 AND model = $3
UNION
SELECT doc_ids[1] FROM questions
WHERE (($1 = 'level1' AND level = 1) OR ($1 = 'level2' AND level = 2)) AND prompt_version = $2 AND model = $3
UNION
SELECT combo_id FROM questions
WHERE $1 = 'level3' AND level = 3 AND prompt_version = $2 AND model = $3
UNION
SELECT question_id FROM answers
WHERE $1 = 'answer' AND prompt_version = $2 AND model = $3
UNION
SELECT item_id FROM failures
WHERE stage = $1 AND (source = $3 OR source IS NULL);
