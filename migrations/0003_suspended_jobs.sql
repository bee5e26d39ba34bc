-- Durable sleep: a job may park itself in state 'suspended' until `run_at`, holding no worker.
-- The claim takes suspended jobs whose time has come as it takes pending ones, so the
-- runnable index covers both; and an attempt can end 'suspended' (it does not count).

DROP INDEX perdure.jobs_runnable;
CREATE INDEX jobs_runnable ON perdure.jobs (namespace, name, run_at, id) WHERE state IN ('pending', 'suspended');

ALTER TABLE perdure.attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE perdure.attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('running', 'succeeded', 'failed', 'timed_out', 'worker_lost', 'lease_expired',
                       'cancelled', 'released', 'suspended'));
