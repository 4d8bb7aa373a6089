-- One line per flow run: when it started, how it ended, and its summary.
SELECT
    run_id,
    flow,
    min(event_at) FILTER (WHERE event = 'started') AS started_at,
    max(event_at) FILTER (WHERE event <> 'started') AS ended_at,
    coalesce(max(event) FILTER (WHERE event <> 'started'), 'running or killed') AS status,
    max(summary_json) FILTER (WHERE event <> 'started') AS summary_json
FROM runs
GROUP BY run_id, flow
ORDER BY started_at DESC
LIMIT 20;
