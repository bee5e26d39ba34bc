-- Checkpointed steps: `ctx.step(name, fn)` records each step's outcome here, committed before
-- the handler goes on. A succeeded step is final: later attempts replay its result instead
-- of running it. A failed one is replaced when a later attempt runs it again.

CREATE TABLE perdure.steps (
    job_id          uuid NOT NULL REFERENCES perdure.jobs (id) ON DELETE CASCADE,
    name            text NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    attempt         integer NOT NULL,
    result          bytea,
    result_encoding text,
    error           jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name)
);
