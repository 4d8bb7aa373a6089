-- Failures by stage and reason, most frequent first.
SELECT stage, reason, count(*) AS n, any_value(detail) AS example
FROM failures
GROUP BY stage, reason
ORDER BY n DESC, stage, reason;
