-- The test clock: every function decides by pgtasks.now() (now() plus the shift held in
-- pgtasks.clock, zero outside tests), which only the owner can move (advance_clock). The
-- functions below are the topic files' definitions with now() read through it.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

-- tables
CREATE TABLE pgtasks.clock (
    shift    interval NOT NULL CHECK (shift >= interval '0'),
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);

CREATE OR REPLACE FUNCTION pgtasks.advance_clock(by interval)
 RETURNS timestamp with time zone
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF by IS NULL OR by <= interval '0' OR by > interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: the clock moves forward only, by more than 0 and at most 100 years (got %)', by
            USING ERRCODE = 'PT122',
                  HINT = 'Pass a positive interval, e.g. interval ''31 seconds''.';
    END IF;
    INSERT INTO pgtasks.clock AS c (shift) VALUES (by)
        ON CONFLICT (only_row) DO UPDATE SET shift = c.shift + excluded.shift;
    RETURN pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.cancel_task(task_id bigint)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_task(task_id);
    IF t.status IN ('DONE', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % already finished as %; nothing to cancel', task_id, t.status
            USING ERRCODE = 'PT004', HINT = 'Use retry_task() to run a FAILED or CANCELLED task again.';
    END IF;
    UPDATE pgtasks.tasks
       SET status = 'CANCELLED', finished_at = pgtasks.now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE id = t.id;
    IF t.status = 'RUNNING' THEN
        -- The worker listens and stops the task; fencing rejects anything it writes later.
        PERFORM pg_notify('pgtasks_cancel', t.id::text || ':' || t.attempt::text);
    END IF;
    RETURN t.status;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.cancel_workflow(workflow_id bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    wf_name text;
    reason text;
    running text[];
    n integer;
BEGIN
    SELECT w.name INTO wf_name FROM pgtasks.workflow_runs w WHERE w.id = cancel_workflow.workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: workflow % does not exist', coalesce(workflow_id::text, 'NULL')
            USING ERRCODE = 'PT508', HINT = 'SELECT id, name, state FROM pgtasks.workflows lists them.';
    END IF;
    reason := pg_catalog.format('cancelled: workflow %s%s cancelled', workflow_id,
                                coalesce(' (' || wf_name || ')', ''));
    PERFORM 1 FROM pgtasks.tasks t
      WHERE t.workflow_id = cancel_workflow.workflow_id
        AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING')
      ORDER BY t.id FOR NO KEY UPDATE;
    SELECT array_agg(t.id::text || ':' || t.attempt::text) INTO running
      FROM pgtasks.tasks t
     WHERE t.workflow_id = cancel_workflow.workflow_id AND t.status = 'RUNNING';
    UPDATE pgtasks.tasks t
       SET status = 'CANCELLED', finished_at = pgtasks.now(), error = reason,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE t.workflow_id = cancel_workflow.workflow_id
       AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('pgtasks_cancel', r) FROM unnest(running) r;
    RETURN n;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_policy(task_type text, queue text DEFAULT NULL::text, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, type_required boolean DEFAULT true)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    -- 255 bytes: names travel as NOTIFY payloads (limit 8000 bytes) and in every log line.
    IF (type_required OR task_type IS NOT NULL)
       AND (pgtasks.is_blank(task_type) OR octet_length(task_type) > 255) THEN
        RAISE EXCEPTION 'pgtasks: task_type must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(task_type, 40)), 'NULL')
            USING ERRCODE = 'PT101', HINT = 'Pass the registered type name, e.g. submit_task(''resize'', ...).';
    END IF;
    IF queue IS NOT NULL AND (pgtasks.is_blank(queue) OR octet_length(queue) > 255) THEN
        RAISE EXCEPTION 'pgtasks: queue must be a non-empty string (not blank, at most 255 bytes), got %',
                pg_catalog.quote_literal(pg_catalog.left(queue, 40))
            USING ERRCODE = 'PT103',
                  HINT = 'Leave queue out (NULL) to use the type''s queue or settings.default_queue.';
    END IF;
    -- 1000 retries is already years of backoff at the default cap; more is a typo.
    IF max_retries IS NOT NULL AND max_retries NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'pgtasks: max_retries must be 0 or more (and at most 1000), got %', max_retries
            USING ERRCODE = 'PT106', HINT = 'Use 0 for a task that must never be retried.';
    END IF;
    -- A claim computes pgtasks.now() + timeout; past a year that is a typo, and '300000 years' made
    -- every claim that reached the task fail with `timestamp out of range`.
    IF timeout IS NOT NULL AND NOT (timeout > interval '0' AND timeout <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: timeout must be positive and at most 1 year, got %', timeout
            USING ERRCODE = 'PT107', HINT = 'For example timeout => interval ''10 minutes''.';
    END IF;
    IF backoff_base IS NOT NULL
       AND NOT (backoff_base > interval '0' AND backoff_base <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: backoff_base must be positive and at most 1 day, got %', backoff_base
            USING ERRCODE = 'PT112',
                  HINT = 'Retry n waits about backoff_base * 2^(n-1), capped at settings.max_backoff.';
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_run_at(run_at timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF run_at IS NOT NULL AND (NOT isfinite(run_at)
       OR run_at NOT BETWEEN pgtasks.now() - interval '100 years' AND pgtasks.now() + interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb DEFAULT NULL::jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF pgtasks.is_blank(step) OR octet_length(step) > 255 THEN
        RAISE EXCEPTION 'pgtasks: step name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT109', HINT = 'Name each step, e.g. ctx.step(''download'', ...).';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_result_size(result, pg_catalog.format('result of step %s', step));
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (task_id, step, result, attempt)
    ON CONFLICT ON CONSTRAINT task_steps_pkey DO UPDATE SET result = excluded.result, attempt = excluded.attempt,
                                              at = pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], OUT picked bigint[], OUT started timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    lq_names  text[] := '{}';
    lq_budget integer[] := '{}';
    lq_rated  boolean[] := '{}';
    blocked_q text[];
    blocked_k text[] := '{}';
    key_names text[] := '{}';
    key_running integer[] := '{}';   -- running + picked here, per key
    s record;
    c record;
    qi integer;
    ki integer;
    n integer;
    again boolean;
BEGIN
    picked := '{}';
    blocked_q := '{}';
    -- Every settings row of the claim's queues, paused ones too: pause_queue then waits for
    -- the claims holding the row, and a claim that locks it after the pause sees the pause,
    -- so nothing starts after a pause commits.
    PERFORM 1 FROM pgtasks.queue_settings qs
      WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
      ORDER BY qs.queue
        FOR NO KEY UPDATE OF qs;
    started := clock_timestamp();

    -- Settings as of now (after the locks: a configure_queue that committed meanwhile counts).
    FOR s IN SELECT qs.* FROM pgtasks.queue_settings qs
              WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
              ORDER BY qs.queue
    LOOP
        IF s.paused THEN
            blocked_q := blocked_q || s.queue;
            CONTINUE;
        END IF;
        n := max_tasks;
        IF s.max_running IS NOT NULL THEN
            n := least(n, s.max_running - (SELECT count(*) FROM pgtasks.tasks t
                                            WHERE t.queue = s.queue AND t.lease_expires_at IS NOT NULL));
        END IF;
        IF s.rate_limit IS NOT NULL THEN
            DELETE FROM pgtasks.queue_starts q WHERE q.queue = s.queue AND q.at < started - s.rate_period;
            n := least(n, s.rate_limit - (SELECT count(*) FROM pgtasks.queue_starts q
                                           WHERE q.queue = s.queue AND q.at >= started - s.rate_period));
        END IF;
        lq_names := lq_names || s.queue;
        lq_budget := lq_budget || n;
        lq_rated := lq_rated || (s.rate_limit IS NOT NULL);
        IF n <= 0 THEN
            blocked_q := blocked_q || s.queue;
        END IF;
    END LOOP;

    -- No keyed task ready: one set-based pick, as on the fast path, minus blocked queues.
    -- Kept when no queue went over its budget (the usual case: the limit is not reached);
    -- else the walk below redoes it (the rows stay locked by us, it may pick them again).
    -- (measured: the row-by-row walk alone drained a never-full max_running queue at ~0.77
    -- of drain_1.)
    IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= pgtasks.now()) THEN
        -- A claim of limited queues only takes no more than their budgets together.
        n := max_tasks;
        IF queues IS NOT NULL AND queues <@ (lq_names || blocked_q) THEN
            n := least(n, (SELECT coalesce(sum(greatest(b, 0)), 0) FROM unnest(lq_budget) b));
        END IF;
        IF n <= 0 THEN
            RETURN;
        END IF;
        SELECT coalesce(array_agg(pick.id), '{}') INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND t.queue <> ALL (blocked_q)
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT n
             FOR NO KEY UPDATE SKIP LOCKED) pick;
        IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                         JOIN unnest(lq_names, lq_budget) AS b(queue, budget) ON b.queue = t.queue
                        WHERE t.id = ANY (picked)
                        GROUP BY b.queue, b.budget
                       HAVING count(*) > b.budget) THEN
            started := clock_timestamp();
            INSERT INTO pgtasks.queue_starts (queue, at)
            SELECT t.queue, started FROM pgtasks.tasks t
             WHERE t.id = ANY (picked) AND lq_rated[array_position(lq_names, t.queue)];
            RETURN;
        END IF;
        picked := '{}';
    END IF;

    LOOP
        again := false;
        FOR c IN
            SELECT t.id, t.queue, t.concurrency_key, t.concurrency_limit FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND t.queue <> ALL (blocked_q)
               AND (t.concurrency_key IS NULL OR t.concurrency_key <> ALL (blocked_k))
               AND t.id <> ALL (picked)
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks - cardinality(picked)
             FOR NO KEY UPDATE SKIP LOCKED
        LOOP
            IF c.concurrency_key IS NOT NULL THEN
                ki := array_position(key_names, c.concurrency_key);
                IF ki IS NULL THEN
                    IF pg_try_advisory_xact_lock(hashtextextended('pgtasks.concurrency_key:' || c.concurrency_key, 0)) THEN
                        SELECT count(*)::integer INTO n FROM pgtasks.tasks t
                         WHERE t.concurrency_key = c.concurrency_key AND t.status = 'RUNNING';
                    ELSE
                        n := 2147483647;   -- another claimer is deciding for this key
                    END IF;
                    key_names := key_names || c.concurrency_key;
                    key_running := key_running || n;
                    ki := cardinality(key_names);
                END IF;
                -- The task's own limit decides (a key's tasks normally share one).
                IF key_running[ki] >= coalesce(c.concurrency_limit, 1) THEN
                    blocked_k := blocked_k || c.concurrency_key;
                    again := true;
                    EXIT;
                END IF;
                key_running[ki] := key_running[ki] + 1;
            END IF;
            picked := picked || c.id;
            qi := array_position(lq_names, c.queue);
            IF qi IS NOT NULL THEN
                lq_budget[qi] := lq_budget[qi] - 1;
                IF lq_budget[qi] <= 0 THEN
                    blocked_q := blocked_q || c.queue;
                    again := true;
                    EXIT;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN NOT again OR cardinality(picked) >= max_tasks;
    END LOOP;

    -- The start time, taken after every count: a task whose finish a count saw ended
    -- before this (so the recorded RUNNING periods never overlap more than the limits).
    -- Still under the queue locks, so later than every earlier holder's.
    started := clock_timestamp();
    -- The rate window's log: one row per start.
    INSERT INTO pgtasks.queue_starts (queue, at)
    SELECT t.queue, started FROM pgtasks.tasks t
     WHERE t.id = ANY (picked) AND lq_rated[array_position(lq_names, t.queue)];
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    picked bigint[];
    lease_for interval;
    started timestamptz := pgtasks.now();
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL must not mean "no LIMIT": claim_tasks(max_tasks => NULL) would take every ready task.
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Claim as many tasks as the worker has free slots.';
    END IF;
    lease_for := pgtasks.lease_or_default(lease);

    IF pgtasks.flow_control_in_use(queues) THEN
        SELECT l.picked, l.started INTO picked, started
          FROM pgtasks.claim_limited(queues, max_tasks, task_types) l;
        IF cardinality(picked) = 0 THEN
            picked := NULL;
        END IF;
    ELSE
        picked := pgtasks.pick_ready(queues, max_tasks, task_types);
    END IF;
    IF picked IS NULL THEN
        RETURN;
    END IF;

    -- Rows come back in claim order. started_at: the limited path's start time (the one its
    -- rate window recorded), else pgtasks.now(). The sort is the only way to order a CTE scan, so
    -- enable_sort = off does not keep the planner from it.
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgtasks.tasks t
           SET status = 'RUNNING',
               worker_id = claim_tasks.worker_id,
               attempt = t.attempt + 1,
               started_at = coalesce(t.started_at, started),
               deadline = pgtasks.now() + t.timeout,
               lease_expires_at = least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout)
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.configure_queue(queue text, max_running integer DEFAULT NULL::integer, rate_limit integer DEFAULT NULL::integer, rate_period interval DEFAULT '00:00:01'::interval)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    IF max_running IS NOT NULL AND max_running NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'pgtasks: max_running must be between 1 and 1000000, got %', max_running
            USING ERRCODE = 'PT301',
                  HINT = 'Use NULL for no limit; to stop a queue use pgtasks.pause_queue(queue).';
    END IF;
    IF (rate_limit IS NOT NULL AND rate_limit NOT BETWEEN 1 AND 1000000)
       OR rate_period IS NULL OR NOT (rate_period > interval '0' AND rate_period <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: rate_limit must be between 1 and 1000000 and rate_period in (0, 1 day], got % per %',
                rate_limit, rate_period
            USING ERRCODE = 'PT302',
                  HINT = 'For example rate_limit => 10, rate_period => interval ''1 second''; NULL rate_limit: no limit.';
    END IF;
    INSERT INTO pgtasks.queue_settings AS s (queue, max_running, rate_limit, rate_period)
    VALUES (configure_queue.queue, configure_queue.max_running, configure_queue.rate_limit,
            configure_queue.rate_period)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE
       SET max_running = excluded.max_running, rate_limit = excluded.rate_limit,
           rate_period = excluded.rate_period, updated_at = pgtasks.now();
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    -- Raised limits may free slots at once.
    PERFORM pg_notify('pgtasks_wakeup', queue);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.due_schedules(max_schedules integer DEFAULT 100, claim interval DEFAULT '00:00:03'::interval, worker_id text DEFAULT NULL::text)
 RETURNS TABLE(name text, cron text, every interval, timezone text, catch_up interval, next_run_at timestamp with time zone, revision bigint, db_now timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_max_tasks(max_schedules);
    IF claim IS NULL OR claim <= interval '0' OR claim > interval '1 hour' THEN
        RAISE EXCEPTION 'pgtasks: claim must be > 0 and at most 1 hour, got %', claim
            USING ERRCODE = 'PT114', HINT = 'Leave claim out for 3 seconds.';
    END IF;
    RETURN QUERY
    UPDATE pgtasks.schedule_defs d SET claimed_until = pgtasks.now() + claim, fired_by = worker_id
      FROM (SELECT c.name FROM pgtasks.schedule_defs c
             WHERE NOT c.paused AND (c.next_run_at IS NULL OR c.next_run_at <= pgtasks.now())
               AND (c.claimed_until IS NULL OR c.claimed_until < pgtasks.now())
             ORDER BY c.next_run_at NULLS FIRST
             LIMIT max_schedules
               FOR UPDATE SKIP LOCKED) due
     WHERE d.name = due.name
    RETURNING d.name, d.cron, d.every, d.timezone, d.catch_up, d.next_run_at, d.revision, pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.expiry_reason(t pgtasks.tasks)
 RETURNS text
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT CASE WHEN t.deadline < pgtasks.now()
                THEN pg_catalog.format('timed out: ran past its %s time limit (worker %s)', t.timeout, t.worker_id)
                ELSE pg_catalog.format('lease expired: worker %s stopped heartbeating', t.worker_id) END
$function$;
CREATE OR REPLACE FUNCTION pgtasks.fail_task(task_id bigint, attempt integer, error text, traceback text DEFAULT NULL::text, retryable boolean DEFAULT true, retry_delay interval DEFAULT NULL::interval)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t       pgtasks.tasks;
    longest integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    -- run_at becomes pgtasks.now() + retry_delay: the same 100-year bound as a submit's run_at.
    IF retry_delay IS NOT NULL
       AND NOT (retry_delay >= interval '0' AND retry_delay <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: retry_delay must be between 0 and 100 years, got %', retry_delay
            USING ERRCODE = 'PT119', HINT = 'Leave retry_delay out (NULL) for the task''s backoff.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, attempt);
    -- Only text over the limit pays for clip_text (a call with its own settings): measured
    -- with the calls unconditional, a short failure cost ~7 % more than without them.
    IF length(fail_task.error) > longest THEN
        fail_task.error := pgtasks.clip_text(fail_task.error, longest);
    END IF;
    IF length(fail_task.traceback) > longest THEN
        fail_task.traceback := pgtasks.clip_text(fail_task.traceback, longest);
    END IF;
    RETURN pgtasks.record_failure(t, coalesce(nullif(fail_task.error, ''), 'unknown error'),
                                  fail_task.traceback, coalesce(retryable, true), retry_delay);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    picked bigint[];
    lease_for interval;
BEGIN
    IF claim_max IS NULL OR claim_max < 0 THEN
        RAISE EXCEPTION 'pgtasks: claim_max must be 0 or more, got %', coalesce(claim_max::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Pass the number of free slots; 0 only finishes the batch.';
    END IF;
    PERFORM pgtasks.check_worker_id(worker_id);
    lease_for := pgtasks.lease_or_default(lease);

    -- The two-statement path, for the calls listed above this function.
    IF claim_max = 0
       OR EXISTS (SELECT 1 FROM unnest(finish_and_claim.results) AS u(result), pgtasks.settings s
                   WHERE octet_length(u.result::text) > s.max_result_bytes)
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.id = ANY (finish_and_claim.task_ids) AND t.has_dependents)
       OR pgtasks.flow_control_in_use(queues) THEN
        RETURN QUERY
        SELECT f.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
               NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
          FROM pgtasks.finish_tasks(task_ids, attempts, results) f;
        IF claim_max > 0 THEN
            RETURN QUERY
            SELECT NULL::bigint, c.* FROM pgtasks.claim_tasks(worker_id, queues, claim_max, lease, task_types) c;
        END IF;
        RETURN;
    END IF;

    -- One statement. finish_tasks checked the arrays itself; here they are checked before
    -- anything is written, with the same message.
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);

    picked := pgtasks.pick_ready(queues, claim_max, task_types);

    -- Finishing rows carry their attempt (the fencing token: a stale one matches nothing and
    -- comes back rejected, a NULL one too); picked rows are ours, locked above. A task can
    -- be in both only if it went back to PENDING/COMMIT since its attempt: then the claim
    -- takes it and the finish is rejected, as with two statements.
    RETURN QUERY
    WITH work AS (
        SELECT u.task_id, u.attempt, u.result, true AS finishing
          FROM unnest(finish_and_claim.task_ids, finish_and_claim.attempts, finish_and_claim.results)
                 AS u(task_id, attempt, result)
        UNION ALL
        SELECT p.id, NULL::integer, NULL::jsonb, false FROM unnest(picked) AS p(id)
    ), changed AS (
        UPDATE pgtasks.tasks t
           SET status = CASE WHEN w.finishing THEN 'DONE' ELSE 'RUNNING' END::pgtasks.status,
               result = w.result,
               finished_at = CASE WHEN w.finishing THEN pgtasks.now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, pgtasks.now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE pgtasks.now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout) END,
               progress_current = CASE WHEN w.finishing THEN coalesce(t.progress_total, t.progress_current)
                                       ELSE t.progress_current END
          FROM work w
         WHERE t.id = w.task_id
           AND (NOT w.finishing OR (t.attempt = w.attempt AND t.status = 'RUNNING'))
        RETURNING w.finishing, t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  NOT w.finishing AND t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.attempt = w.attempt)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb DEFAULT NULL::jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_result_size(result, 'result');
    UPDATE pgtasks.tasks t
       SET status = 'DONE', result = finish_task.result, finished_at = pgtasks.now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
           progress_current = coalesce(t.progress_total, t.progress_current)
     WHERE t.id = finish_task.task_id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[])
 RETURNS TABLE(rejected_task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
    big bigint[];
    o record;
BEGIN
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);
    -- Sizes first, from the arguments alone: the common batch has no oversized result and
    -- reads no table here.
    SELECT array_agg(u.ord) INTO big
      FROM unnest(finish_tasks.results) WITH ORDINALITY AS u(result, ord)
     WHERE octet_length(u.result::text) > max_bytes;
    IF big IS NOT NULL THEN
        FOR o IN
            SELECT k AS task, octet_length(u.result::text) AS size_bytes
              FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                     WITH ORDINALITY AS u(task_id, attempt, result, ord)
              JOIN pgtasks.tasks k ON k.id = u.task_id AND k.attempt = u.attempt AND k.status = 'RUNNING'
             WHERE u.ord = ANY (big)
               FOR NO KEY UPDATE OF k
        LOOP
            -- Now FAILED, so the UPDATE below (RUNNING rows only) leaves it and reports it.
            PERFORM pgtasks.record_failure(
                o.task, pg_catalog.format('pgtasks: result of %s bytes is larger than max_result_bytes (%s)',
                                          o.size_bytes, max_bytes),
                NULL, false, NULL);
        END LOOP;
    END IF;

    RETURN QUERY
    WITH batch AS (
        SELECT * FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                   AS u(task_id, attempt, result)
    ), done AS (
        UPDATE pgtasks.tasks t
           SET status = 'DONE', result = batch.result, finished_at = pgtasks.now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.attempt = batch.attempt AND t.status = 'RUNNING'
        RETURNING t.id, t.attempt
    )
    -- NOT EXISTS, not NOT IN: a NULL attempt must come back rejected (see heartbeat).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.attempt = batch.attempt);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], next_run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, skipped_before bigint DEFAULT 0)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    s         pgtasks.schedule_defs;
    due       timestamptz[];
    run       timestamptz[];
    nxt       timestamptz := fire_schedule.next_run_at;
    missed    bigint := coalesce(skipped_before, 0);
    n_overlap bigint := 0;
    window_at timestamptz;  -- ticks at or after it run
    latest    timestamptz;
    first_in  timestamptz;
    t         timestamptz;
    prev      pgtasks.status;
    new_id    bigint;
    last_id   bigint;
BEGIN
    SELECT * INTO s FROM pgtasks.schedule_defs d WHERE d.name = fire_schedule.name FOR UPDATE;
    IF NOT FOUND OR s.paused OR s.revision <> fire_schedule.revision THEN
        RETURN;
    END IF;
    window_at := pgtasks.now() - greatest(s.catch_up, interval '2 seconds');
    IF skipped_before < 0 THEN
        RAISE EXCEPTION 'pgtasks: skipped_before must be 0 or more, got %', skipped_before
            USING ERRCODE = 'PT409', HINT = 'Pass how many due ticks older than the catch-up window you left out.';
    END IF;

    IF s.every IS NOT NULL THEN
        -- Every schedule: computed here, so any client (or pg_cron) can fire it with
        -- fire_schedule(name, revision).
        IF s.next_run_at IS NULL OR s.next_run_at > pgtasks.now() THEN
            nxt := coalesce(s.next_run_at, pgtasks.every_tick_after(s.every, pgtasks.now()));
            due := '{}';
        ELSE
            latest := date_bin(s.every, pgtasks.now(), s.next_run_at);
            first_in := greatest(s.next_run_at, date_bin(s.every, window_at, s.next_run_at));
            IF first_in < window_at THEN
                first_in := first_in + s.every;
            END IF;
            first_in := least(first_in, latest);
            due := ARRAY(SELECT generate_series(first_in, latest, s.every));
            missed := round(extract(epoch FROM first_in - s.next_run_at) / extract(epoch FROM s.every))::bigint;
            nxt := latest + s.every;
        END IF;
    ELSE
        IF nxt IS NULL OR (s.next_run_at IS NOT NULL AND ticks IS NULL) THEN
            RAISE EXCEPTION 'pgtasks: a cron schedule is fired with the ticks and next_run_at the caller computed'
                USING ERRCODE = 'PT409', HINT = 'The Python worker computes them with croniter; pass ticks => ''{}'' when none are due.';
        END IF;
        due := ARRAY(SELECT DISTINCT u FROM unnest(coalesce(ticks, '{}')) u WHERE u IS NOT NULL ORDER BY u);
        IF s.next_run_at IS NULL AND cardinality(due) > 0 THEN
            RAISE EXCEPTION 'pgtasks: schedule % has no next_run_at yet; it gets one before any tick fires', s.name
                USING ERRCODE = 'PT409', HINT = 'Pass ticks => ''{}'' and the first tick after now as next_run_at.';
        END IF;
        IF cardinality(due) > 0 AND (due[1] < s.next_run_at OR due[cardinality(due)] > pgtasks.now()) THEN
            RAISE EXCEPTION 'pgtasks: ticks of % must lie between its next_run_at % and now', s.name, s.next_run_at
                USING ERRCODE = 'PT409', HINT = 'Fire only due ticks; earlier ones were fired already.';
        END IF;
        -- Not "after pgtasks.now()": the caller computed it from due_schedules' db_now, and this
        -- transaction's pgtasks.now() may already have passed it. Then it is simply due next round.
        IF NOT isfinite(nxt) OR nxt > pgtasks.now() + interval '100 years'
           OR nxt <= coalesce(due[cardinality(due)], s.next_run_at, '-infinity') THEN
            RAISE EXCEPTION 'pgtasks: next_run_at of % must be after the ticks fired (and finite), got %', s.name, nxt
                USING ERRCODE = 'PT409', HINT = 'Pass the first tick after db_now of due_schedules.';
        END IF;
        -- The missed-tick policy, whatever the caller sent.
        latest := due[cardinality(due)];
        run := ARRAY(SELECT u FROM unnest(due) u WHERE u >= window_at OR u = latest ORDER BY u);
        missed := missed + cardinality(due) - cardinality(run);
        due := run;
    END IF;

    last_id := s.last_task_id;
    FOREACH t IN ARRAY due LOOP
        IF s.overlap <> 'allow' AND last_id IS NOT NULL THEN
            SELECT k.status INTO prev FROM pgtasks.tasks k WHERE k.id = last_id;
            IF prev IN ('PENDING', 'RUNNING', 'COMMIT') THEN
                IF s.overlap = 'skip' THEN
                    n_overlap := n_overlap + 1;
                    CONTINUE;
                END IF;
                PERFORM pgtasks.cancel_task(last_id);
            END IF;
        END IF;
        new_id := pgtasks.enqueue_tick(s, t);
        IF new_id IS NOT NULL THEN
            last_id := new_id;
            RETURN NEXT new_id;
        END IF;
    END LOOP;

    UPDATE pgtasks.schedule_defs d
       SET next_run_at = nxt, claimed_until = NULL, revision = d.revision + 1,
           last_tick = coalesce(due[cardinality(due)], d.last_tick),
           last_run_at = CASE WHEN last_id IS DISTINCT FROM s.last_task_id THEN pgtasks.now() ELSE d.last_run_at END,
           last_task_id = last_id, skipped = d.skipped + missed,
           skipped_overlap = d.skipped_overlap + n_overlap
     WHERE d.name = s.name;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.flow_control_in_use(queues text[])
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    RETURN EXISTS (SELECT 1 FROM pgtasks.queue_settings qs
                    WHERE flow_control_in_use.queues IS NULL OR qs.queue = ANY (flow_control_in_use.queues))
        OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= pgtasks.now());
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.heartbeat(worker_id text, task_ids bigint[], attempts integer[], lease interval DEFAULT NULL::interval)
 RETURNS TABLE(lost_task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    lease_for interval;
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    PERFORM pgtasks.check_batch('heartbeat', task_ids, attempts);
    lease_for := pgtasks.lease_or_default(lease);

    UPDATE pgtasks.worker_registry w SET last_seen = pgtasks.now()
     WHERE w.worker_id = heartbeat.worker_id;

    RETURN QUERY
    WITH mine AS (
        SELECT u.task_id, u.attempt FROM unnest(heartbeat.task_ids, heartbeat.attempts) AS u(task_id, attempt)
    ), extended AS (
        UPDATE pgtasks.tasks t
           SET lease_expires_at = least(pgtasks.now() + lease_for, t.deadline)
          FROM mine
         WHERE t.id = mine.task_id AND t.attempt = mine.attempt
           AND t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id
        RETURNING t.id, t.attempt
    )
    -- NOT EXISTS, not NOT IN: with a NULL attempt in the batch, NOT IN is never true
    -- and that task would be neither extended nor reported lost.
    SELECT mine.task_id FROM mine
     WHERE NOT EXISTS (SELECT 1 FROM extended e WHERE e.id = mine.task_id AND e.attempt = mine.attempt);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.lock_expired(max_tasks integer)
 RETURNS SETOF pgtasks.tasks
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT * FROM pgtasks.tasks t
     WHERE t.lease_expires_at IS NOT NULL AND t.lease_expires_at < pgtasks.now()
     ORDER BY t.lease_expires_at
     LIMIT lock_expired.max_tasks
     FOR NO KEY UPDATE SKIP LOCKED
$function$;
CREATE OR REPLACE FUNCTION pgtasks.now()
 RETURNS timestamp with time zone
 LANGUAGE sql
 STABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT pg_catalog.now() + coalesce((SELECT c.shift FROM pgtasks.clock c), interval '0')
$function$;
CREATE OR REPLACE FUNCTION pgtasks.pause_queue(queue text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    INSERT INTO pgtasks.queue_settings AS s (queue, paused) VALUES (pause_queue.queue, true)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE SET paused = true, updated_at = pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.pause_schedule(name text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    UPDATE pgtasks.schedule_defs d SET paused = true, revision = d.revision + 1, updated_at = pgtasks.now()
     WHERE d.name = pause_schedule.name;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[])
 RETURNS bigint[]
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    picked bigint[];
BEGIN
    IF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND t.queue = pick_ready.queues[1]
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND t.queue = ANY (pick_ready.queues)
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    RETURN picked;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.prune_finished(older_than interval DEFAULT NULL::interval, max_tasks integer DEFAULT 1000)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    cutoff timestamptz;
    n integer;
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    -- A negative age would delete tasks the moment they finish, before anyone read them.
    IF older_than IS NOT NULL AND NOT (older_than >= interval '0' AND older_than <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: older_than must be between 0 and 100 years, got %', older_than
            USING ERRCODE = 'PT120', HINT = 'Leave older_than out (NULL) for settings.retention.';
    END IF;
    cutoff := pgtasks.now() - coalesce(older_than, (SELECT s.retention FROM pgtasks.settings s));
    -- Lets the append-only triggers through for this statement only (see reject_history_change).
    PERFORM set_config('pgtasks.pruning', 'on', true);
    WITH doomed AS (
        SELECT t.id FROM pgtasks.tasks t
         WHERE t.status IN ('DONE', 'FAILED', 'CANCELLED') AND t.finished_at < cutoff
         ORDER BY t.finished_at
         LIMIT max_tasks
         FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgtasks.tasks t USING doomed WHERE t.id = doomed.id RETURNING t.id
    ), history AS (
        -- task_events has no foreign key (see its table), so its rows go here, not by cascade.
        DELETE FROM pgtasks.task_events e USING gone WHERE e.task_id = gone.id
    )
    SELECT count(*)::integer INTO n FROM gone;
    PERFORM set_config('pgtasks.pruning', '', true);
    PERFORM pgtasks.prune_flow_state(max_tasks);
    RETURN n;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.prune_flow_state(max_rows integer)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    -- A window whose reservation has passed is only ever taken over by the next submit of
    -- its key (submit_one); deleting it leaves the key free exactly as that would. SKIP
    -- LOCKED: a submit taking the row over right now keeps it.
    DELETE FROM pgtasks.unique_windows w
     WHERE w.unique_key IN (SELECT o.unique_key FROM pgtasks.unique_windows o
                             WHERE o.reserved_until < pgtasks.now()
                             LIMIT max_rows
                             FOR UPDATE SKIP LOCKED);
    -- Starts older than their queue's window count for nothing (claim_limited trims them
    -- itself, but only for queues it still claims from with a rate limit). A queue without
    -- settings or without a rate limit keeps none.
    DELETE FROM pgtasks.queue_starts s
     WHERE s.ctid IN (SELECT o.ctid FROM pgtasks.queue_starts o
                        LEFT JOIN pgtasks.queue_settings qs ON qs.queue = o.queue
                       WHERE qs.rate_limit IS NULL OR o.at < pgtasks.now() - qs.rate_period
                       LIMIT max_rows);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_failure(t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
               run_at = pgtasks.now() + coalesce(retry_delay, pgtasks.backoff(t.retry_count + 1, t.backoff_base)),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL
         WHERE id = t.id;
    ELSE
        next_status := 'FAILED';
        UPDATE pgtasks.tasks
           SET status = 'FAILED', error = record_failure.error, finished_at = pgtasks.now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL
         WHERE id = t.id;
    END IF;
    RETURN next_status;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_inserts()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    first_queue text;
    last_queue  text;
    first_id    bigint;
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
    SELECT n.id, n.attempt, NULL, n.status FROM new_rows n;

    IF current_setting('pgtasks.wake_workers', true) IS NOT DISTINCT FROM 'off' THEN
        RETURN NULL;
    END IF;
    SELECT min(n.queue), max(n.queue), min(n.id) INTO first_queue, last_queue, first_id
      FROM new_rows n
     WHERE n.run_at <= pgtasks.now() AND n.status IN ('PENDING', 'COMMIT');
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: a timer or a release wakes
    ELSIF first_queue = last_queue THEN
        IF NOT EXISTS (
               SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                               WHERE t.queue >= first_queue AND t.queue <= first_queue
                                 AND t.status IN ('PENDING', 'COMMIT')
                               ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                               LIMIT 1) head
                WHERE head.run_at <= pgtasks.now() AND head.id < first_id) THEN
            PERFORM pg_notify('pgtasks_wakeup', first_queue);
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', q.queue)
           FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
                  WHERE n.run_at <= pgtasks.now() AND n.status IN ('PENDING', 'COMMIT')
                  GROUP BY n.queue) q
          WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                                WHERE t.queue >= q.queue AND t.queue <= q.queue
                                  AND t.status IN ('PENDING', 'COMMIT')
                                ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                                LIMIT 1) head
                 WHERE head.run_at <= pgtasks.now() AND head.id < q.first_id);
    END IF;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.register_task_type(task_type text, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, worker_id text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_policy(task_type, queue, max_retries, timeout, backoff_base);
    INSERT INTO pgtasks.task_types AS t
           (task_type, queue, priority, max_retries, timeout, backoff_base, registered_by)
    VALUES (register_task_type.task_type, register_task_type.queue, register_task_type.priority,
            register_task_type.max_retries, register_task_type.timeout,
            register_task_type.backoff_base, register_task_type.worker_id)
    ON CONFLICT ON CONSTRAINT task_types_pkey DO UPDATE
       SET queue = excluded.queue, priority = excluded.priority, max_retries = excluded.max_retries,
           timeout = excluded.timeout, backoff_base = excluded.backoff_base,
           registered_by = excluded.registered_by, updated_at = pgtasks.now()
     WHERE (t.queue, t.priority, t.max_retries, t.timeout, t.backoff_base)
           IS DISTINCT FROM
           (excluded.queue, excluded.priority, excluded.max_retries, excluded.timeout, excluded.backoff_base);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.register_worker(worker_id text, host text, pid integer, queues text[] DEFAULT NULL::text[], concurrency integer DEFAULT 1, lease interval DEFAULT NULL::interval)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    IF pgtasks.is_blank(host) OR octet_length(host) > 255 OR pid IS NULL
       OR concurrency IS NULL OR concurrency < 1
       OR EXISTS (SELECT 1 FROM unnest(queues) q WHERE pgtasks.is_blank(q) OR octet_length(q) > 255) THEN
        RAISE EXCEPTION 'pgtasks: register_worker needs a host name, a pid, a concurrency of 1 or more '
                        'and non-blank queue names (got host %, pid %, concurrency %, queues %)',
                left(host, 40), pid, concurrency, left(queues::text, 80)
            USING ERRCODE = 'PT206', HINT = 'For example register_worker(''host:123:ab'', ''host'', 123, NULL, 10).';
    END IF;
    INSERT INTO pgtasks.worker_registry AS w (worker_id, host, pid, queues, concurrency, lease)
    VALUES (register_worker.worker_id, register_worker.host, register_worker.pid, register_worker.queues,
            register_worker.concurrency, pgtasks.lease_or_default(register_worker.lease))
    ON CONFLICT ON CONSTRAINT worker_registry_pkey DO UPDATE SET last_seen = pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.release_children(parents bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET enable_nestloop TO 'on'
AS $function$
DECLARE
    doomed bigint[];
    causes bigint[];
    kids bigint[];
    ended integer[];
    n integer;
BEGIN
    WITH RECURSIVE doom(id, cause) AS (
        SELECT e.child_id, p.id
          FROM pgtasks.tasks p
          JOIN pgtasks.task_edges e ON e.parent_id = p.id
          JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE p.id = ANY (parents) AND p.status IN ('FAILED', 'CANCELLED')
           AND c.status = 'WAITING' AND c.on_parent_failure = 'cancel'
        UNION
        SELECT e.child_id, d.cause
          FROM doom d
          JOIN pgtasks.task_edges e ON e.parent_id = d.id
          JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE c.status = 'WAITING' AND c.on_parent_failure = 'cancel'
    )
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.cause ORDER BY x.id) INTO doomed, causes
      FROM (SELECT DISTINCT ON (d.id) d.id, d.cause FROM doom d ORDER BY d.id, d.cause) x;
    IF doomed IS NOT NULL THEN
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (doomed) ORDER BY t.id FOR NO KEY UPDATE;
        UPDATE pgtasks.tasks c
           SET status = 'CANCELLED', finished_at = pgtasks.now(), cancelled_by = u.cause,
               error = pg_catalog.format('cancelled: parent task %s%s ended %s', u.cause,
                                         coalesce(' (' || p.workflow_node || ')', ''), p.status)
          FROM unnest(doomed, causes) AS u(id, cause)
          JOIN pgtasks.tasks p ON p.id = u.cause
         WHERE c.id = u.id AND c.status = 'WAITING';
    END IF;

    SELECT array_agg(k.child_id ORDER BY k.child_id), array_agg(k.n ORDER BY k.child_id) INTO kids, ended
      FROM (SELECT e.child_id, count(*)::integer AS n FROM pgtasks.task_edges e
             WHERE e.parent_id = ANY (parents) GROUP BY e.child_id) k;
    IF kids IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (kids) AND t.status = 'WAITING'
     ORDER BY t.id FOR NO KEY UPDATE;
    WITH released AS (
        UPDATE pgtasks.tasks c
           SET waiting_on = greatest(c.waiting_on - u.n, 0),
               status = CASE WHEN c.waiting_on - u.n <= 0 THEN 'PENDING'::pgtasks.status
                             ELSE 'WAITING'::pgtasks.status END
          FROM unnest(kids, ended) AS u(id, n)
         WHERE c.id = u.id AND c.status = 'WAITING'
        RETURNING c.queue, c.status, c.run_at
    )
    -- Honours the off switch (pgtasks.wake_workers = off) like an insert does.
    SELECT count(pg_notify('pgtasks_wakeup', q.queue)) INTO n
      FROM (SELECT DISTINCT r.queue FROM released r
             WHERE r.status = 'PENDING' AND r.run_at <= pgtasks.now()
               AND current_setting('pgtasks.wake_workers', true) IS DISTINCT FROM 'off') q;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.rescue_expired(max_tasks integer DEFAULT 1000)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.tasks;
    n integer := 0;
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    BEGIN
        FOR t IN SELECT * FROM pgtasks.lock_expired(max_tasks) LOOP
            PERFORM pgtasks.record_failure(t, pgtasks.expiry_reason(t), NULL, true, NULL);
            n := n + 1;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        n := 0;
        FOR t IN SELECT * FROM pgtasks.lock_expired(max_tasks) LOOP
            n := n + pgtasks.rescue_one(t);
        END LOOP;
    END;
    DELETE FROM pgtasks.worker_registry WHERE last_seen < pgtasks.now() - interval '10 minutes';
    -- Watch registrations of clients that went away without unwatching (killed mid-wait):
    -- they would only cost needless notifications, but they should not pile up.
    DELETE FROM pgtasks.task_waiters w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = w.pid);
    RETURN n;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.resume_queue(queue text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    UPDATE pgtasks.queue_settings s SET paused = false, updated_at = pgtasks.now()
     WHERE s.queue = resume_queue.queue;
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    PERFORM pg_notify('pgtasks_wakeup', queue);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.resume_schedule(name text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    s pgtasks.schedule_defs;
BEGIN
    s := pgtasks.lock_schedule(name);
    IF s.paused THEN
        UPDATE pgtasks.schedule_defs d
           SET paused = false, revision = d.revision + 1, updated_at = pgtasks.now(),
               next_run_at = CASE WHEN d.every IS NOT NULL THEN pgtasks.every_tick_after(d.every, pgtasks.now()) END
         WHERE d.name = resume_schedule.name;
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamp with time zone DEFAULT now())
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.tasks;
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    t := pgtasks.lock_task(task_id);
    IF t.status NOT IN ('FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % is %; only FAILED or CANCELLED tasks can be retried', task_id, t.status
            USING ERRCODE = 'PT001', HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    -- Checked first so the common case costs one index probe and no subtransaction. A
    -- concurrent submit of the key can still win between this probe and the UPDATE; the
    -- unique index then refuses the UPDATE, caught below and given the same code.
    IF t.unique_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM pgtasks.tasks o
         WHERE o.unique_key = t.unique_key AND o.status IN ('PENDING', 'COMMIT', 'RUNNING')
           AND o.id <> t.id) THEN
        PERFORM pgtasks.raise_unique_held(t);
    END IF;
    BEGIN
        UPDATE pgtasks.tasks
           SET status = 'PENDING', retry_count = 0, finished_at = NULL, result = NULL,
               run_at = coalesce(retry_task.run_at, pgtasks.now())
         WHERE id = t.id;
    EXCEPTION WHEN unique_violation THEN
        PERFORM pgtasks.raise_unique_held(t);
    END;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_one(p pgtasks.tasks, params jsonb, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, OUT id bigint, OUT created boolean)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
#variable_conflict use_column
-- (ON CONFLICT's index inference names columns, which plpgsql cannot qualify.)
DECLARE
    took boolean;
BEGIN
    IF unique_key IS NULL THEN
        INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                   backoff_base, concurrency_key, concurrency_limit)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.concurrency_key, submit_one.concurrency_limit)
        RETURNING tasks.id INTO submit_one.id;
        created := true;
        RETURN;
    END IF;

    IF unique_for IS NOT NULL THEN
        -- The window row is the lock: a concurrent submit of the key waits here, then finds
        -- the window taken and returns its task.
        INSERT INTO pgtasks.unique_windows AS w (unique_key, task_id, reserved_until)
        VALUES (submit_one.unique_key, NULL, pgtasks.now() + submit_one.unique_for)
        ON CONFLICT ON CONSTRAINT unique_windows_pkey DO UPDATE
           SET task_id = NULL, reserved_until = excluded.reserved_until
         WHERE w.reserved_until <= pgtasks.now()
        RETURNING true INTO took;
        IF took IS NULL THEN
            SELECT w.task_id INTO submit_one.id FROM pgtasks.unique_windows w
             WHERE w.unique_key = submit_one.unique_key;
            created := false;
            RETURN;
        END IF;
    END IF;

    LOOP
        INSERT INTO pgtasks.tasks AS t (task_type, params, queue, priority, run_at, max_retries, timeout,
                                        backoff_base, unique_key, concurrency_key, concurrency_limit)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.unique_key, submit_one.concurrency_key, submit_one.concurrency_limit)
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING')
        DO NOTHING
        RETURNING t.id INTO submit_one.id;
        IF FOUND THEN
            created := true;
            EXIT;
        END IF;
        SELECT t.id INTO submit_one.id FROM pgtasks.tasks t
         WHERE t.unique_key = submit_one.unique_key AND t.status IN ('PENDING', 'COMMIT', 'RUNNING');
        IF FOUND THEN
            created := false;
            EXIT;
        END IF;
    END LOOP;

    IF unique_for IS NOT NULL THEN
        UPDATE pgtasks.unique_windows w SET task_id = submit_one.id WHERE w.unique_key = submit_one.unique_key;
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_policy(task_type text, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval)
 RETURNS pgtasks.tasks
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    r pgtasks.tasks;
BEGIN
    SELECT submit_policy.task_type,
           coalesce(submit_policy.queue, tt.queue, s.default_queue),
           coalesce(submit_policy.priority, tt.priority, s.default_priority),
           coalesce(submit_policy.run_at, pgtasks.now()),
           coalesce(submit_policy.max_retries, tt.max_retries, s.default_max_retries),
           coalesce(submit_policy.timeout, tt.timeout, s.default_timeout),
           coalesce(submit_policy.backoff_base, tt.backoff_base, s.default_backoff_base)
      INTO r.task_type, r.queue, r.priority, r.run_at, r.max_retries, r.timeout, r.backoff_base
      FROM pgtasks.settings s
      LEFT JOIN pgtasks.task_types tt ON tt.task_type = submit_policy.task_type;

    PERFORM pgtasks.check_policy(r.task_type, r.queue, r.max_retries, r.timeout, r.backoff_base);
    -- Infinite or far-off times crash clients that decode them (an idle Python worker died
    -- on 'infinity', `pgtasks stats` on '-infinity').
    IF NOT isfinite(r.run_at)
       OR r.run_at NOT BETWEEN pgtasks.now() - interval '100 years' AND pgtasks.now() + interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', r.run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
    RETURN r;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.task_steps_of(task_id bigint, attempt integer)
 RETURNS TABLE(name text, result jsonb, db_now timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    RETURN QUERY
    SELECT s.name, s.result, pgtasks.now() FROM pgtasks.task_steps s
     WHERE s.task_id = task_steps_of.task_id
     ORDER BY s.at, s.name;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.trigger_schedule(name text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    s      pgtasks.schedule_defs;
    new_id bigint;
BEGIN
    s := pgtasks.lock_schedule(name);
    new_id := pgtasks.enqueue_tick(s, pgtasks.now());
    UPDATE pgtasks.schedule_defs d
       SET last_task_id = coalesce(new_id, d.last_task_id), last_run_at = pgtasks.now(), revision = d.revision + 1
     WHERE d.name = trigger_schedule.name;
    RETURN new_id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.upsert_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval, origin text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    norm   text;
    first  timestamptz;
    n      integer;
BEGIN
    PERFORM pgtasks.check_schedule_name(name);
    norm := pgtasks.check_schedule(cron, every, timezone, overlap, catch_up);
    PERFORM pgtasks.check_policy(task_type, queue);
    PERFORM pgtasks.check_params(coalesce(params, '{}'));
    first := CASE WHEN every IS NOT NULL THEN pgtasks.every_tick_after(every, pgtasks.now()) END;
    INSERT INTO pgtasks.schedule_defs AS s
           (name, task_type, cron, every, params, queue, priority, timezone, overlap, catch_up,
            origin, next_run_at)
    VALUES (upsert_schedule.name, upsert_schedule.task_type, norm, upsert_schedule.every,
            coalesce(upsert_schedule.params, '{}'), upsert_schedule.queue, upsert_schedule.priority,
            upsert_schedule.timezone, upsert_schedule.overlap, upsert_schedule.catch_up,
            upsert_schedule.origin, first)
    ON CONFLICT ON CONSTRAINT schedule_defs_pkey DO UPDATE
       SET task_type = EXCLUDED.task_type, cron = EXCLUDED.cron, every = EXCLUDED.every,
           params = EXCLUDED.params, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
           timezone = EXCLUDED.timezone, overlap = EXCLUDED.overlap, catch_up = EXCLUDED.catch_up,
           origin = CASE WHEN EXCLUDED.origin = 'sql' THEN 'sql' ELSE s.origin END,
           next_run_at = CASE WHEN (s.cron, s.every, s.timezone) IS NOT DISTINCT FROM
                                   (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
                              THEN s.next_run_at ELSE EXCLUDED.next_run_at END,
           revision = s.revision + 1, updated_at = pgtasks.now()
     WHERE EXCLUDED.origin = 'sql' OR s.origin = 'code';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n = 1;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.watch_task(task_id bigint)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    s pgtasks.status;
BEGIN
    SELECT status INTO s FROM pgtasks.tasks WHERE id = watch_task.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id USING ERRCODE = 'PT003';
    END IF;
    INSERT INTO pgtasks.task_waiters (task_id) VALUES (watch_task.task_id)
    ON CONFLICT ON CONSTRAINT task_waiters_pkey DO UPDATE SET since = pgtasks.now();
    RETURN s;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamp with time zone DEFAULT now())
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    UPDATE pgtasks.tasks t
       SET status = 'COMMIT', run_at = coalesce(yield_task.run_at, pgtasks.now()),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE t.id = yield_task.task_id;
    IF yield_task.run_at IS NULL OR yield_task.run_at <= pgtasks.now() THEN
        PERFORM pg_notify('pgtasks_wakeup', (SELECT queue FROM pgtasks.tasks WHERE id = task_id));
    END IF;
END $function$;
COMMENT ON FUNCTION pgtasks.advance_clock(interval) IS 'Tests only: moves pgtasks.now() forward by the interval and returns the new time. Owner only.';
COMMENT ON FUNCTION pgtasks.now() IS 'The time pgtasks decides by: now() plus the test clock''s shift (zero outside tests).';
COMMENT ON FUNCTION pgtasks.task_steps_of(bigint,integer) IS 'The completed steps of a running attempt''s task (name, result), read through the fence, with the database''s pgtasks.now().';
COMMENT ON TABLE pgtasks.clock IS 'The test clock: pgtasks.now() is now() plus shift. Empty (no shift) outside tests; only the owner moves it, with advance_clock.';
