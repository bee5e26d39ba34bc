-- Flow control: concurrency keys, per-function concurrency and rate limits across every
-- sidecar, and cancellation policies.
--
-- A function is "controlled" once it has a row in perdure.functions: its workers declared
-- limits when they registered, or a job of it was enqueued with a concurrency key. Claims
-- of a controlled function hold an advisory lock on it for their transaction and count
-- what is in progress (and, for rate limits, what started lately) before they pick jobs;
-- claims of other functions take the lock-free path and never touch its jobs.

ALTER TABLE perdure.jobs ADD COLUMN concurrency_key text;
-- Cancellation policies. start_by: cancel the job if it has not started by then (its run
-- time plus its start_within), cleared by its first start. max_duration: cancel the job if
-- it has not ended this long after its first start (running, suspended or waiting for a
-- retry); deadline_at is set from it by the first start.
ALTER TABLE perdure.jobs ADD COLUMN start_by timestamptz;
ALTER TABLE perdure.jobs ADD COLUMN max_duration interval;
ALTER TABLE perdure.jobs ADD COLUMN deadline_at timestamptz;

-- In progress, per function and key: what concurrency limits count. A job is in progress
-- from its first start to its end: running, suspended, or pending again after an attempt
-- (waiting for its retry, or put back by a sidecar). RetryJob starts it afresh (started_at
-- is cleared).
CREATE INDEX jobs_in_progress ON perdure.jobs (namespace, name, concurrency_key)
    WHERE state IN ('running', 'suspended') OR (state = 'pending' AND started_at IS NOT NULL);
CREATE INDEX jobs_start_by ON perdure.jobs (start_by) WHERE state = 'pending' AND start_by IS NOT NULL;
CREATE INDEX jobs_deadline ON perdure.jobs (deadline_at)
    WHERE state IN ('pending', 'running', 'suspended') AND deadline_at IS NOT NULL;
-- Dead letters, listed and retried by error type.
CREATE INDEX jobs_dead ON perdure.jobs (namespace, name, (error ->> 'type')) WHERE state = 'dead';

CREATE TABLE perdure.functions (
    namespace       text NOT NULL,
    name            text NOT NULL,
    -- At most this many jobs of the function in progress at once; NULL: no limit.
    concurrency     integer CHECK (concurrency >= 1),
    -- At most this many in progress per concurrency key.
    key_concurrency integer NOT NULL DEFAULT 1 CHECK (key_concurrency >= 1),
    -- At most rate_limit starts per rate_period for the function, and key_rate_limit per
    -- key_rate_period for each key; NULL: no limit.
    rate_limit      integer CHECK (rate_limit >= 1),
    rate_period     interval,
    key_rate_limit  integer CHECK (key_rate_limit >= 1),
    key_rate_period interval,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name),
    CHECK ((rate_limit IS NULL) = (rate_period IS NULL)),
    CHECK ((key_rate_limit IS NULL) = (key_rate_period IS NULL))
);

-- Starts of rate-limited functions (every attempt, a resumption included) within their
-- longest period; the claims that hold the function's lock prune it.
CREATE TABLE perdure.rate_limited_starts (
    namespace       text NOT NULL,
    name            text NOT NULL,
    concurrency_key text,
    started_at      timestamptz NOT NULL
);
CREATE INDEX rate_limited_starts_by_function ON perdure.rate_limited_starts (namespace, name, started_at);
CREATE INDEX rate_limited_starts_by_key ON perdure.rate_limited_starts (namespace, name, concurrency_key, started_at)
    WHERE concurrency_key IS NOT NULL;

-- Limits that changed reach every sidecar at once.
CREATE FUNCTION perdure.notify_function_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('perdure_functions', json_build_object('namespace', NEW.namespace, 'name', NEW.name)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER functions_notify AFTER INSERT OR UPDATE ON perdure.functions
    FOR EACH ROW EXECUTE FUNCTION perdure.notify_function_changed();
