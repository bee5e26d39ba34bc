-- Child jobs: a parent that awaits a child suspends with waiting_for = 'job:<child id>'.
-- When the child ends (success, dead or cancelled) this trigger makes the parent runnable
-- and announces it. If the parent is still suspending, the trigger's UPDATE waits for that
-- row's lock and then sees it suspended; if the child ended first, the sidecar rechecks just
-- after the parent suspends. Either way no wake-up is lost.

CREATE FUNCTION perdure.wake_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    parent perdure.jobs%ROWTYPE;
BEGIN
    UPDATE perdure.jobs SET run_at = now(), waiting_for = NULL
    WHERE id = NEW.parent_id AND state = 'suspended' AND waiting_for = 'job:' || NEW.id
    RETURNING * INTO parent;
    IF FOUND THEN
        PERFORM pg_notify('perdure_events', json_build_object(
            'kind', 'resumed', 'id', parent.id, 'namespace', parent.namespace, 'name', parent.name,
            'attempt', parent.attempt, 'state', parent.state, 'at', extract(epoch FROM clock_timestamp()),
            'run_at', extract(epoch FROM parent.run_at))::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_wake_parent AFTER UPDATE OF state ON perdure.jobs
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL AND NEW.state IN ('success', 'dead', 'cancelled')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION perdure.wake_parent();
