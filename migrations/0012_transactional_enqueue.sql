-- Transactional enqueue: an application enqueues a job inside its own transaction, from any
-- language, with plain SQL:
--
--     BEGIN;
--     INSERT INTO orders ...;
--     SELECT perdure.enqueue('orders:confirm', args => '["o-42"]', options => '{"max_attempts": 5}');
--     COMMIT;
--
-- The job exists if and only if the transaction commits; its insert notifies the sidecars
-- like any other (on commit), and a worker of the function runs it. The defaults are the
-- sidecar's (3 attempts, exponential backoff from 1 s to 60 s with 0.1 jitter, a 30 s
-- timeout per attempt); a test keeps them equal.

-- UUID version 7 (RFC 9562), like the sidecar's ids: 48 bits of Unix milliseconds, then
-- random bits, with the version and variant set.
CREATE FUNCTION perdure.uuid7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Options (all optional), as in EnqueueRequest, times in seconds:
--   idempotency_key, max_attempts, backoff (exponential | linear | fixed), initial_delay,
--   max_delay, jitter, timeout, delay, run_at (ISO 8601 with a zone), priority, labels
--   (an object of strings), concurrency_key, start_within, max_duration.
-- Returns the job's id; with an idempotency key that exists already in the namespace, the
-- existing job's id (nothing new is inserted).
CREATE FUNCTION perdure.enqueue(
    name      text,
    args      jsonb DEFAULT '[]',
    kwargs    jsonb DEFAULT '{}',
    options   jsonb DEFAULT '{}',
    namespace text DEFAULT 'default'
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    known    constant text[] := ARRAY['idempotency_key', 'max_attempts', 'backoff', 'initial_delay', 'max_delay',
                                      'jitter', 'timeout', 'delay', 'run_at', 'priority', 'labels',
                                      'concurrency_key', 'start_within', 'max_duration'];
    unknown  text;
    job_id   uuid := perdure.uuid7();
    key      text := options ->> 'idempotency_key';
    ckey     text := options ->> 'concurrency_key';
    runs_at  timestamptz;
    existing uuid;
BEGIN
    IF name IS NULL OR btrim(name) = '' OR length(name) > 255 THEN
        RAISE EXCEPTION 'perdure.enqueue: name must be 1 to 255 characters, got %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF namespace IS NULL OR namespace !~ '^[A-Za-z0-9._:-]{1,128}$' THEN
        RAISE EXCEPTION 'perdure.enqueue: namespace must be 1 to 128 letters, digits or . _ : -, got %',
            coalesce(quote_literal(namespace), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(args) IS DISTINCT FROM 'array' OR jsonb_typeof(kwargs) IS DISTINCT FROM 'object'
       OR jsonb_typeof(options) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'perdure.enqueue: args must be a JSON array, kwargs and options JSON objects'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT k INTO unknown FROM jsonb_object_keys(options) AS k WHERE k <> ALL(known) LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'perdure.enqueue: unknown option %; expected some of %', quote_literal(unknown),
            array_to_string(known, ', ') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF options ? 'run_at' AND options ? 'delay' THEN
        RAISE EXCEPTION 'perdure.enqueue: give either run_at or delay, not both' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce((options ->> 'max_attempts')::int, 3) < 1
       OR coalesce(options ->> 'backoff', 'exponential') NOT IN ('exponential', 'linear', 'fixed')
       OR coalesce((options ->> 'jitter')::float8, 0.1) NOT BETWEEN 0 AND 1
       OR coalesce((options ->> 'priority')::int, 0) NOT BETWEEN -1000 AND 1000
       OR coalesce((options ->> 'timeout')::float8, 30) <= 0
       OR coalesce((options ->> 'delay')::float8, 0) < 0
       OR coalesce((options ->> 'initial_delay')::float8, 1) < 0
       OR coalesce((options ->> 'max_delay')::float8, 60) < coalesce((options ->> 'initial_delay')::float8, 1)
       OR coalesce((options ->> 'start_within')::float8, 1) <= 0
       OR coalesce((options ->> 'max_duration')::float8, 1) <= 0
       OR (options ? 'labels' AND jsonb_typeof(options -> 'labels') IS DISTINCT FROM 'object') THEN
        RAISE EXCEPTION 'perdure.enqueue: bad options %', options
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'max_attempts >= 1; backoff exponential, linear or fixed; jitter 0..1; priority -1000..1000; '
                         'timeout, start_within, max_duration > 0; delays >= 0 and max_delay >= initial_delay; '
                         'labels an object of strings';
    END IF;
    runs_at := coalesce((options ->> 'run_at')::timestamptz,
                        now() + make_interval(secs => coalesce((options ->> 'delay')::float8, 0)));

    IF ckey IS NOT NULL THEN  -- a key puts the function under flow control (0009_flow_control.sql)
        INSERT INTO perdure.functions (namespace, name) VALUES (enqueue.namespace, enqueue.name)
        ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO perdure.jobs (id, namespace, name, payload, payload_encoding, idempotency_key, max_attempts, backoff,
                              initial_delay, max_delay, jitter, timeout, run_at, priority, labels, concurrency_key,
                              start_by, max_duration)
    VALUES (job_id, enqueue.namespace, enqueue.name,
            convert_to(jsonb_build_object('args', args, 'kwargs', kwargs)::text, 'UTF8'), 'json', key,
            coalesce((options ->> 'max_attempts')::int, 3),
            coalesce(options ->> 'backoff', 'exponential'),
            make_interval(secs => coalesce((options ->> 'initial_delay')::float8, 1)),
            make_interval(secs => coalesce((options ->> 'max_delay')::float8, 60)),
            coalesce((options ->> 'jitter')::float8, 0.1),
            make_interval(secs => coalesce((options ->> 'timeout')::float8, 30)),
            runs_at,
            coalesce((options ->> 'priority')::int, 0),
            coalesce(options -> 'labels', '{}'),
            ckey,
            runs_at + make_interval(secs => (options ->> 'start_within')::float8),
            make_interval(secs => (options ->> 'max_duration')::float8))
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN job_id;
    END IF;
    SELECT j.id INTO existing FROM perdure.jobs j WHERE j.namespace = enqueue.namespace AND j.idempotency_key = key;
    RETURN existing;
END;
$$;
