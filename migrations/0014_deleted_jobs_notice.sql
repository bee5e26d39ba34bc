-- A notice when succeeded jobs are deleted (PurgeJobs, retention, or by hand).
--
-- Each sidecar keeps the rows of the jobs that just succeeded on it, for a few seconds, to
-- answer a caller who asks for the result at once (events.py). A deleted job must not be
-- answered from there: this notice tells every sidecar to drop what it keeps. One per
-- statement, and only when a deleted row had succeeded.

CREATE FUNCTION perdure.notify_jobs_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM old_rows WHERE state = 'success') THEN
        PERFORM pg_notify('perdure_deleted', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_deleted AFTER DELETE ON perdure.jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION perdure.notify_jobs_deleted();
