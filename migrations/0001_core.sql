-- Perdure core schema.
--
-- The model, in short:
--   perdure.jobs      one row per durable call. `state` moves
--                       pending -> running -> success
--                       running -> pending   (a failed attempt, retried at `run_at`)
--                       running -> dead      (attempts exhausted, or a non-retryable error)
--                       pending|running|suspended -> cancelled
--                       dead|cancelled -> pending (RetryJob: a fresh set of attempts)
--                     Only perdured moves rows, and always with one statement:
--                       enqueue  inserts pending rows (group commit, many per statement);
--                       claim    pending -> running for as many rows as its workers have free
--                                slots (FOR UPDATE SKIP LOCKED), attempt + 1, a lease;
--                       finish   running -> success | pending | dead, only if the row is still
--                                running under the same attempt (a late answer is a no-op);
--                       renew    pushes `lease_expires_at` for all of a sidecar's jobs at once;
--                       reclaim  any sidecar puts back running rows whose lease expired.
--   perdure.attempts  one row per attempt: who ran it, when, how it ended, the error.
--   perdure.schema_migrations  which of these files have been applied.
--
-- Every state change notifies channel `perdure_events` (trigger below) with a small
-- JSON document; sidecars LISTEN to it to wake schedulers, awaiters and watchers.

CREATE TABLE perdure.jobs (
    id               uuid PRIMARY KEY,
    namespace        text NOT NULL,
    name             text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'success', 'dead', 'cancelled', 'suspended')),
    payload          bytea NOT NULL,
    payload_encoding text NOT NULL,
    result           bytea,
    result_encoding  text,
    -- The last attempt's error: {"type", "message", "traceback", "non_retryable"}.
    error            jsonb,
    idempotency_key  text,
    parent_id        uuid,
    -- Attempts started so far; the fencing token of the current one.
    attempt          integer NOT NULL DEFAULT 0,
    -- Attempts that do not count toward max_attempts: those before the last RetryJob, and
    -- those handed back unfinished by a sidecar shutting down.
    uncounted_attempts integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    backoff          text NOT NULL CHECK (backoff IN ('exponential', 'linear', 'fixed')),
    initial_delay    interval NOT NULL,
    max_delay        interval NOT NULL,
    jitter           double precision NOT NULL CHECK (jitter >= 0 AND jitter <= 1),
    timeout          interval NOT NULL,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Set while running: who holds the job and until when.
    lease_expires_at timestamptz,
    sidecar_id       text,
    worker_id        text
);

-- Idempotency keys are unique per namespace; jobs without one stay out of the index.
CREATE UNIQUE INDEX jobs_idempotency ON perdure.jobs (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The claim: runnable rows of some functions, oldest first.
CREATE INDEX jobs_runnable ON perdure.jobs (namespace, name, run_at, id) WHERE state = 'pending';
-- The reaper: running rows by lease expiry.
CREATE INDEX jobs_leases ON perdure.jobs (lease_expires_at) WHERE state = 'running';
-- ListJobs: newest first within a namespace (ids are UUIDv7, so they sort by time).
CREATE INDEX jobs_listing ON perdure.jobs (namespace, id DESC);
CREATE INDEX jobs_parent ON perdure.jobs (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE perdure.attempts (
    job_id     uuid NOT NULL REFERENCES perdure.jobs (id) ON DELETE CASCADE,
    number     integer NOT NULL,
    worker_id  text,
    sidecar_id text,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,
    outcome    text NOT NULL DEFAULT 'running'
               CHECK (outcome IN ('running', 'succeeded', 'failed', 'timed_out', 'worker_lost',
                                  'lease_expired', 'cancelled', 'released')),
    error      jsonb,
    PRIMARY KEY (job_id, number)
);

-- One notification per state change. Kinds: enqueued, started, succeeded, attempt_failed,
-- dead, cancelled, retried. A job inserted running (started at once on a worker of the
-- enqueuing sidecar) gets one notification, "started" with "enqueued": true, which
-- listeners read as enqueued, then started. The error message is shortened to keep under
-- NOTIFY's 8 kB.
CREATE FUNCTION perdure.notify_job_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kinds text[];
    kind text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kinds := CASE WHEN NEW.state = 'running' THEN ARRAY['started'] ELSE ARRAY['enqueued'] END;
    ELSIF NEW.state = 'running' THEN
        kinds := ARRAY['started'];
    ELSIF NEW.state = 'success' THEN
        kinds := ARRAY['succeeded'];
    ELSIF NEW.state = 'dead' THEN
        kinds := ARRAY['dead'];
    ELSIF NEW.state = 'cancelled' THEN
        kinds := ARRAY['cancelled'];
    ELSIF NEW.state = 'pending' AND OLD.state = 'running' THEN
        kinds := ARRAY['attempt_failed'];
    ELSIF NEW.state = 'pending' AND OLD.state IN ('dead', 'cancelled') THEN
        kinds := ARRAY['retried'];
    ELSE
        kinds := ARRAY[NEW.state];
    END IF;
    FOREACH kind IN ARRAY kinds LOOP
        PERFORM pg_notify('perdure_events', json_build_object(
            'kind', kind,
            'id', NEW.id,
            'namespace', NEW.namespace,
            'name', NEW.name,
            'attempt', NEW.attempt,
            'state', NEW.state,
            'at', extract(epoch FROM clock_timestamp()),
            'run_at', extract(epoch FROM NEW.run_at),
            'error_type', NEW.error ->> 'type',
            'error_message', left(NEW.error ->> 'message', 2000),
            'enqueued', TG_OP = 'INSERT' AND NEW.state = 'running'
        )::text);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON perdure.jobs
    FOR EACH ROW EXECUTE FUNCTION perdure.notify_job_event();
CREATE TRIGGER jobs_notify_state AFTER UPDATE OF state ON perdure.jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION perdure.notify_job_event();
