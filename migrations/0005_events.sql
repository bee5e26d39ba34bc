-- Durable events: a named signal per namespace, kept once emitted (the latest payload wins).
-- A job waiting for one is suspended with `waiting_for` set; emitting the event (or finding
-- it already there) sets its run_at to now. Both sides take the same advisory lock per event
-- name, so that neither an emit nor a new waiter can slip between the other's check and write.

CREATE TABLE perdure.events (
    namespace        text NOT NULL,
    name             text NOT NULL,
    payload          bytea NOT NULL,
    payload_encoding text NOT NULL,
    emitted_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);

ALTER TABLE perdure.jobs ADD COLUMN waiting_for text;
CREATE INDEX jobs_waiting_for ON perdure.jobs (namespace, waiting_for) WHERE state = 'suspended';
