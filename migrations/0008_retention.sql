-- Retention: sidecars delete finished jobs older than their retention, oldest first, in
-- bounded batches. Attempts, steps and logs go with them (ON DELETE CASCADE).

CREATE INDEX jobs_finished ON perdure.jobs (finished_at) WHERE state IN ('success', 'dead', 'cancelled');
