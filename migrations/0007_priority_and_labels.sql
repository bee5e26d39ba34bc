-- Priorities (higher first among runnable jobs of the same functions) and free-form labels.

ALTER TABLE perdure.jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE perdure.jobs ADD COLUMN labels jsonb NOT NULL DEFAULT '{}';

DROP INDEX perdure.jobs_runnable;
CREATE INDEX jobs_runnable ON perdure.jobs (namespace, name, priority DESC, run_at, id)
    WHERE state IN ('pending', 'suspended');
CREATE INDEX jobs_labels ON perdure.jobs USING gin (labels jsonb_path_ops);
