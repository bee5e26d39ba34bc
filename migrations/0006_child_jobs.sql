-- Child jobs: a parent that awaits a child suspends with waiting_for = 'job:<child id>'.
-- When the child ends (success, dead or cancelled) this trigger makes the parent runnable
-- and announces it; just after a parent suspends, the sidecar checks whether the child has
-- ended already. Both take the advisory lock of the event 'job:<child id>' (see 0005) before
-- they look, so that one of them always sees the other's committed work: no lost wake-up.

CREATE FUNCTION perdure.wake_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    parent perdure.jobs%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(NEW.namespace || chr(31) || 'job:' || NEW.id, 7));
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
