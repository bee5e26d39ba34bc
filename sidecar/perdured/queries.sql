-- Every query perdured runs, one named block each (see store.py, the only caller).
-- Job columns come back in the order of JOB_COLUMNS in store.py.
-- Arrays on the hot paths (enqueue, claim, finish) are passed as %(name)b: psycopg dumps a
-- large array several times faster in binary than as text.

-- enqueue --
-- Insert new jobs; rows whose idempotency key exists already in their namespace are skipped,
-- and so are rows whose id exists (a retried statement whose first try did commit).
-- A job given a worker_id starts at once on that worker of this sidecar (as a claim would),
-- unless flow control applies to it (a concurrency key, or its function is controlled: see
-- 0009_flow_control.sql); then it waits for a claim. A key makes its function controlled.
-- The rows to insert, `n`, are unnest() of one array per column for a batch, VALUES of plain
-- parameters for a single job (cheaper to send and to plan), or for a batch whose jobs share
-- their options an array for each job's own (id, payload, key) beside plain parameters for
-- the rest: store.py fills in the placeholder below the three ways, as "enqueue",
-- "enqueue_one" and "enqueue_shared".
WITH new_jobs AS (
    SELECT n.*, coalesce(n.run_at, now() + n.delay) AS runs_at,
           CASE WHEN n.concurrency_key IS NULL AND NOT EXISTS (
               SELECT 1 FROM perdure.functions f WHERE f.namespace = n.namespace AND f.name = n.name)
           THEN n.worker_id END AS start_on
    FROM {new_jobs}
), keyed AS (
    INSERT INTO perdure.functions (namespace, name)
    SELECT DISTINCT namespace, name FROM new_jobs WHERE concurrency_key IS NOT NULL
    ON CONFLICT DO NOTHING
), inserted AS (
    INSERT INTO perdure.jobs (id, namespace, name, payload, payload_encoding, idempotency_key, parent_id,
                              max_attempts, backoff, initial_delay, max_delay, jitter, timeout, run_at,
                              priority, labels, concurrency_key, start_by, max_duration, deadline_at,
                              trace_context, state, attempt, started_at, lease_expires_at, sidecar_id, worker_id)
    SELECT n.id, n.namespace, n.name, n.payload, n.payload_encoding, n.idempotency_key, n.parent_id,
           n.max_attempts, n.backoff, n.initial_delay, n.max_delay, n.jitter, n.timeout, n.runs_at,
           n.priority, n.labels, n.concurrency_key,
           CASE WHEN n.start_on IS NULL THEN n.runs_at + n.start_within END,
           n.max_duration,
           CASE WHEN n.start_on IS NOT NULL THEN now() + n.max_duration END,
           n.trace_context,
           CASE WHEN n.start_on IS NULL THEN 'pending' ELSE 'running' END,
           (n.start_on IS NOT NULL)::int,
           CASE WHEN n.start_on IS NOT NULL THEN now() END,
           CASE WHEN n.start_on IS NOT NULL THEN now() + %(lease)s END,
           CASE WHEN n.start_on IS NOT NULL THEN %(sidecar_id)s END,
           n.start_on
    FROM new_jobs n
    ON CONFLICT DO NOTHING
    RETURNING {job_columns}, worker_id
), history AS (
    INSERT INTO perdure.attempts (job_id, number, sidecar_id, worker_id)
    SELECT id, 1, %(sidecar_id)s, worker_id FROM inserted WHERE state = 'running'
)
SELECT * FROM inserted

-- jobs_analyzed_since --
-- Whether the jobs table was analysed (by hand, a sidecar or autovacuum) after `since` (Unix
-- seconds).
SELECT coalesce(greatest(last_analyze, last_autoanalyze) > to_timestamp(%(since)s::float8), false) AS analyzed
FROM pg_stat_user_tables WHERE relid = 'perdure.jobs'::regclass

-- analyze_jobs --
-- Refresh the planner's statistics of jobs after a large enqueue (see Scheduler). Skipped at
-- once if another ANALYZE or a VACUUM holds the table.
ANALYZE (SKIP_LOCKED) perdure.jobs

-- jobs_by_id_or_idempotency_key --
-- The existing jobs behind skipped enqueues: by their own id, else by their key.
SELECT {job_columns}
FROM perdure.jobs
WHERE id = ANY(%(id)s)
   OR (namespace, idempotency_key) IN (
       SELECT * FROM unnest(%(namespace)s::text[], %(idempotency_key)s::text[]))

-- get_job --
-- One job, only within its namespace.
SELECT {job_columns} FROM perdure.jobs WHERE id = %(id)s AND namespace = %(namespace)s

-- get_attempts --
-- A job's history, oldest first.
SELECT number, worker_id, sidecar_id, started_at, ended_at, outcome, error
FROM perdure.attempts WHERE job_id = %(id)s ORDER BY number

-- job_filter --
-- The filter ListJobs, RetryJobs and PurgeJobs share (a fragment of their WHERE clauses).
-- Labels, when given, are never empty (validation.py), so they imply labels <> '{}': said
-- here, it lets the planner use jobs_labels, which holds only labelled jobs.
namespace = %(namespace)s
  AND (%(name)s::text IS NULL OR name = %(name)s)
  AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s))
  AND (%(labels)s::jsonb IS NULL OR (labels @> %(labels)s AND labels <> '{}'::jsonb))
  AND (%(error_type)s::text IS NULL OR error ->> 'type' = %(error_type)s)
  AND (%(error_contains)s::text IS NULL OR strpos(lower(error ->> 'message'), lower(%(error_contains)s)) > 0)

-- list_jobs --
-- Newest first; `before` is the last id of the previous page (ids sort by creation time).
SELECT {job_columns} FROM perdure.jobs
WHERE {job_filter}
  AND (%(before)s::uuid IS NULL OR id < %(before)s)
ORDER BY id DESC
LIMIT %(limit)s

-- claimed_jobs --
-- The end of both claims (a fragment): move the jobs in `numbered(id, slot)` to running on
-- the worker of their slot (`slots` holds a worker id per free slot), with a lease and an
-- attempt row. A first start clears start_by and sets the deadline of max_duration.
-- The jobs are found by primary key, whatever the statistics say: the test that they are
-- still runnable names the states (of the six) they must not be in, which no partial index
-- matches.
-- (Written as state IN ('pending', 'suspended'), it let the planner, told by statistics
-- from before a large enqueue that few jobs were runnable, walk jobs_runnable instead, once
-- per claimed job: seconds per claim with a backlog of 50,000.)
claimed AS (
    UPDATE perdure.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = coalesce(j.started_at, now()),
        lease_expires_at = now() + %(lease)s, sidecar_id = %(sidecar_id)s,
        worker_id = (%(slots)b::text[])[n.slot],
        start_by = NULL, deadline_at = coalesce(j.deadline_at, now() + j.max_duration)
    FROM numbered n WHERE j.id = n.id AND j.state NOT IN ('running', 'success', 'dead', 'cancelled')
    RETURNING j.id, j.namespace, j.name, j.payload, j.payload_encoding, j.attempt, j.uncounted_attempts,
              j.max_attempts, j.backoff, j.initial_delay, j.max_delay, j.jitter, j.timeout, j.parent_id,
              j.worker_id, j.run_at, j.priority, j.concurrency_key, j.trace_context, now() AS claimed_at
), history AS (
    INSERT INTO perdure.attempts (job_id, number, sidecar_id, worker_id)
    SELECT id, attempt, %(sidecar_id)s, worker_id FROM claimed
)

-- claim --
-- Move runnable jobs of these functions to running, highest priority first, then oldest
-- run_at, one per free worker slot; the n-th job claimed goes to the n-th slot. Jobs under
-- flow control (a concurrency key, a controlled function) are left to claim_limited.
-- Each function's first jobs come from its own walk of jobs_runnable, in the index's order,
-- so a claim reads about as many rows as it takes, however long the backlog (one walk over
-- every name would read and sort the whole backlog). The rows locked beyond the slots are
-- released when the statement ends. Controlled functions are set aside first (materialized:
-- otherwise the planner may test them after the walks, which would lock their jobs for a
-- moment, under the nose of claim_limited).
WITH served AS MATERIALIZED (
    SELECT name FROM unnest(%(names)b::text[]) AS given(name)
    WHERE NOT EXISTS (SELECT 1 FROM perdure.functions f WHERE f.namespace = %(namespace)s AND f.name = given.name)
), picked AS (
    SELECT first.id, first.priority, first.run_at
    FROM served
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM perdure.jobs
        WHERE state IN ('pending', 'suspended') AND namespace = %(namespace)s AND name = served.name
          AND run_at <= now() AND concurrency_key IS NULL
        ORDER BY priority DESC, run_at, id
        LIMIT cardinality(%(slots)b::text[])
        FOR UPDATE SKIP LOCKED
    ) AS first
    ORDER BY first.priority DESC, first.run_at, first.id
    LIMIT cardinality(%(slots)b::text[])
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY priority DESC, run_at, id) AS slot FROM picked
), {claimed_jobs}
SELECT * FROM claimed ORDER BY priority DESC, run_at, id

-- lock_function --
-- Serialises the claims of one controlled function across sidecars (until the end of the
-- transaction), so that each counts what the previous one started.
SELECT pg_advisory_xact_lock(hashtextextended(%(namespace)s || chr(31) || %(name)s, 11))

-- claim_limited --
-- Claim runnable jobs of one controlled function within its limits (under lock_function).
-- A job in progress (from its first start to its end: running, suspended, or pending for a
-- retry) holds a slot of its function and of its key: a retry or a resumption keeps the
-- slot, and with it the job's place ahead of the jobs that never started. Every start counts
-- toward the rate limits. Candidates go in claim order (priority, run_at, id) through one test at a time,
-- each counting only the candidates that passed the tests before it, so that a job held
-- back never uses up room that a job behind it could take:
--   1. per key, new jobs within the key's free slots;
--   2. per key, starts within the key's rate limit;
--   3. new jobs within the function's free slots;
--   4. starts within the function's rate limit and the free worker slots.
WITH fn AS (
    SELECT * FROM perdure.functions WHERE namespace = %(namespace)s AND name = %(name)s
), in_progress AS (
    SELECT concurrency_key, count(*) AS jobs FROM perdure.jobs
    WHERE namespace = %(namespace)s AND name = %(name)s
      AND (state IN ('running', 'suspended') OR (state = 'pending' AND started_at IS NOT NULL))
    GROUP BY concurrency_key
), recent AS (
    SELECT s.concurrency_key,
           s.started_at > now() - fn.rate_period AS in_rate_period,
           s.started_at > now() - fn.key_rate_period AS in_key_rate_period
    FROM perdure.rate_limited_starts s, fn
    WHERE s.namespace = %(namespace)s AND s.name = %(name)s
      AND s.started_at > now() - greatest(fn.rate_period, fn.key_rate_period)
), candidates AS (
    SELECT j.id, j.priority, j.run_at, j.concurrency_key, j.started_at IS NULL AS new,
           count(*) FILTER (WHERE j.started_at IS NULL) OVER (
               PARTITION BY j.concurrency_key ORDER BY j.priority DESC, j.run_at, j.id) AS new_of_key
    FROM perdure.jobs j
    WHERE j.state IN ('pending', 'suspended') AND j.namespace = %(namespace)s AND j.name = %(name)s
      AND j.run_at <= now()
), within_key_slots AS (
    SELECT c.* FROM candidates c, fn
    WHERE c.concurrency_key IS NULL OR NOT c.new OR c.new_of_key <= fn.key_concurrency - coalesce(
        (SELECT p.jobs FROM in_progress p WHERE p.concurrency_key = c.concurrency_key), 0)
), within_key_rate AS (
    SELECT k.* FROM (
        SELECT w.*, row_number() OVER (PARTITION BY w.concurrency_key ORDER BY w.priority DESC, w.run_at, w.id)
                    AS start_of_key
        FROM within_key_slots w) k, fn
    WHERE k.concurrency_key IS NULL OR fn.key_rate_limit IS NULL OR k.start_of_key <= fn.key_rate_limit - (
        SELECT count(*) FROM recent r WHERE r.concurrency_key = k.concurrency_key AND r.in_key_rate_period)
), within_slots AS (
    SELECT s.* FROM (
        SELECT k.*, count(*) FILTER (WHERE k.new) OVER (ORDER BY k.priority DESC, k.run_at, k.id) AS new_overall
        FROM within_key_rate k) s, fn
    WHERE NOT s.new OR fn.concurrency IS NULL OR s.new_overall <= fn.concurrency - coalesce(
        (SELECT sum(p.jobs) FROM in_progress p), 0)
), numbered AS (
    SELECT r.id, r.slot FROM (
        SELECT s.id, row_number() OVER (ORDER BY s.priority DESC, s.run_at, s.id) AS slot FROM within_slots s) r, fn
    WHERE r.slot <= cardinality(%(slots)b::text[])
      AND (fn.rate_limit IS NULL OR r.slot <= fn.rate_limit - (SELECT count(*) FROM recent WHERE in_rate_period))
    ORDER BY r.slot
    LIMIT cardinality(%(slots)b::text[])  -- tells the planner how few: the UPDATE goes by primary key
), {claimed_jobs}, counted AS (
    INSERT INTO perdure.rate_limited_starts (namespace, name, concurrency_key, started_at)
    SELECT c.namespace, c.name, c.concurrency_key, now() FROM claimed c, fn
    WHERE fn.rate_limit IS NOT NULL OR (fn.key_rate_limit IS NOT NULL AND c.concurrency_key IS NOT NULL)
), pruned AS (
    DELETE FROM perdure.rate_limited_starts s USING fn
    WHERE s.namespace = %(namespace)s AND s.name = %(name)s
      AND s.started_at <= now() - coalesce(greatest(fn.rate_period, fn.key_rate_period), '0')
)
SELECT * FROM claimed ORDER BY priority DESC, run_at, id

-- rate_limit_wait --
-- Seconds until the oldest start within one of a function's rate periods leaves it: when
-- a claim held jobs back for a rate limit, the earliest moment it may do better (null: no
-- start counts now).
SELECT extract(epoch FROM least(
    (SELECT min(s.started_at) + fn.rate_period FROM perdure.rate_limited_starts s
     WHERE s.namespace = fn.namespace AND s.name = fn.name AND s.started_at > now() - fn.rate_period),
    (SELECT min(s.started_at) + fn.key_rate_period FROM perdure.rate_limited_starts s
     WHERE s.namespace = fn.namespace AND s.name = fn.name AND s.concurrency_key IS NOT NULL
       AND s.started_at > now() - fn.key_rate_period)
) - now())::float8 AS wait
FROM perdure.functions fn WHERE fn.namespace = %(namespace)s AND fn.name = %(name)s

-- controlled_functions --
-- Which of these functions are under flow control (their claims go through claim_limited).
SELECT name FROM perdure.functions WHERE namespace = %(namespace)s AND name = ANY(%(names)s)

-- register_functions --
-- Record the limits a worker declares for its functions (the last registration wins); a
-- function it serves without declaring limits loses those declared before (a key keeps
-- its default concurrency of 1). Unchanged rows are left alone (no notification).
WITH declared AS (
    SELECT * FROM unnest(%(name)s::text[], %(declared)s::bool[], %(concurrency)s::int[],
                         %(key_concurrency)s::int[], %(rate_limit)s::int[], %(rate_period)s::interval[],
                         %(key_rate_limit)s::int[], %(key_rate_period)s::interval[])
        AS d(name, declared, concurrency, key_concurrency, rate_limit, rate_period, key_rate_limit, key_rate_period)
), upserted AS (
    INSERT INTO perdure.functions AS f (namespace, name, concurrency, key_concurrency, rate_limit, rate_period,
                                        key_rate_limit, key_rate_period)
    SELECT %(namespace)s, name, concurrency, key_concurrency, rate_limit, rate_period, key_rate_limit,
           key_rate_period
    FROM declared WHERE declared
    ON CONFLICT (namespace, name) DO UPDATE
    SET concurrency = excluded.concurrency, key_concurrency = excluded.key_concurrency,
        rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
        key_rate_limit = excluded.key_rate_limit, key_rate_period = excluded.key_rate_period, updated_at = now()
    WHERE (f.concurrency, f.key_concurrency, f.rate_limit, f.rate_period, f.key_rate_limit, f.key_rate_period)
          IS DISTINCT FROM (excluded.concurrency, excluded.key_concurrency, excluded.rate_limit,
                            excluded.rate_period, excluded.key_rate_limit, excluded.key_rate_period)
)
UPDATE perdure.functions AS f
SET concurrency = NULL, key_concurrency = 1, rate_limit = NULL, rate_period = NULL, key_rate_limit = NULL,
    key_rate_period = NULL, updated_at = now()
FROM declared d
WHERE NOT d.declared AND f.namespace = %(namespace)s AND f.name = d.name
  AND (f.concurrency IS NOT NULL OR f.key_concurrency <> 1 OR f.rate_limit IS NOT NULL OR f.key_rate_limit IS NOT NULL)

-- finish --
-- Record attempt outcomes, each only if its job is still running under the same attempt.
-- Returns the whole row of the jobs whose `whole` is true, the rest in brief (see store.py).
-- kind: success | failure | released | suspended. A failure retries after `retry_delay` unless it is
-- non-retryable or the attempts are used up, then the job is dead. A release (the sidecar
-- shutting down) neither kills the job nor counts toward its attempts; nor does a suspension,
-- which parks the job until `retry_delay` from now.
WITH outcome AS (
    SELECT * FROM unnest(%(id)b::uuid[], %(attempt)b::int[], %(kind)b::text[], %(result)b::bytea[],
                         %(result_encoding)b::text[], %(error)b::jsonb[], %(non_retryable)b::bool[],
                         %(retry_delay)b::interval[], %(attempt_outcome)b::text[], %(waiting_for)b::text[],
                         %(whole)b::bool[])
        AS o(id, attempt, kind, result, result_encoding, error, non_retryable, retry_delay, attempt_outcome,
             waiting_for, whole)
), locked AS MATERIALIZED (
    -- Each outcome's job, locked through its primary key, in id order: renew_leases takes
    -- rows in the same order (two statements locking the same rows in different orders can
    -- deadlock). Materialized, so that the test below is not pushed into the lookups, where
    -- the planner could answer it from a partial index with one scan per outcome.
    SELECT o.*, j.state, j.attempt AS job_attempt, j.uncounted_attempts, j.max_attempts
    FROM (SELECT * FROM outcome ORDER BY id) AS o
    CROSS JOIN LATERAL (SELECT * FROM perdure.jobs WHERE id = o.id FOR UPDATE) AS j
), decided AS (
    -- Only attempts still running count; under the lock, that holds until the commit.
    SELECT l.*, CASE
        WHEN l.kind = 'success' THEN 'success'
        WHEN l.kind = 'released' THEN 'pending'
        WHEN l.kind = 'suspended' THEN 'suspended'
        WHEN l.non_retryable OR l.attempt - l.uncounted_attempts >= l.max_attempts THEN 'dead'
        ELSE 'pending' END AS next_state
    FROM locked l
    WHERE l.state = 'running' AND l.job_attempt = l.attempt
), finished AS (
    UPDATE perdure.jobs AS j
    SET state = d.next_state,
        uncounted_attempts = j.uncounted_attempts + (d.kind IN ('released', 'suspended'))::int,
        result = d.result,
        result_encoding = d.result_encoding,
        error = d.error,
        run_at = CASE WHEN d.next_state IN ('pending', 'suspended') THEN now() + d.retry_delay ELSE j.run_at END,
        finished_at = CASE WHEN d.next_state IN ('pending', 'suspended') THEN NULL ELSE now() END,
        waiting_for = d.waiting_for,
        lease_expires_at = NULL, sidecar_id = NULL, worker_id = NULL
    FROM decided d
    WHERE j.id = d.id
    RETURNING {finished_job_columns_if_whole}
), history AS (
    -- The attempts of the jobs `finished` updates: exactly the decided ones, which are locked.
    -- (Joined to the outcomes again instead, the generic plan, which expects 10 outcomes,
    -- compared every finished job with every outcome: quadratic in the batch, 13 of the 19 ms
    -- of a finish of 256.)
    UPDATE perdure.attempts AS h
    SET ended_at = now(), outcome = d.attempt_outcome, error = d.error
    FROM decided d
    WHERE h.job_id = d.id AND h.number = d.attempt
)
SELECT * FROM finished

-- renew_leases --
-- Extend the leases of all jobs this sidecar runs, in one statement; returns those still ours.
-- A row another transaction has locked is not waited for (that would hold up every other
-- lease): it stays ours, and its lease is extended next time.
WITH free AS (
    SELECT id FROM perdure.jobs
    WHERE id = ANY(%(ids)b::uuid[]) AND state = 'running' AND sidecar_id = %(sidecar_id)s
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE perdure.jobs AS j SET lease_expires_at = now() + %(lease)s FROM free WHERE j.id = free.id
)
SELECT id FROM perdure.jobs WHERE id = ANY(%(ids)b::uuid[]) AND state = 'running' AND sidecar_id = %(sidecar_id)s

-- reclaim_expired --
-- Put back running jobs whose sidecar stopped renewing their lease (it died).
-- Counts as an attempt: dead when none are left.
WITH expired AS (
    SELECT id FROM perdure.jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), reclaimed AS (
    UPDATE perdure.jobs AS j
    SET state = CASE WHEN j.attempt - j.uncounted_attempts >= j.max_attempts THEN 'dead' ELSE 'pending' END,
        error = %(error)s::jsonb,
        run_at = now(),
        finished_at = CASE WHEN j.attempt - j.uncounted_attempts >= j.max_attempts THEN now() END,
        lease_expires_at = NULL, sidecar_id = NULL, worker_id = NULL
    FROM expired WHERE j.id = expired.id
    RETURNING j.id, j.namespace, j.name, j.attempt, j.state
), history AS (
    UPDATE perdure.attempts AS h SET ended_at = now(), outcome = 'lease_expired', error = %(error)s::jsonb
    FROM reclaimed r WHERE h.job_id = r.id AND h.number = r.attempt
)
SELECT id, namespace, name, attempt, state FROM reclaimed

-- cancelled_jobs --
-- Cancel the unfinished jobs in `roots(id, error)` and all their unfinished descendants (a
-- fragment). A root's error, when not null, says why (a cancellation policy).
tree AS (
    SELECT id, error FROM roots
    UNION ALL
    SELECT child.id, NULL::jsonb FROM perdure.jobs child JOIN tree ON child.parent_id = tree.id
), cancelled AS (
    UPDATE perdure.jobs AS j
    SET state = 'cancelled', error = coalesce(t.error, j.error), finished_at = now(), lease_expires_at = NULL,
        sidecar_id = NULL, worker_id = NULL, waiting_for = NULL
    FROM tree t WHERE j.id = t.id AND j.state IN ('pending', 'running', 'suspended')
    RETURNING {finished_job_columns}
), history AS (
    UPDATE perdure.attempts AS h SET ended_at = now(), outcome = 'cancelled'
    FROM cancelled c WHERE h.job_id = c.id AND h.number = c.attempt AND h.outcome = 'running'
)

-- cancel_job --
-- Cancel a job that has not finished, and all its unfinished descendants; returns those
-- cancelled (none if the job had finished).
WITH RECURSIVE roots AS (
    SELECT id, NULL::jsonb AS error FROM perdure.jobs WHERE id = %(id)s AND namespace = %(namespace)s
), {cancelled_jobs}
SELECT * FROM cancelled

-- cancel_overdue --
-- The cancellation policies: cancel up to `limit` jobs not started by their start_by, or not
-- ended by their deadline, with their descendants; returns them all, with the reason of the
-- jobs whose own policy fired (null for descendants).
WITH RECURSIVE roots AS (
    SELECT id, CASE WHEN state = 'pending' AND start_by < now()
        THEN jsonb_build_object('type', 'perdure.StartTimeout', 'non_retryable', true, 'traceback', '',
                                'message', 'not started by ' || start_by || ', as its start_within asks')
        ELSE jsonb_build_object('type', 'perdure.DeadlineExceeded', 'non_retryable', true, 'traceback', '',
                                'message', 'not ended by ' || deadline_at || ', ' || max_duration
                                           || ' after its first start, as its max_duration asks')
        END AS error
    FROM perdure.jobs
    WHERE (state = 'pending' AND start_by < now())
       OR (state IN ('pending', 'running', 'suspended') AND deadline_at < now())
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), {cancelled_jobs}
SELECT c.id, c.namespace, c.name, r.error ->> 'type' AS reason FROM cancelled c LEFT JOIN roots r USING (id)

-- retry_jobs --
-- Send dead or cancelled jobs back to pending with a fresh set of attempts: one job by id, or
-- up to `limit` that match the filter and finished before `finished_before`. A retried job
-- starts afresh: a new first start, a new deadline, a slot to win under flow control.
WITH matched AS (
    SELECT id FROM perdure.jobs
    WHERE {job_filter} AND state IN ('dead', 'cancelled')
      AND (%(id)s::uuid IS NULL OR id = %(id)s)
      AND (%(finished_before)s::timestamptz IS NULL OR finished_at < %(finished_before)s)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE perdure.jobs AS j
SET state = 'pending', uncounted_attempts = j.attempt, run_at = now(), finished_at = NULL, result = NULL,
    result_encoding = NULL, started_at = NULL, start_by = NULL, deadline_at = NULL
FROM matched WHERE j.id = matched.id
RETURNING {finished_job_columns}

-- purge_jobs --
-- Delete up to `limit` finished jobs that match the filter, with their history.
DELETE FROM perdure.jobs
WHERE id IN (
    SELECT id FROM perdure.jobs
    WHERE {job_filter} AND state IN ('success', 'dead', 'cancelled')
    LIMIT %(limit)s
)
RETURNING id

-- next_run_at --
-- How long until the next pending job of these functions becomes runnable (null: none waits).
SELECT extract(epoch FROM min(run_at) - now())::float8
FROM perdure.jobs
WHERE state IN ('pending', 'suspended') AND namespace = %(namespace)s AND name = ANY(%(names)s)

-- record_steps --
-- Record step outcomes, each only while its job runs under the same attempt. A succeeded
-- step is final; a failed one is replaced by a later outcome.
-- Each step's job is looked up by primary key (OFFSET 0 keeps the lateral subquery apart).
-- Joined plainly, a plan made when few jobs ran would read every running job (jobs_leases)
-- for each batch of steps, and go on doing so once thousands run.
INSERT INTO perdure.steps AS s (job_id, name, status, attempt, result, result_encoding, error)
SELECT r.job_id, r.name, r.status, r.attempt, r.result, r.result_encoding, r.error
FROM unnest(%(job_id)s::uuid[], %(attempt)s::int[], %(name)s::text[], %(status)s::text[],
            %(result)s::bytea[], %(result_encoding)s::text[], %(error)s::jsonb[])
     AS r(job_id, attempt, name, status, result, result_encoding, error)
CROSS JOIN LATERAL (SELECT FROM perdure.jobs j
                    WHERE j.id = r.job_id AND j.attempt = r.attempt AND j.state = 'running' OFFSET 0) AS running
ON CONFLICT (job_id, name) DO UPDATE
SET status = excluded.status, attempt = excluded.attempt, result = excluded.result,
    result_encoding = excluded.result_encoding, error = excluded.error, recorded_at = now()
WHERE s.status = 'failed'
RETURNING job_id, name

-- succeeded_steps --
-- The steps earlier attempts completed, for jobs about to run again.
SELECT job_id, name, status, attempt, result, result_encoding, error, recorded_at
FROM perdure.steps WHERE job_id = ANY(%(ids)s) AND status = 'succeeded'
ORDER BY recorded_at

-- get_steps --
-- A job's steps, oldest first.
SELECT job_id, name, status, attempt, result, result_encoding, error, recorded_at
FROM perdure.steps WHERE job_id = %(id)s ORDER BY recorded_at, name

-- record_progress --
-- Keep each job's last reported progress (only from its latest attempt, even if that attempt
-- has just finished: the report may land after the outcome) and notify watchers.
WITH reported AS (
    SELECT DISTINCT ON (id) * FROM unnest(%(id)s::uuid[], %(attempt)s::int[], %(progress)s::jsonb[])
        WITH ORDINALITY AS p(id, attempt, progress, n)
    ORDER BY id, n DESC
), updated AS (
    UPDATE perdure.jobs AS j SET progress = r.progress || jsonb_build_object('at', extract(epoch FROM now()))
    FROM reported r WHERE j.id = r.id AND j.attempt = r.attempt
    RETURNING j.id, j.namespace, j.name, j.attempt, j.state, j.progress
)
SELECT pg_notify('perdure_events', json_build_object(
    'kind', 'progress', 'id', id, 'namespace', namespace, 'name', name, 'attempt', attempt,
    'state', state, 'at', extract(epoch FROM clock_timestamp()), 'run_at', extract(epoch FROM now()),
    'progress', progress)::text)
FROM updated

-- record_logs --
-- Store log records of running jobs and notify watchers (messages shortened for NOTIFY).
WITH inserted AS (
    INSERT INTO perdure.job_logs (job_id, attempt, level, message)
    SELECT l.job_id, l.attempt, l.level, l.message
    FROM unnest(%(job_id)s::uuid[], %(attempt)s::int[], %(level)s::text[], %(message)s::text[])
        WITH ORDINALITY AS l(job_id, attempt, level, message, n)
    JOIN perdure.jobs j ON j.id = l.job_id
    ORDER BY l.n
    RETURNING job_id, seq, attempt, level, message, at
)
SELECT pg_notify('perdure_events', json_build_object(
    'kind', 'log', 'id', i.job_id, 'namespace', j.namespace, 'name', j.name, 'attempt', i.attempt,
    'state', j.state, 'at', extract(epoch FROM i.at), 'run_at', extract(epoch FROM j.run_at),
    'log', json_build_object('level', i.level, 'message', left(i.message, 4000)))::text)
FROM inserted i JOIN perdure.jobs j ON j.id = i.job_id
ORDER BY i.seq

-- get_logs --
-- A job's log records, oldest first.
SELECT attempt, level, message, at FROM perdure.job_logs WHERE job_id = %(id)s ORDER BY seq

-- lock_event --
-- Serialises emitting an event with jobs starting to wait for it (see 0005_events.sql).
SELECT pg_advisory_xact_lock(hashtextextended(%(namespace)s || chr(31) || %(name)s, 7))

-- emit_event --
-- Set an event's payload (the latest emit wins).
INSERT INTO perdure.events (namespace, name, payload, payload_encoding)
VALUES (%(namespace)s, %(name)s, %(payload)s, %(payload_encoding)s)
ON CONFLICT (namespace, name) DO UPDATE
SET payload = excluded.payload, payload_encoding = excluded.payload_encoding, emitted_at = now()

-- wake_event_waiters --
-- Make the jobs waiting for an event runnable now, if it has been emitted, and announce it.
WITH woken AS (
    UPDATE perdure.jobs SET run_at = now(), waiting_for = NULL
    WHERE state = 'suspended' AND namespace = %(namespace)s AND waiting_for = %(name)s
      AND (%(job_id)s::uuid IS NULL OR id = %(job_id)s)
      AND EXISTS (SELECT 1 FROM perdure.events e WHERE e.namespace = %(namespace)s AND e.name = %(name)s)
    RETURNING id, namespace, name, attempt, state, run_at
)
SELECT pg_notify('perdure_events', json_build_object(
    'kind', 'resumed', 'id', id, 'namespace', namespace, 'name', name, 'attempt', attempt,
    'state', state, 'at', extract(epoch FROM clock_timestamp()), 'run_at', extract(epoch FROM run_at))::text)
FROM woken

-- get_event --
-- An event's current payload.
SELECT payload, payload_encoding, emitted_at FROM perdure.events WHERE namespace = %(namespace)s AND name = %(name)s

-- wake_if_child_done --
-- A parent has just suspended to await a child: make it runnable at once if the child has
-- already ended (the trigger in 0006_child_jobs.sql covers a child that ends later).
WITH woken AS (
    UPDATE perdure.jobs SET run_at = now(), waiting_for = NULL
    WHERE id = %(parent_id)s AND state = 'suspended' AND waiting_for = 'job:' || %(child_id)s::text
      AND EXISTS (SELECT 1 FROM perdure.jobs c
                  WHERE c.id = %(child_id)s AND c.state IN ('success', 'dead', 'cancelled'))
    RETURNING id, namespace, name, attempt, state, run_at
)
SELECT pg_notify('perdure_events', json_build_object(
    'kind', 'resumed', 'id', id, 'namespace', namespace, 'name', name, 'attempt', attempt,
    'state', state, 'at', extract(epoch FROM clock_timestamp()), 'run_at', extract(epoch FROM run_at))::text)
FROM woken

-- get_children --
-- The jobs a job spawned, oldest first.
SELECT {job_columns} FROM perdure.jobs WHERE parent_id = %(id)s ORDER BY id

-- try_retention_lock --
-- Only one sidecar at a time deletes old jobs (held until the end of the transaction).
SELECT pg_try_advisory_xact_lock(hashtextextended('perdure.retention', 7)) AS locked

-- delete_finished --
-- Delete up to `limit` jobs that finished more than `age` ago, oldest first.
DELETE FROM perdure.jobs
WHERE id IN (
    SELECT id FROM perdure.jobs
    WHERE state IN ('success', 'dead', 'cancelled') AND finished_at < now() - %(age)s
    ORDER BY finished_at
    LIMIT %(limit)s
)
RETURNING id

-- database_now --
-- The database's clock: schedules compute their ticks from it, so that every sidecar agrees.
SELECT now() AS now

-- create_schedule --
-- Insert a schedule. If the name is taken, replace that schedule when `replace` is set (else
-- nothing comes back). A replaced schedule keeps its next_run_at unless its cron or time zone
-- changes or it is resumed by this call; its paused state changes only when `paused` is given;
-- updated_at moves only if something changed.
INSERT INTO perdure.schedules AS s (namespace, name, function, cron, timezone, job, missed, paused, next_run_at)
VALUES (%(namespace)s, %(name)s, %(function)s, %(cron)s, %(timezone)s, %(job)s, %(missed)s,
        coalesce(%(paused)s::boolean, false), %(next_run_at)s)
ON CONFLICT (namespace, name) DO UPDATE
SET function = excluded.function, cron = excluded.cron, timezone = excluded.timezone, job = excluded.job,
    missed = excluded.missed, paused = coalesce(%(paused)s::boolean, s.paused),
    next_run_at = CASE
        WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
          OR (s.paused AND NOT coalesce(%(paused)s::boolean, s.paused)) THEN excluded.next_run_at
        ELSE s.next_run_at END,
    updated_at = CASE
        WHEN (s.function, s.cron, s.timezone, s.job, s.missed, s.paused)
             IS DISTINCT FROM (excluded.function, excluded.cron, excluded.timezone, excluded.job, excluded.missed,
                               coalesce(%(paused)s::boolean, s.paused)) THEN now()
        ELSE s.updated_at END
WHERE %(replace)s
RETURNING *, (xmax = 0) AS created

-- get_schedule --
-- One schedule, only within its namespace.
SELECT * FROM perdure.schedules WHERE namespace = %(namespace)s AND name = %(name)s

-- list_schedules --
-- Schedules by name; `after` is the last name of the previous page.
SELECT * FROM perdure.schedules
WHERE namespace = %(namespace)s
  AND (%(function)s::text IS NULL OR function = %(function)s)
  AND (%(after)s::text IS NULL OR name > %(after)s)
ORDER BY name
LIMIT %(limit)s

-- lock_schedule --
-- One schedule, locked until the end of the transaction, with the database's clock: its
-- change is computed from it.
SELECT *, now() AS now FROM perdure.schedules WHERE namespace = %(namespace)s AND name = %(name)s FOR UPDATE

-- update_schedule --
-- Write a schedule's new settings (computed from it under lock_schedule).
UPDATE perdure.schedules
SET function = %(function)s, cron = %(cron)s, timezone = %(timezone)s, job = %(job)s, missed = %(missed)s,
    paused = %(paused)s, next_run_at = %(next_run_at)s, updated_at = now()
WHERE namespace = %(namespace)s AND name = %(name)s
RETURNING *

-- delete_schedule --
-- Delete a schedule (the jobs it enqueued stay).
DELETE FROM perdure.schedules WHERE namespace = %(namespace)s AND name = %(name)s RETURNING name

-- lock_due_schedules --
-- Unpaused schedules whose next tick has come, earliest first, locked until the end of the
-- transaction; rows another sidecar is firing are skipped, not waited for. With the
-- database's clock.
SELECT *, now() AS now FROM perdure.schedules
WHERE NOT paused AND next_run_at <= now()
ORDER BY next_run_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- advance_schedules --
-- After their ticks' jobs are inserted (same transaction): move schedules to their next tick.
UPDATE perdure.schedules AS s
SET next_run_at = a.next_run_at, last_run_at = a.last_run_at, last_job_id = a.last_job_id,
    last_error = a.last_error, paused = a.paused
FROM unnest(%(namespace)s::text[], %(name)s::text[], %(next_run_at)s::timestamptz[], %(last_run_at)s::timestamptz[],
            %(last_job_id)s::uuid[], %(last_error)s::text[], %(paused)s::boolean[])
     AS a(namespace, name, next_run_at, last_run_at, last_job_id, last_error, paused)
WHERE s.namespace = a.namespace AND s.name = a.name

-- next_schedule_in --
-- Seconds until the earliest tick of any unpaused schedule (negative: due; null: none).
SELECT extract(epoch FROM min(next_run_at) - now())::float8 AS wait FROM perdure.schedules WHERE NOT paused

-- register_worker --
-- A worker connected to this sidecar (see 0011_operations.sql).
INSERT INTO perdure.workers (id, sidecar_id, namespace, worker_name, sdk, names, concurrency, expires_at)
VALUES (%(id)s, %(sidecar_id)s, %(namespace)s, %(worker_name)s, %(sdk)s, %(names)s, %(concurrency)s, now() + %(ttl)s)
ON CONFLICT (id) DO UPDATE SET last_seen = now(), expires_at = excluded.expires_at

-- touch_workers --
-- This sidecar's workers are still connected: what they hold now, and for how much longer.
UPDATE perdure.workers AS w SET in_flight = t.in_flight, draining = t.draining, last_seen = now(),
       expires_at = now() + %(ttl)s
FROM unnest(%(id)s::text[], %(in_flight)s::int[], %(draining)s::bool[]) AS t(id, in_flight, draining)
WHERE w.id = t.id

-- remove_worker --
DELETE FROM perdure.workers WHERE id = %(id)s

-- delete_expired_workers --
-- Workers whose sidecar stopped saying they are there (it died).
DELETE FROM perdure.workers WHERE expires_at < now() RETURNING id

-- list_workers --
SELECT id, sidecar_id, namespace, worker_name, sdk, names, concurrency, in_flight, draining, connected_at, last_seen
FROM perdure.workers
WHERE expires_at >= now() AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
ORDER BY namespace, connected_at, id

-- add_activity --
-- Add what this sidecar counted to the per-minute activity (rows in key order: several
-- sidecars adding at once lock them in the same order).
INSERT INTO perdure.activity AS a (namespace, name, minute, enqueued, started, succeeded, failed, dead, cancelled)
SELECT * FROM unnest(%(namespace)s::text[], %(name)s::text[], %(minute)s::timestamptz[], %(enqueued)s::bigint[],
                     %(started)s::bigint[], %(succeeded)s::bigint[], %(failed)s::bigint[], %(dead)s::bigint[],
                     %(cancelled)s::bigint[])
ORDER BY 1, 2, 3
ON CONFLICT (namespace, name, minute) DO UPDATE
SET enqueued = a.enqueued + excluded.enqueued, started = a.started + excluded.started,
    succeeded = a.succeeded + excluded.succeeded, failed = a.failed + excluded.failed,
    dead = a.dead + excluded.dead, cancelled = a.cancelled + excluded.cancelled

-- delete_old_activity --
DELETE FROM perdure.activity WHERE minute < now() - interval '1 day'

-- function_stats --
-- Per function: jobs in progress now and dead jobs kept (partial indexes: never a scan of the
-- finished jobs), and activity within the window (perdure.activity, by the minute).
WITH live AS (
    SELECT namespace, name,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'suspended') AS suspended,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'pending' AND run_at <= now()))::float8
               AS oldest_pending_age
    FROM perdure.jobs
    WHERE state IN ('pending', 'running', 'suspended') AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
    GROUP BY namespace, name
), dead AS (
    SELECT namespace, name, count(*) AS dead FROM perdure.jobs
    WHERE state = 'dead' AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
    GROUP BY namespace, name
), recent AS (
    SELECT namespace, name, sum(enqueued)::bigint AS enqueued, sum(started)::bigint AS started,
           sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed, sum(dead)::bigint AS dead,
           sum(cancelled)::bigint AS cancelled
    FROM perdure.activity
    WHERE minute > now() - %(window)s AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
    GROUP BY namespace, name
)
SELECT coalesce(l.namespace, d.namespace, r.namespace) AS namespace, coalesce(l.name, d.name, r.name) AS name,
       coalesce(l.pending, 0) AS pending, coalesce(l.running, 0) AS running,
       coalesce(l.suspended, 0) AS suspended, coalesce(d.dead, 0) AS dead, l.oldest_pending_age,
       coalesce(r.enqueued, 0) AS enqueued_recently, coalesce(r.started, 0) AS started_recently,
       coalesce(r.succeeded, 0) AS succeeded_recently, coalesce(r.failed, 0) AS failed_recently,
       coalesce(r.dead, 0) AS dead_recently, coalesce(r.cancelled, 0) AS cancelled_recently, now() AS at
FROM live l
FULL JOIN dead d ON d.namespace = l.namespace AND d.name = l.name
FULL JOIN recent r ON r.namespace = coalesce(l.namespace, d.namespace) AND r.name = coalesce(l.name, d.name)
ORDER BY 1, 2

-- function_activity --
-- Per-minute activity per function within the window (the same minutes as function_stats),
-- by namespace, name and minute; minutes without activity have no row. Every row carries the
-- window's first minute and the clock, and a single row of nulls does when nothing happened.
WITH clock AS (
    SELECT now() AS at, date_trunc('minute', now() - %(window)s) + interval '1 minute' AS start
)
SELECT a.namespace, a.name, a.minute, a.enqueued, a.started, a.succeeded, a.failed, a.dead, a.cancelled,
       c.start, c.at
FROM clock c
LEFT JOIN perdure.activity a
       ON a.minute >= c.start
      AND (%(namespace)s::text IS NULL OR a.namespace = %(namespace)s)
      AND (%(name)s::text IS NULL OR a.name = %(name)s)
ORDER BY a.namespace, a.name, a.minute

-- database_info --
-- What `perdure doctor` shows of the database.
SELECT current_setting('server_version') AS server_version,
       (SELECT max(version) FROM perdure.schema_migrations) AS schema_version
