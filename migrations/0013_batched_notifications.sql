-- Job events, a few notifications per statement instead of one per row.
--
-- A claim, a finish or a batch enqueue changes hundreds of rows in one statement. A trigger
-- per row built and sent a notification for each, and every sidecar read each on its own.
-- These statement triggers send the same events (the kinds and fields of 0001_core.sql)
-- packed in JSON arrays, each notification well under NOTIFY's 8000 bytes. Other
-- notifications (progress, logs, resumed) stay single JSON objects; listeners read both.
--
-- Transition tables cannot go with a column list (UPDATE OF state): the update trigger sees
-- every update of jobs and keeps the rows whose state changed. An error message is cut to
-- 1000 characters (at most 4000 bytes), so that one event always fits.

DROP TRIGGER jobs_notify_insert ON perdure.jobs;
DROP TRIGGER jobs_notify_state ON perdure.jobs;
DROP FUNCTION perdure.notify_job_event();

-- One event, as JSON text: job `j` entered its state from `old_state` (NULL: inserted).
CREATE FUNCTION perdure.job_event(old_state text, j perdure.jobs) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT json_build_object(
        'kind', CASE
            WHEN old_state IS NULL THEN CASE WHEN j.state = 'running' THEN 'started' ELSE 'enqueued' END
            WHEN j.state = 'running' THEN 'started'
            WHEN j.state = 'success' THEN 'succeeded'
            WHEN j.state = 'pending' AND old_state = 'running' THEN 'attempt_failed'
            WHEN j.state = 'pending' AND old_state IN ('dead', 'cancelled') THEN 'retried'
            ELSE j.state END,  -- dead, cancelled, suspended, pending
        'id', j.id,
        'namespace', j.namespace,
        'name', j.name,
        'attempt', j.attempt,
        'state', j.state,
        'at', extract(epoch FROM clock_timestamp()),
        'run_at', extract(epoch FROM j.run_at),
        'error_type', j.error ->> 'type',
        'error_message', left(j.error ->> 'message', 1000),
        'enqueued', old_state IS NULL AND j.state = 'running'
    )::text
$$;

-- Send events in order, as JSON arrays: a notification takes the events that start within
-- its first 3500 bytes, so it ends before 3500 bytes and one event.
CREATE FUNCTION perdure.notify_job_events(events text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOR payload IN
        SELECT '[' || string_agg(event, ',' ORDER BY n) || ']'
        FROM (SELECT event, n, sum(octet_length(event) + 1) OVER (ORDER BY n) - octet_length(event) - 1 AS before
              FROM unnest(events) WITH ORDINALITY AS e(event, n)) AS placed
        GROUP BY before / 3500
        ORDER BY before / 3500
    LOOP
        PERFORM pg_notify('perdure_events', payload);
    END LOOP;
END;
$$;

CREATE FUNCTION perdure.notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM perdure.notify_job_events(array(SELECT perdure.job_event(NULL, n) FROM new_rows n));
    RETURN NULL;
END;
$$;

CREATE FUNCTION perdure.notify_jobs_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM perdure.notify_job_events(array(
        SELECT perdure.job_event(o.state, n) FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.state IS DISTINCT FROM n.state));
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON perdure.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION perdure.notify_jobs_inserted();
CREATE TRIGGER jobs_notify_state AFTER UPDATE ON perdure.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION perdure.notify_jobs_updated();
