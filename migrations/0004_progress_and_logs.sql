-- What a handler says while it runs: its last progress (on the job row) and its log records.
-- Both are written by perdured from the Work stream, and NOTIFY watchers as they land.

ALTER TABLE perdure.jobs ADD COLUMN progress jsonb;  -- {"current", "total", "message", "at"}

CREATE TABLE perdure.job_logs (
    job_id  uuid NOT NULL REFERENCES perdure.jobs (id) ON DELETE CASCADE,
    seq     bigint GENERATED ALWAYS AS IDENTITY,
    attempt integer NOT NULL,
    level   text NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error')),
    message text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);
