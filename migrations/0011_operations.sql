-- What operators look at: the workers connected to every sidecar, and recent activity per
-- function, kept small so that statistics never scan finished jobs. Also the trace context
-- a job carries from the call that enqueued it to its handler (W3C traceparent/tracestate).

ALTER TABLE perdure.jobs ADD COLUMN trace_context jsonb;

-- One row per connected worker, written by its sidecar: on connect, with every lease
-- renewal (in_flight, last_seen, expires_at), and deleted on disconnect. A sidecar that dies
-- leaves its rows behind until they expire; any sidecar's reaper deletes expired rows.
CREATE TABLE perdure.workers (
    id           text PRIMARY KEY,
    sidecar_id   text NOT NULL,
    namespace    text NOT NULL,
    worker_name  text NOT NULL,
    sdk          text NOT NULL,
    names        text[] NOT NULL,
    concurrency  integer NOT NULL,
    in_flight    integer NOT NULL DEFAULT 0,
    draining     boolean NOT NULL DEFAULT false,
    connected_at timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX workers_expiry ON perdure.workers (expires_at);

-- Activity per function and minute, summed from what each sidecar did (it adds its own counts
-- every few seconds, so a row sees one small update per sidecar, never one per job). Rows
-- older than a day are deleted.
CREATE TABLE perdure.activity (
    namespace text NOT NULL,
    name      text NOT NULL,
    minute    timestamptz NOT NULL,
    enqueued  bigint NOT NULL DEFAULT 0,
    started   bigint NOT NULL DEFAULT 0,
    succeeded bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    dead      bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, name, minute)
);
CREATE INDEX activity_minute ON perdure.activity (minute);
