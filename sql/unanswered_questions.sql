-- Questions with no stored answer and no recorded answer failure, in a stable order (a rerun
-- plans the same shards and makes no LLM call for work already stored or already given up on).
SELECT q.question_id
FROM questions q
ANTI JOIN answers a ON a.question_id = q.question_id
ANTI JOIN (SELECT item_id FROM failures WHERE stage = 'answer') f ON f.item_id = q.question_id
ORDER BY q.level, q.question_id;
