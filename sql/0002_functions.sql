-- pgtasks 0002: the SQL API. One function per concern; every one callable from any
-- language with named arguments. Workers present (task_id, attempt): the attempt is the
-- fencing token, so a worker that lost its lease cannot change a task another owns.

------------------------------------------------------------------------------------------
-- Submitting

-- Argument checks shared by submit_task and submit_tasks. Each bad argument has its own
-- SQLSTATE so callers can tell them apart without parsing messages.
CREATE FUNCTION pgtasks.check_submit_args(
    task_type text, queue text, priority integer, run_at timestamptz,
    max_retries integer, timeout interval
) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF task_type IS NULL OR btrim(task_type) = '' THEN
        RAISE EXCEPTION 'pgtasks: task_type must be a non-empty string'
            USING ERRCODE = 'PT101', HINT = 'Pass the registered type name, e.g. submit_task(''resize'', ...).';
    END IF;
    IF queue IS NULL OR btrim(queue) = '' THEN
        RAISE EXCEPTION 'pgtasks: queue must be a non-empty string'
            USING ERRCODE = 'PT103', HINT = 'Leave queue out to use ''default''.';
    END IF;
    IF priority IS NULL THEN
        RAISE EXCEPTION 'pgtasks: priority must not be NULL'
            USING ERRCODE = 'PT104', HINT = 'Leave priority out for 0; higher runs first.';
    END IF;
    IF run_at IS NULL THEN
        RAISE EXCEPTION 'pgtasks: run_at must not be NULL'
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out to run as soon as possible.';
    END IF;
    IF max_retries IS NULL OR max_retries < 0 THEN
        RAISE EXCEPTION 'pgtasks: max_retries must be 0 or more, got %', coalesce(max_retries::text, 'NULL')
            USING ERRCODE = 'PT106', HINT = 'Use 0 for a task that must never be retried.';
    END IF;
    IF timeout IS NULL OR timeout <= interval '0' THEN
        RAISE EXCEPTION 'pgtasks: timeout must be a positive interval, got %', coalesce(timeout::text, 'NULL')
            USING ERRCODE = 'PT107', HINT = 'For example timeout => interval ''10 minutes''.';
    END IF;
END $$;

CREATE FUNCTION pgtasks.check_params(params jsonb, item integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF params IS NULL OR jsonb_typeof(params) <> 'object' THEN
        RAISE EXCEPTION 'pgtasks: params must be a JSON object, got % %',
                coalesce(jsonb_typeof(params), 'NULL'),
                CASE WHEN item IS NULL THEN '' ELSE format('(item %s of the list)', item) END
            USING ERRCODE = 'PT102', HINT = 'Wrap values in an object, e.g. ''{"width": 10}''.';
    END IF;
END $$;

CREATE FUNCTION pgtasks.submit_task(
    task_type   text,
    params      jsonb       DEFAULT '{}',
    queue       text        DEFAULT 'default',
    priority    integer     DEFAULT 0,
    run_at      timestamptz DEFAULT now(),
    max_retries integer     DEFAULT 3,
    timeout     interval    DEFAULT interval '4 hours'
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM pgtasks.check_submit_args(task_type, queue, priority, run_at, max_retries, timeout);
    PERFORM pgtasks.check_params(params);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout)
    VALUES (submit_task.task_type, submit_task.params, submit_task.queue, submit_task.priority,
            submit_task.run_at, submit_task.max_retries, submit_task.timeout)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- Many tasks of one type in one statement: one round trip, one NOTIFY per queue.
CREATE FUNCTION pgtasks.submit_tasks(
    task_type   text,
    params_list jsonb[],
    queue       text        DEFAULT 'default',
    priority    integer     DEFAULT 0,
    run_at      timestamptz DEFAULT now(),
    max_retries integer     DEFAULT 3,
    timeout     interval    DEFAULT interval '4 hours'
) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    PERFORM pgtasks.check_submit_args(task_type, queue, priority, run_at, max_retries, timeout);
    IF params_list IS NULL THEN
        RAISE EXCEPTION 'pgtasks: params_list must be an array of JSON objects, got NULL'
            USING ERRCODE = 'PT108', HINT = 'Pass ARRAY[''{}''::jsonb, ...] or an empty array.';
    END IF;
    FOR i IN 1 .. coalesce(array_length(params_list, 1), 0) LOOP
        PERFORM pgtasks.check_params(params_list[i], i);
    END LOOP;
    RETURN QUERY
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout)
    SELECT submit_tasks.task_type, p, submit_tasks.queue, submit_tasks.priority,
           submit_tasks.run_at, submit_tasks.max_retries, submit_tasks.timeout
      FROM unnest(params_list) WITH ORDINALITY AS u(p, ord)
     ORDER BY ord
    RETURNING id;
END $$;

------------------------------------------------------------------------------------------
-- Claiming and leases

-- Takes up to max_tasks ready tasks for one worker: highest priority first, then oldest
-- run_at. SKIP LOCKED lets many workers claim side by side without waiting on each other.
-- NO KEY UPDATE, not UPDATE: inserting a row that references a task (a client starting to
-- wait for it, a log line) briefly key-share-locks the task; FOR UPDATE would treat such a
-- task as taken and skip it, claiming a lower-priority one instead.
-- Each claim increments attempt, which becomes the fencing token for this run.
--
-- The pick is written out per case (all queues / one queue / several) so that each is a
-- static statement whose plan walks a partial index in claim order and stops after
-- max_tasks rows: no sort, whatever the backlog. tests/sql/test_plans.py checks the plans.
CREATE FUNCTION pgtasks.claim_tasks(
    worker_id  text,
    queues     text[]   DEFAULT NULL,    -- NULL: every queue
    max_tasks  integer  DEFAULT 1,
    lease      interval DEFAULT interval '60 seconds',
    task_types text[]   DEFAULT NULL     -- NULL: every type; workers pass the types they know
) RETURNS TABLE (
    id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean
)
LANGUAGE plpgsql
-- A queue table's statistics are stale more often than not (a burst of submits, then a
-- drain). With a low estimate the planner would fetch every ready row by bitmap and sort
-- them (measured: 6 ms instead of 0.1 ms per claim with 20,000 ready). These settings
-- apply to this function only and leave it the index walk in claim order.
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
DECLARE
    picked bigint[];
BEGIN
    IF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND (claim_tasks.task_types IS NULL OR t.task_type = ANY (claim_tasks.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = claim_tasks.queues[1]
               AND (claim_tasks.task_types IS NULL OR t.task_type = ANY (claim_tasks.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = ANY (claim_tasks.queues)
               AND (claim_tasks.task_types IS NULL OR t.task_type = ANY (claim_tasks.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    IF picked IS NULL THEN
        RETURN;
    END IF;

    -- Rows come back in claim order (the order of picked).
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgtasks.tasks t
           SET status = 'RUNNING',
               worker_id = claim_tasks.worker_id,
               attempt = t.attempt + 1,
               started_at = coalesce(t.started_at, now()),
               deadline = now() + t.timeout,
               lease_expires_at = least(now() + claim_tasks.lease, now() + t.timeout)
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps
    )
    SELECT c.* FROM claimed c
      JOIN unnest(picked) WITH ORDINALITY AS p(id, ord) ON p.id = c.id
     ORDER BY p.ord;
END $$;

-- When the next task of these queues becomes ready: idle workers sleep exactly until then.
CREATE FUNCTION pgtasks.next_run_at(queues text[] DEFAULT NULL, task_types text[] DEFAULT NULL)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(t.run_at) FROM pgtasks.tasks t
     WHERE t.status IN ('PENDING', 'COMMIT')
       AND (next_run_at.queues IS NULL OR t.queue = ANY (next_run_at.queues))
       AND (next_run_at.task_types IS NULL OR t.task_type = ANY (next_run_at.task_types))
$$;

-- Extends the leases of all of a worker's running tasks in one statement and reports the
-- ones it no longer owns (cancelled, rescued), so the worker can stop them.
CREATE FUNCTION pgtasks.heartbeat(
    worker_id text,
    task_ids  bigint[],
    attempts  integer[],
    lease     interval DEFAULT interval '60 seconds'
) RETURNS TABLE (lost_task_id bigint)
LANGUAGE sql AS $$
    UPDATE pgtasks.worker_registry w SET last_seen = now()
     WHERE w.worker_id = heartbeat.worker_id;

    WITH mine AS (
        SELECT u.task_id, u.attempt FROM unnest(heartbeat.task_ids, heartbeat.attempts) AS u(task_id, attempt)
    ), extended AS (
        UPDATE pgtasks.tasks t
           SET lease_expires_at = least(now() + heartbeat.lease, t.deadline)
          FROM mine
         WHERE t.id = mine.task_id AND t.attempt = mine.attempt
           AND t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id
        RETURNING t.id, t.attempt
    )
    SELECT mine.task_id FROM mine
     WHERE (mine.task_id, mine.attempt) NOT IN (SELECT id, attempt FROM extended)
$$;

------------------------------------------------------------------------------------------
-- Fencing: every write by a worker goes through this check.

-- Locks one task row for a change that keeps its key, or raises PT003 when there is none.
CREATE FUNCTION pgtasks.lock_task(task_id bigint) RETURNS pgtasks.tasks
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    SELECT * INTO t FROM pgtasks.tasks WHERE id = lock_task.task_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id
            USING ERRCODE = 'PT003', HINT = 'Check the id; finished tasks are pruned after their retention.';
    END IF;
    RETURN t;
END $$;

-- Locks the task row and confirms the caller still owns this attempt. Raises PT002 when
-- it does not (lease lost to rescue, cancelled, or a newer attempt), PT003 when no such task.
CREATE FUNCTION pgtasks.lock_owned_task(task_id bigint, attempt integer)
RETURNS pgtasks.tasks
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_task(task_id);
    IF t.status <> 'RUNNING' OR t.attempt <> lock_owned_task.attempt THEN
        RAISE EXCEPTION 'pgtasks: attempt % of task % no longer holds the lease (task is % at attempt %)',
                attempt, task_id, t.status, t.attempt
            USING ERRCODE = 'PT002',
                  HINT = 'Another worker took over or the task was cancelled; drop this result.';
    END IF;
    RETURN t;
END $$;

------------------------------------------------------------------------------------------
-- Finishing

CREATE FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    UPDATE pgtasks.tasks t
       SET status = 'DONE', result = finish_task.result, finished_at = now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
           progress_current = coalesce(t.progress_total, t.progress_current)
     WHERE t.id = finish_task.task_id;
END $$;

-- The batched completer: many results in one statement. Never raises for a stale
-- attempt; it returns the ids it did not finish so the worker can log them.
CREATE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[])
RETURNS TABLE (rejected_task_id bigint)
LANGUAGE sql AS $$
    WITH batch AS (
        SELECT * FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                   AS u(task_id, attempt, result)
    ), done AS (
        UPDATE pgtasks.tasks t
           SET status = 'DONE', result = batch.result, finished_at = now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.attempt = batch.attempt AND t.status = 'RUNNING'
        RETURNING t.id, t.attempt
    )
    SELECT batch.task_id FROM batch
     WHERE (batch.task_id, batch.attempt) NOT IN (SELECT id, attempt FROM done)
$$;

-- Exponential backoff with jitter: about 1 s, 2 s, 4 s ... (+-20%), capped at one hour.
CREATE FUNCTION pgtasks.backoff(retry_count integer, base interval DEFAULT interval '1 second')
RETURNS interval
LANGUAGE sql VOLATILE AS $$
    SELECT least(base * power(2, greatest(retry_count - 1, 0))::float8 * (0.8 + 0.4 * random()),
                 interval '1 hour')
$$;

-- Records a failed attempt. Retryable and retries left: back to COMMIT after a backoff
-- (or the caller's retry_delay); otherwise FAILED. Returns the new status.
CREATE FUNCTION pgtasks.fail_task(
    task_id     bigint,
    attempt     integer,
    error       text,
    traceback   text     DEFAULT NULL,
    retryable   boolean  DEFAULT true,
    retry_delay interval DEFAULT NULL,      -- exact delay (Retry(delay=...)); else backoff
    backoff_base interval DEFAULT interval '1 second'
) RETURNS pgtasks.status
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_owned_task(task_id, attempt);
    RETURN pgtasks.record_failure(t, coalesce(nullif(error, ''), 'unknown error'), traceback,
                                  retryable,
                                  coalesce(retry_delay, pgtasks.backoff(t.retry_count + 1, backoff_base)));
END $$;

-- Shared by fail_task and rescue: writes the attempt's error, then moves the task on.
CREATE FUNCTION pgtasks.record_failure(
    t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval
) RETURNS pgtasks.status
LANGUAGE plpgsql AS $$
DECLARE
    next_status pgtasks.status;
BEGIN
    INSERT INTO pgtasks.task_errors (task_id, attempt, error, traceback)
    VALUES (t.id, t.attempt, error, traceback)
    ON CONFLICT ON CONSTRAINT task_errors_pkey DO NOTHING;

    IF retryable AND t.retry_count < t.max_retries THEN
        next_status := 'COMMIT';
        UPDATE pgtasks.tasks
           SET status = 'COMMIT', retry_count = retry_count + 1, error = record_failure.error,
               run_at = now() + coalesce(retry_delay, pgtasks.backoff(t.retry_count + 1)),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL
         WHERE id = t.id;
    ELSE
        next_status := 'FAILED';
        UPDATE pgtasks.tasks
           SET status = 'FAILED', error = record_failure.error, finished_at = now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL
         WHERE id = t.id;
    END IF;
    RETURN next_status;
END $$;

-- Hands a running task back without using a retry: sleep_until (run_at in the future) or a
-- graceful shutdown (run_at now). Its checkpoints stay, so the next claim resumes.
CREATE FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    UPDATE pgtasks.tasks t
       SET status = 'COMMIT', run_at = coalesce(yield_task.run_at, now()),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE t.id = yield_task.task_id;
    IF yield_task.run_at IS NULL OR yield_task.run_at <= now() THEN
        PERFORM pg_notify('pgtasks_wakeup', (SELECT queue FROM pgtasks.tasks WHERE id = task_id));
    END IF;
END $$;

------------------------------------------------------------------------------------------
-- Durable progress inside a running task

-- Stores a step's result; a resumed attempt reads it instead of running the step again.
CREATE FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF step IS NULL OR step = '' THEN
        RAISE EXCEPTION 'pgtasks: step name must be a non-empty string'
            USING ERRCODE = 'PT109', HINT = 'Name each step, e.g. ctx.step(''download'', ...).';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (task_id, step, result, attempt)
    ON CONFLICT ON CONSTRAINT task_steps_pkey DO UPDATE SET result = excluded.result, attempt = excluded.attempt,
                                              at = now();
END $$;

CREATE FUNCTION pgtasks.report_progress(
    task_id bigint, attempt integer, current bigint, total bigint DEFAULT NULL, message text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current IS NULL OR current < 0 OR (total IS NOT NULL AND (total < 0 OR current > total)) THEN
        RAISE EXCEPTION 'pgtasks: progress % of % is out of bounds', current, total
            USING ERRCODE = 'PT110', HINT = 'Use 0 <= current <= total.';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    UPDATE pgtasks.tasks t
       SET progress_current = current, progress_total = total,
           progress_message = coalesce(message, t.progress_message)
     WHERE t.id = report_progress.task_id;
    PERFORM pgtasks.notify_watchers(task_id);
END $$;

-- Tells live watchers (pgtasks watch, logs --follow, dashboards) that a task's progress or
-- log changed. Like the finish NOTIFY, it fires only when someone registered through
-- watch_task: a NOTIFY takes a database-wide lock at commit, and thousands of tasks
-- reporting progress nobody looks at should not pay for it. The payload is the task id.
CREATE FUNCTION pgtasks.notify_watchers(task_id bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('pgtasks_progress', notify_watchers.task_id::text)
     WHERE EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = notify_watchers.task_id);
$$;

CREATE FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message)
    VALUES (task_id, attempt, upper(coalesce(level, 'INFO')), coalesce(message, ''));
    PERFORM pgtasks.notify_watchers(task_id);
END $$;

-- Many log lines of one attempt in one round trip: workers buffer a task's lines (ctx.log
-- and Python `logging`) and write them here in batches. Lines get ids in array order, so
-- id order is logging order. `ats` carries when each line was logged (worker clock);
-- `loggers` the Python logger names. Fenced like every worker write. Returns the count.
CREATE FUNCTION pgtasks.log_many(
    task_id  bigint,
    attempt  integer,
    levels   text[],
    messages text[],
    ats      timestamptz[] DEFAULT NULL,   -- NULL: now
    loggers  text[]        DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(messages), 0);
BEGIN
    IF coalesce(cardinality(levels), 0) <> n
       OR (ats IS NOT NULL AND cardinality(ats) <> n)
       OR (loggers IS NOT NULL AND cardinality(loggers) <> n) THEN
        RAISE EXCEPTION 'pgtasks: log_many needs arrays of one length (% messages, % levels, % ats, % loggers)',
                n, coalesce(cardinality(levels), 0), cardinality(ats), cardinality(loggers)
            USING ERRCODE = 'PT111', HINT = 'Pass one level (and at, logger) per message, or NULL for ats/loggers.';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message, logger, at)
    SELECT log_many.task_id, log_many.attempt, upper(coalesce(u.level, 'INFO')), coalesce(u.message, ''),
           log_many.loggers[u.ord], coalesce(log_many.ats[u.ord], clock_timestamp())
      FROM unnest(log_many.levels, log_many.messages) WITH ORDINALITY AS u(level, message, ord)
     ORDER BY u.ord;
    PERFORM pgtasks.notify_watchers(task_id);
    RETURN n;
END $$;

------------------------------------------------------------------------------------------
-- Operator actions

CREATE FUNCTION pgtasks.cancel_task(task_id bigint) RETURNS pgtasks.status
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_task(task_id);
    IF t.status IN ('DONE', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % already finished as %; nothing to cancel', task_id, t.status
            USING ERRCODE = 'PT004', HINT = 'Use retry_task() to run a FAILED or CANCELLED task again.';
    END IF;
    UPDATE pgtasks.tasks
       SET status = 'CANCELLED', finished_at = now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE id = t.id;
    IF t.status = 'RUNNING' THEN
        -- The worker listens and stops the task; fencing rejects anything it writes later.
        PERFORM pg_notify('pgtasks_cancel', t.id::text);
    END IF;
    RETURN t.status;
END $$;

CREATE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_task(task_id);
    IF t.status NOT IN ('FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % is %; only FAILED or CANCELLED tasks can be retried', task_id, t.status
            USING ERRCODE = 'PT001', HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    UPDATE pgtasks.tasks
       SET status = 'PENDING', retry_count = 0, finished_at = NULL, result = NULL,
           run_at = coalesce(retry_task.run_at, now())
     WHERE id = t.id;
END $$;

------------------------------------------------------------------------------------------
-- Maintenance, run by the workers themselves (no cron job to remember)

-- Tasks whose lease expired (worker died or hung) or that ran past their deadline are
-- handed on as a failed attempt: COMMIT to resume elsewhere, or FAILED when retries are
-- used up. SKIP LOCKED lets every worker call this without queueing behind each other.
CREATE FUNCTION pgtasks.rescue_expired(max_tasks integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
    n integer := 0;
BEGIN
    FOR t IN
        SELECT * FROM pgtasks.tasks
         -- lease_expires_at never exceeds deadline, so this also catches overrun deadlines.
         WHERE lease_expires_at IS NOT NULL AND lease_expires_at < now()
         ORDER BY lease_expires_at
         LIMIT max_tasks
         FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        PERFORM pgtasks.record_failure(
            t,
            CASE WHEN t.deadline < now()
                 THEN format('timed out: ran past its %s time limit (worker %s)', t.timeout, t.worker_id)
                 ELSE format('lease expired: worker %s stopped heartbeating', t.worker_id) END,
            NULL, true, NULL);
        n := n + 1;
    END LOOP;
    DELETE FROM pgtasks.worker_registry WHERE last_seen < now() - interval '10 minutes';
    -- Watch registrations of clients that went away without unwatching (killed mid-wait):
    -- they would only cost needless notifications, but they should not pile up.
    DELETE FROM pgtasks.task_waiters w
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.pid);
    RETURN n;
END $$;

-- Deletes finished tasks older than the retention, in small batches so no long lock is held.
CREATE FUNCTION pgtasks.prune_finished(
    older_than interval DEFAULT interval '7 days', max_tasks integer DEFAULT 1000
) RETURNS integer
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT id FROM pgtasks.tasks
         WHERE status IN ('DONE', 'FAILED', 'CANCELLED') AND finished_at < now() - older_than
         ORDER BY finished_at
         LIMIT max_tasks
         FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgtasks.tasks t USING doomed WHERE t.id = doomed.id RETURNING t.id
    ), history AS (
        -- task_events has no foreign key (see 0001), so its rows go here, not by cascade.
        DELETE FROM pgtasks.task_events e USING gone WHERE e.task_id = gone.id
    )
    SELECT count(*)::integer FROM gone
$$;

-- A client about to wait for a task registers here first, so the finish NOTIFYs it.
CREATE FUNCTION pgtasks.watch_task(task_id bigint) RETURNS pgtasks.status
LANGUAGE plpgsql AS $$
DECLARE
    s pgtasks.status;
BEGIN
    SELECT status INTO s FROM pgtasks.tasks WHERE id = watch_task.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id USING ERRCODE = 'PT003';
    END IF;
    INSERT INTO pgtasks.task_waiters (task_id) VALUES (watch_task.task_id)
    ON CONFLICT ON CONSTRAINT task_waiters_pkey DO UPDATE SET since = now();
    RETURN s;
END $$;

CREATE FUNCTION pgtasks.unwatch_task(task_id bigint) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM pgtasks.task_waiters w
     WHERE w.task_id = unwatch_task.task_id AND w.pid = pg_backend_pid();
$$;

-- Called at start and again after a lost connection: a worker cut off for longer than the
-- sweep window comes back into the registry instead of working invisibly.
CREATE FUNCTION pgtasks.register_worker(
    worker_id text, host text, pid integer, queues text[] DEFAULT NULL, concurrency integer DEFAULT 1,
    lease interval DEFAULT interval '60 seconds'
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgtasks.worker_registry (worker_id, host, pid, queues, concurrency, lease)
    VALUES (worker_id, host, pid, queues, concurrency, lease)
    ON CONFLICT (worker_id) DO UPDATE SET last_seen = now();
$$;

CREATE FUNCTION pgtasks.unregister_worker(worker_id text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM pgtasks.worker_registry w WHERE w.worker_id = unregister_worker.worker_id;
$$;

------------------------------------------------------------------------------------------
-- Read-only views for psql

CREATE VIEW pgtasks.task_status AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority,
       t.attempt, t.retry_count || '/' || t.max_retries AS retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total, t.progress_message,
       t.worker_id, t.run_at, t.created_at, t.started_at, t.finished_at,
       coalesce(t.finished_at, now()) - t.started_at AS elapsed,
       t.result, t.error
  FROM pgtasks.tasks t;

CREATE VIEW pgtasks.queue_stats AS
SELECT t.queue,
       count(*) FILTER (WHERE t.status = 'PENDING')                      AS pending,
       count(*) FILTER (WHERE t.status = 'COMMIT')                       AS waiting,
       count(*) FILTER (WHERE t.status = 'RUNNING')                      AS running,
       count(*) FILTER (WHERE t.status = 'DONE')                         AS done,
       count(*) FILTER (WHERE t.status = 'FAILED')                       AS failed,
       count(*) FILTER (WHERE t.status = 'CANCELLED')                    AS cancelled,
       count(*) FILTER (WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()) AS ready,
       now() - min(t.run_at) FILTER (WHERE t.status IN ('PENDING', 'COMMIT')
                                       AND t.run_at <= now())           AS oldest_ready_age,
       count(*) FILTER (WHERE t.status = 'DONE'
                          AND t.finished_at > now() - interval '1 minute') AS done_last_minute
  FROM pgtasks.tasks t
 GROUP BY t.queue;

CREATE VIEW pgtasks.failed_tasks AS
SELECT t.id, t.task_type, t.queue, t.attempt, t.error, t.finished_at,
       (SELECT count(*) FROM pgtasks.task_errors e WHERE e.task_id = t.id) AS error_count,
       (SELECT e.traceback FROM pgtasks.task_errors e WHERE e.task_id = t.id
         ORDER BY e.attempt DESC LIMIT 1) AS last_traceback
  FROM pgtasks.tasks t
 WHERE t.status = 'FAILED';

-- alive: seen within its lease. A dead worker's tasks stay RUNNING under its id until
-- their leases run out and rescue hands them on; `running` shows how many are left.
CREATE VIEW pgtasks.workers AS
SELECT w.worker_id, w.host, w.pid, w.queues, w.concurrency, w.started_at, w.last_seen,
       w.last_seen + w.lease > now() AS alive,
       (SELECT count(*) FROM pgtasks.tasks t
         WHERE t.status = 'RUNNING' AND t.worker_id = w.worker_id) AS running
  FROM pgtasks.worker_registry w;

CREATE VIEW pgtasks.task_history AS
SELECT e.task_id, e.at, e.from_status, e.to_status, e.attempt, e.worker_id, e.db_user
  FROM pgtasks.task_events e;
