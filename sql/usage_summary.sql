-- LLM usage per run and stage (synthllm status): requests, engine calls, cache hits, failures,
-- tokens and throughput, oldest run first. One llm_usage row is one (stage, shard) call of LLM.run.
SELECT
    u.run_id,
    min(r.started_at) AS started_at,
    u.stage,
    u.backend,
    u.model,
    count(*) AS shards,
    sum(u.requests)::BIGINT AS requests,
    sum(u.calls)::BIGINT AS calls,
    sum(u.cached)::BIGINT AS cached,
    sum(u.failures)::BIGINT AS failures,
    sum(u.prompt_tokens)::BIGINT AS prompt_tokens,
    sum(u.completion_tokens)::BIGINT AS completion_tokens,
    round(sum(u.seconds), 3) AS seconds,
    round(sum(u.completion_tokens) / nullif(sum(u.seconds), 0), 1) AS completion_tokens_per_s
FROM llm_usage AS u
LEFT JOIN (SELECT run_id, min(event_at) AS started_at FROM runs GROUP BY run_id) AS r USING (run_id)
GROUP BY u.run_id, u.stage, u.backend, u.model
ORDER BY started_at NULLS LAST, u.run_id, u.stage
