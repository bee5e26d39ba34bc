-- Cron schedules.
--
--   perdure.schedules  one row per schedule: a cron expression evaluated in a time zone, and
--                      the job each tick enqueues (`job`: a serialized perdure.v1.EnqueueRequest,
--                      so every enqueue option carries over and is validated like an Enqueue).
--                      Every sidecar fires due rows in one transaction each round:
--                        SELECT the unpaused rows with next_run_at <= now()
--                          FOR UPDATE SKIP LOCKED,
--                        INSERT their jobs (the enqueue statement, run_at = the tick,
--                          idempotency key schedule:<name>:<tick>),
--                        UPDATE next_run_at (the next tick), last_run_at, last_job_id;
--                      so a tick makes one job whatever the number of sidecars. `missed`
--                      says what happens to ticks that passed while no sidecar could fire them.

CREATE TABLE perdure.schedules (
    namespace    text NOT NULL,
    name         text NOT NULL,
    -- The function each tick enqueues (the template's name, kept here for listing).
    function     text NOT NULL,
    cron         text NOT NULL,
    timezone     text NOT NULL,
    job          bytea NOT NULL,
    missed       text NOT NULL DEFAULT 'once' CHECK (missed IN ('once', 'skip', 'all')),
    paused       boolean NOT NULL DEFAULT false,
    -- The next tick to fire (ignored while paused; recomputed when resumed).
    next_run_at  timestamptz NOT NULL,
    last_run_at  timestamptz,
    last_job_id  uuid,
    -- Why the last tick made no job, if it made none.
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);

-- The firing loop: due, unpaused schedules, earliest first.
CREATE INDEX schedules_due ON perdure.schedules (next_run_at) WHERE NOT paused;
