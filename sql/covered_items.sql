-- Items a stage has already dealt with for one version (prompt or rule set) and model: a row in
-- the stage's table, or a recorded failure. The stage fills {table}, {item_column} and
-- {row_filter} (code, never user input); $1 = stage, $2 = version, $3 = model id,
-- $4 = the stage's max_tokens: a failure recorded as truncated under a smaller budget is not
-- covered, so raising max_tokens re-asks exactly those items.
SELECT {item_column} AS item_id FROM {table}
WHERE ({row_filter}) AND prompt_version = $2 AND model = $3
UNION
SELECT item_id FROM failures
WHERE stage = $1 AND prompt_version = $2 AND source = $3
  AND (reason <> 'truncated'
       OR coalesce(TRY_CAST(json_extract_string(params_json, '$.max_tokens') AS INTEGER), 0) >= $4);
