-- pgtasks 0021: brings a migrated database to the catalog of sql/schema/00-06 (overview and
-- roles, tables, argument checks, the state machine, submit, claim, finish).
--
--   1. Seven functions whose body comments pointed at the project's history (issue
--      numbers, migration files a reader of sql/schema/ does not have): the same code, the
--      comments as the topic files have them. CREATE OR REPLACE keeps each one's owner, grants and settings.
--   2. The COMMENT ON texts those files write on the schema, the status type, every table,
--      the columns that need a word, the transitions view and the functions, so psql's \d+
--      and \df+ explain them in an upgraded database as in a fresh one. The texts are
--      copied from the topic files, which are their home.

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;

------------------------------------------------------------------------------------------
-- 1. Corrected body comments

-- sql/schema/02_checks.sql
CREATE OR REPLACE FUNCTION pgtasks.check_policy(
    task_type     text,
    queue         text     DEFAULT NULL,
    max_retries   integer  DEFAULT NULL,
    timeout       interval DEFAULT NULL,
    backoff_base  interval DEFAULT NULL,
    type_required boolean  DEFAULT true   -- false: configure checks defaults, no type
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
    -- A claim computes now() + timeout; past a year that is a typo, and '300000 years' made
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
END $$;

-- sql/schema/04_submit.sql
CREATE OR REPLACE FUNCTION pgtasks.submit_policy(
    task_type    text,
    queue        text,
    priority     integer,
    run_at       timestamptz,
    max_retries  integer,
    timeout      interval,
    backoff_base interval
) RETURNS pgtasks.tasks
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    r pgtasks.tasks;
BEGIN
    SELECT submit_policy.task_type,
           coalesce(submit_policy.queue, tt.queue, s.default_queue),
           coalesce(submit_policy.priority, tt.priority, s.default_priority),
           coalesce(submit_policy.run_at, now()),
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
       OR r.run_at NOT BETWEEN now() - interval '100 years' AND now() + interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', r.run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
    RETURN r;
END $$;

-- sql/schema/04_submit.sql
CREATE OR REPLACE FUNCTION pgtasks.submit_task(
    task_type         text,
    params            jsonb       DEFAULT '{}',
    queue             text        DEFAULT NULL,   -- NULL: the type's policy, else settings
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,   -- NULL: now
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_key        text        DEFAULT NULL,   -- NULL: no uniqueness
    unique_for        interval    DEFAULT NULL,   -- NULL: the key is free once its task finished
    concurrency_key   text        DEFAULT NULL,   -- NULL: no per-key limit
    concurrency_limit integer     DEFAULT NULL,   -- NULL with a key: 1
    depends_on        bigint[]    DEFAULT NULL,   -- parent task ids; NULL: none
    on_parent_failure text        DEFAULT NULL    -- 'cancel' (NULL) or 'run'
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
BEGIN
    IF depends_on IS NOT NULL OR on_parent_failure IS NOT NULL THEN
        IF unique_key IS NOT NULL OR unique_for IS NOT NULL THEN
            RAISE EXCEPTION 'pgtasks: depends_on cannot be combined with unique_key'
                USING ERRCODE = 'PT506',
                      HINT = 'A unique key may return an existing task, which has parents of its own.';
        END IF;
        p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
        PERFORM pgtasks.check_params(params);
        PERFORM pgtasks.check_flow_args(NULL, NULL, concurrency_key, concurrency_limit);
        RETURN pgtasks.submit_dependent(
            p, params, concurrency_key,
            CASE WHEN concurrency_key IS NOT NULL THEN coalesce(concurrency_limit, 1) END,
            coalesce(depends_on, '{}'), on_parent_failure);
    END IF;
    IF unique_key IS NOT NULL OR unique_for IS NOT NULL OR concurrency_key IS NOT NULL
       OR concurrency_limit IS NOT NULL THEN
        SELECT s.id INTO new_id
          FROM pgtasks.submit_or_get(task_type, params, queue, priority, run_at, max_retries, timeout,
                                     backoff_base, unique_key, unique_for, concurrency_key,
                                     concurrency_limit) s;
        RETURN new_id;
    END IF;
    -- Without flow control or parents: the plain submit, no extra calls (enqueue_single is measured).
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
    PERFORM pgtasks.check_params(params);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout, backoff_base)
    VALUES (p.task_type, submit_task.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- sql/schema/05_claim.sql
CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(
    worker_id  text,
    queues     text[]   DEFAULT NULL,    -- NULL: every queue
    max_tasks  integer  DEFAULT 1,
    lease      interval DEFAULT NULL,    -- NULL: settings.default_lease
    task_types text[]   DEFAULT NULL     -- NULL: every type; workers pass the types they know
) RETURNS TABLE (
    id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean
)
LANGUAGE plpgsql SECURITY DEFINER
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
AS $$
DECLARE
    picked bigint[];
    lease_for interval;
    started timestamptz := now();
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
    -- rate window recorded), else now(). The sort is the only way to order a CTE scan, so
    -- enable_sort = off does not keep the planner from it.
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgtasks.tasks t
           SET status = 'RUNNING',
               worker_id = claim_tasks.worker_id,
               attempt = t.attempt + 1,
               started_at = coalesce(t.started_at, started),
               deadline = now() + t.timeout,
               lease_expires_at = least(now() + lease_for, now() + t.timeout)
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
END $$;

-- sql/schema/06_finish.sql
CREATE OR REPLACE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[])
RETURNS TABLE (rejected_task_id bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
           SET status = 'DONE', result = batch.result, finished_at = now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.attempt = batch.attempt AND t.status = 'RUNNING'
        RETURNING t.id, t.attempt
    )
    -- NOT EXISTS, not NOT IN: a NULL attempt must come back rejected (see heartbeat).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.attempt = batch.attempt);
END $$;

-- sql/schema/06_finish.sql
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(
    worker_id  text,
    task_ids   bigint[],
    attempts   integer[],
    results    jsonb[],
    claim_max  integer  DEFAULT 0,
    queues     text[]   DEFAULT NULL,
    lease      interval DEFAULT NULL,
    task_types text[]   DEFAULT NULL
) RETURNS TABLE (
    rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
               finished_at = CASE WHEN w.finishing THEN now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(now() + lease_for, now() + t.timeout) END,
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
END $$;

-- sql/schema/06_finish.sql
CREATE OR REPLACE FUNCTION pgtasks.fail_task(
    task_id     bigint,
    attempt     integer,
    error       text,
    traceback   text     DEFAULT NULL,
    retryable   boolean  DEFAULT true,
    retry_delay interval DEFAULT NULL       -- exact delay (Retry(delay=...)); else backoff
) RETURNS pgtasks.status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t       pgtasks.tasks;
    longest integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    -- run_at becomes now() + retry_delay: the same 100-year bound as a submit's run_at.
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
END $$;

------------------------------------------------------------------------------------------
-- 2. Comments

-- sql/schema/00_overview.sql

COMMENT ON SCHEMA pgtasks IS
    'pgtasks, a task queue inside PostgreSQL: call its functions and read its views (docs/sql-api.md); only its owner touches the tables.';

-- sql/schema/01_tables.sql

COMMENT ON TYPE pgtasks.status IS
    'The status of a task; pgtasks.transitions lists the allowed changes between them.';
COMMENT ON FUNCTION pgtasks.is_blank(text) IS
    'True for NULL and for text made only of whitespace, control or invisible characters, Unicode included.';
COMMENT ON TABLE pgtasks.settings IS
    'The deployment-wide defaults and limits: exactly one row, changed with pgtasks.configure().';
COMMENT ON COLUMN pgtasks.settings.id IS 'Always true: the primary key admits exactly one row.';
COMMENT ON COLUMN pgtasks.settings.default_queue IS
    'The queue of a submit that names none and whose task type has no queue policy.';
COMMENT ON COLUMN pgtasks.settings.max_backoff IS 'The longest wait before a retry, whatever the backoff base.';
COMMENT ON COLUMN pgtasks.settings.default_lease IS
    'The lease of a claim, heartbeat or worker registration that gives none.';
COMMENT ON COLUMN pgtasks.settings.retention IS
    'How long finished tasks are kept before prune_finished deletes them with their history.';
COMMENT ON COLUMN pgtasks.settings.max_params_bytes IS 'The largest params a submit accepts, in bytes of JSON text.';
COMMENT ON COLUMN pgtasks.settings.max_result_bytes IS
    'The largest result or step result a finish or checkpoint accepts, in bytes of JSON text.';
COMMENT ON COLUMN pgtasks.settings.max_log_bytes IS
    'The largest log line, level, logger name or progress message, in bytes; failure texts are clipped to it.';
COMMENT ON FUNCTION pgtasks.keep_settings_row() IS
    'Trigger function: the settings row cannot be deleted or truncated (PT118).';
COMMENT ON FUNCTION pgtasks.current_settings() IS 'The settings row: the deployment-wide defaults and limits.';
COMMENT ON TABLE pgtasks.tasks IS
    'One row per task: what to run, where and when, its status, lease, progress and outcome. Only the pgtasks functions write it; triggers check and record every change.';
COMMENT ON COLUMN pgtasks.tasks.status IS
    'WAITING, PENDING, RUNNING, COMMIT, DONE, FAILED or CANCELLED; pgtasks.transitions lists the allowed changes.';
COMMENT ON COLUMN pgtasks.tasks.priority IS 'Higher runs first; ties go by run_at, then id.';
COMMENT ON COLUMN pgtasks.tasks.run_at IS 'When the task becomes claimable (as PENDING or COMMIT).';
COMMENT ON COLUMN pgtasks.tasks.attempt IS
    'How many times the task was claimed; the current value is the fencing token its worker presents.';
COMMENT ON COLUMN pgtasks.tasks.retry_count IS 'Failed attempts sent back to run again; at most max_retries.';
COMMENT ON COLUMN pgtasks.tasks.timeout IS 'The longest one attempt may run: its deadline is claim time + timeout.';
COMMENT ON COLUMN pgtasks.tasks.worker_id IS 'The worker holding the lease; set exactly while RUNNING.';
COMMENT ON COLUMN pgtasks.tasks.lease_expires_at IS
    'The attempt is lost (rescued) after this unless a heartbeat extends it; never past deadline. Set exactly while RUNNING.';
COMMENT ON COLUMN pgtasks.tasks.deadline IS
    'Claim time + timeout: the attempt is rescued as timed out after this, whatever its heartbeats.';
COMMENT ON COLUMN pgtasks.tasks.result IS 'The result of a DONE task.';
COMMENT ON COLUMN pgtasks.tasks.error IS
    'The last failure (FAILED, or an attempt to be retried); for a task cancelled by its workflow or a parent, why.';
COMMENT ON COLUMN pgtasks.tasks.progress_current IS 'Progress the task reported (report_progress): current of progress_total.';
COMMENT ON COLUMN pgtasks.tasks.started_at IS 'When the task was first claimed.';
COMMENT ON COLUMN pgtasks.tasks.finished_at IS 'When the task ended; set exactly while DONE, FAILED or CANCELLED.';
COMMENT ON COLUMN pgtasks.tasks.backoff_base IS
    'Retry n waits about backoff_base * 2^(n-1), capped at settings.max_backoff.';
COMMENT ON COLUMN pgtasks.tasks.unique_key IS
    'At most one PENDING, COMMIT or RUNNING task per key: a submit of a held key returns that task.';
COMMENT ON COLUMN pgtasks.tasks.concurrency_key IS 'Tasks sharing this key run at most concurrency_limit at a time.';
COMMENT ON COLUMN pgtasks.tasks.concurrency_limit IS 'How many tasks of concurrency_key may run at once; set with a key.';
COMMENT ON COLUMN pgtasks.tasks.schedule IS 'The schedule that enqueued the task; with schedule_tick, unique.';
COMMENT ON COLUMN pgtasks.tasks.schedule_tick IS 'The tick of schedule this task stands for.';
COMMENT ON COLUMN pgtasks.tasks.workflow_id IS 'The workflow (workflow_runs) the task belongs to.';
COMMENT ON COLUMN pgtasks.tasks.workflow_node IS 'The task''s node name in its workflow.';
COMMENT ON COLUMN pgtasks.tasks.waiting_on IS 'How many of its parents have not ended; NULL: the task has no parents.';
COMMENT ON COLUMN pgtasks.tasks.has_dependents IS 'True once a task depends on this one; else NULL.';
COMMENT ON COLUMN pgtasks.tasks.on_parent_failure IS
    'cancel: a parent ending FAILED or CANCELLED cancels this task; run: it runs anyway. NULL: no parents.';
COMMENT ON COLUMN pgtasks.tasks.cancelled_by IS
    'The parent whose failure cancelled this task; retrying that parent revives it.';
COMMENT ON TABLE pgtasks.task_events IS
    'The history of every task: one row per status change and one for its creation, whoever made it. Append-only; pruned with its task.';
COMMENT ON COLUMN pgtasks.task_events.attempt IS 'The task''s attempt after the change.';
COMMENT ON COLUMN pgtasks.task_events.from_status IS 'NULL in the row that records the task''s creation.';
COMMENT ON COLUMN pgtasks.task_events.worker_id IS 'The worker that held or took the task.';
COMMENT ON COLUMN pgtasks.task_events.db_user IS 'The login role (session_user) whose statement made the change.';
COMMENT ON TABLE pgtasks.task_errors IS
    'One row per failed attempt of a task, with its error and traceback. Append-only; pruned with its task.';
COMMENT ON TABLE pgtasks.task_steps IS
    'Durable step results of tasks (checkpoint): a resumed attempt skips the steps found here.';
COMMENT ON COLUMN pgtasks.task_steps.attempt IS 'The attempt that stored the result.';
COMMENT ON TABLE pgtasks.task_logs IS 'Log lines of tasks, in the order they were logged (id).';
COMMENT ON COLUMN pgtasks.task_logs.logger IS 'The Python logger name; NULL for ctx.log and pgtasks.log.';
COMMENT ON COLUMN pgtasks.task_logs.at IS
    'When the line was logged (the worker''s clock when it says), which can be earlier than the insert.';
COMMENT ON TABLE pgtasks.task_waiters IS
    'Sessions watching a task (watch_task): only watched tasks send pgtasks_done and pgtasks_progress notifications.';
COMMENT ON COLUMN pgtasks.task_waiters.pid IS 'The watching backend; rescue removes the rows of backends that are gone.';
COMMENT ON TABLE pgtasks.worker_registry IS
    'Registered workers, kept fresh by their heartbeats. A worker not seen within its lease is dead; its row is swept ten minutes later.';
COMMENT ON COLUMN pgtasks.worker_registry.queues IS 'The queues the worker claims from; NULL: every queue.';
COMMENT ON COLUMN pgtasks.worker_registry.concurrency IS 'How many tasks the worker runs at once.';
COMMENT ON COLUMN pgtasks.worker_registry.lease IS 'The worker counts as alive while last_seen + lease is in the future.';
COMMENT ON COLUMN pgtasks.worker_registry.last_seen IS 'The last registration or heartbeat.';
COMMENT ON TABLE pgtasks.task_types IS
    'The policy of each registered task type, applied to every submit of the type that leaves the argument out; a NULL column falls back to settings.';
COMMENT ON COLUMN pgtasks.task_types.registered_by IS 'The worker_id of the last registration that changed the policy.';
COMMENT ON TABLE pgtasks.queue_settings IS
    'Limits and pauses per queue (configure_queue, pause_queue). A queue without a row has none.';
COMMENT ON COLUMN pgtasks.queue_settings.max_running IS 'At most this many RUNNING tasks in the queue; NULL: no limit.';
COMMENT ON COLUMN pgtasks.queue_settings.rate_limit IS
    'At most this many task starts per rate_period, in a sliding window; NULL: no limit.';
COMMENT ON COLUMN pgtasks.queue_settings.paused IS
    'A paused queue is not claimed from; running tasks finish and submits are accepted.';
COMMENT ON TABLE pgtasks.queue_starts IS
    'Start times of tasks in rate-limited queues: the sliding window rate_limit is counted in.';
COMMENT ON TABLE pgtasks.unique_windows IS
    'Unique keys reserved by unique_for: taken until reserved_until, whatever their task does.';
COMMENT ON COLUMN pgtasks.unique_windows.task_id IS 'The task that took the key; NULL only inside the submitting transaction.';
COMMENT ON TABLE pgtasks.schedule_defs IS
    'One row per schedule (cron or every): its definition, the next tick to fire and what firing decided.';
COMMENT ON COLUMN pgtasks.schedule_defs.cron IS 'The normalized 5-field cron expression; NULL for an every schedule.';
COMMENT ON COLUMN pgtasks.schedule_defs.every IS
    'The fixed interval between ticks, which fall on multiples of it since the Unix epoch; NULL for a cron schedule.';
COMMENT ON COLUMN pgtasks.schedule_defs.timezone IS 'The IANA time zone cron ticks are computed in.';
COMMENT ON COLUMN pgtasks.schedule_defs.overlap IS
    'allow; skip: no new task while the previous one is active; cancel_previous: cancel it first.';
COMMENT ON COLUMN pgtasks.schedule_defs.catch_up IS
    'Missed ticks within this window are still enqueued; older ones are counted in skipped.';
COMMENT ON COLUMN pgtasks.schedule_defs.origin IS
    'sql (create_schedule) or code (a worker''s declarations, which never overwrite a sql schedule).';
COMMENT ON COLUMN pgtasks.schedule_defs.next_run_at IS 'The first tick not yet fired; NULL: the next firing round computes it.';
COMMENT ON COLUMN pgtasks.schedule_defs.last_task_id IS 'The last task enqueued (no foreign key: pruning deletes finished tasks).';
COMMENT ON COLUMN pgtasks.schedule_defs.skipped IS 'Missed ticks older than the catch-up window, not enqueued.';
COMMENT ON COLUMN pgtasks.schedule_defs.skipped_overlap IS 'Ticks not enqueued because of overlap skip.';
COMMENT ON COLUMN pgtasks.schedule_defs.revision IS
    'Bumped on every change and firing; fire_schedule writes only for the revision it was handed.';
COMMENT ON COLUMN pgtasks.schedule_defs.claimed_until IS 'A worker is firing the schedule until then (due_schedules).';
COMMENT ON TABLE pgtasks.workflow_runs IS
    'One row per submitted workflow (submit_workflow); its tasks carry the id in tasks.workflow_id.';
COMMENT ON COLUMN pgtasks.workflow_runs.nodes IS 'How many tasks the workflow was submitted with.';
COMMENT ON TABLE pgtasks.task_edges IS
    'The dependencies between tasks, one (parent, child) row each: a child waits until all its parents have ended.';

-- sql/schema/02_checks.sql

COMMENT ON FUNCTION pgtasks.configure(text, integer, integer, interval, interval, interval, interval, interval, integer, integer, integer) IS
    'Changes the deployment-wide defaults and limits (pgtasks.settings); each argument given replaces its value, NULL keeps it. Returns the new settings row.';

-- sql/schema/03_state_machine.sql

COMMENT ON FUNCTION pgtasks.transition_reason(pgtasks.status, pgtasks.status) IS
    'Why a task may go from from_status to to_status, or NULL when that transition is not allowed.';
COMMENT ON VIEW pgtasks.transitions IS
    'Every allowed status change of a task, with the reason it happens; any other change is refused with PT001.';
COMMENT ON FUNCTION pgtasks.reject_transition() IS
    'Trigger function: refuses an UPDATE of pgtasks.tasks that breaks the state machine (PT001) or the fencing columns (PT201). Its triggers call it only for such rows.';
COMMENT ON FUNCTION pgtasks.check_insert() IS
    'Trigger function: refuses a new task that does not start PENDING or WAITING (PT001) at attempt 0 (PT201). Its trigger calls it only for such rows.';
COMMENT ON FUNCTION pgtasks.reject_history_change() IS
    'Trigger function: task_events and task_errors are append-only (PT202); only prune_finished deletes history, with its task.';
COMMENT ON FUNCTION pgtasks.record_inserts() IS
    'Trigger function: records each inserted task in task_events and sends at most one pgtasks_wakeup per queue to idle workers (off with pgtasks.wake_workers = off).';
COMMENT ON FUNCTION pgtasks.record_updates() IS
    'Trigger function: records every status change in task_events, notifies clients waiting for a task that ended, and releases, cancels or revives the children of parents that ended or were retried.';
COMMENT ON FUNCTION pgtasks.watch_task(bigint) IS
    'Registers the calling backend as waiting for the task, so its end (pgtasks_done) and its progress and logs (pgtasks_progress) are notified; returns its current status.';
COMMENT ON FUNCTION pgtasks.unwatch_task(bigint) IS
    'Ends the calling backend''s watch_task registration for the task.';

-- sql/schema/04_submit.sql

COMMENT ON FUNCTION pgtasks.register_task_type(text, text, integer, integer, interval, interval, text) IS
    'Registers a task type''s policy (queue, priority, max_retries, timeout, backoff_base; NULL: the settings default), applied to every submit of the type that leaves the argument out.';
COMMENT ON FUNCTION pgtasks.submit_or_get(text, jsonb, text, integer, timestamptz, integer, interval, interval, text, interval, text, integer) IS
    'Submits one task like submit_task and also says whether it was created: false when an active task, or the unique_for window, already held the unique_key (id is then that task).';
COMMENT ON FUNCTION pgtasks.submit_task(text, jsonb, text, integer, timestamptz, integer, interval, interval, text, interval, text, integer, bigint[], text) IS
    'Submits one task and returns its id. Arguments left out (NULL) take the task type''s registered policy, else the settings defaults; unique_key, concurrency_key and depends_on add flow control and parents.';
COMMENT ON FUNCTION pgtasks.submit_tasks(text, jsonb[], text, integer, timestamptz, integer, interval, interval, text[], interval, text[], integer) IS
    'Submits one task of task_type per element of params_list, in one statement, and returns their ids in list order; unique_keys and concurrency_keys give one key per item.';

-- sql/schema/05_claim.sql

COMMENT ON FUNCTION pgtasks.claim_tasks(text, text[], integer, interval, text[]) IS
    'Claims up to max_tasks ready tasks of the given queues (NULL: every queue) and task types for worker_id, in claim order (priority, run_at, id), honouring queue limits, pauses and concurrency keys. Each returned attempt is the fencing token for the task''s later writes.';
COMMENT ON FUNCTION pgtasks.next_run_at(text[], text[]) IS
    'The earliest run_at of the PENDING or COMMIT tasks of these queues and task types (NULL: all), or NULL when there is none: when an idle worker should claim again.';

-- sql/schema/06_finish.sql

COMMENT ON FUNCTION pgtasks.finish_task(bigint, integer, jsonb) IS
    'Finishes a running attempt with its result: RUNNING -> DONE. PT002 when the attempt no longer holds the task, PT203 when the result is over settings.max_result_bytes.';
COMMENT ON FUNCTION pgtasks.finish_tasks(bigint[], integer[], jsonb[]) IS
    'Finishes many running attempts in one statement (parallel arrays); returns the ids it did not finish (stale attempt, or result over the limit, which fails that task).';
COMMENT ON FUNCTION pgtasks.finish_and_claim(text, bigint[], integer[], jsonb[], integer, text[], interval, text[]) IS
    'Finishes a batch like finish_tasks and claims up to claim_max tasks like claim_tasks, in one round trip: rejected finishes first (only rejected_task_id set), then the claimed tasks in claim order.';
COMMENT ON FUNCTION pgtasks.fail_task(bigint, integer, text, text, boolean, interval) IS
    'Records a failed attempt: back to COMMIT after the backoff (or retry_delay) while retryable and retries are left, else FAILED. Returns the new status.';
COMMENT ON FUNCTION pgtasks.yield_task(bigint, integer, timestamptz) IS
    'Hands a running attempt back without using a retry: RUNNING -> COMMIT, claimable again at run_at (now: a graceful shutdown). Its checkpoints stay.';
COMMENT ON FUNCTION pgtasks.checkpoint(bigint, integer, text, jsonb) IS
    'Stores the result of a named step of a running attempt; a resumed attempt reads it (task_steps_of) instead of running the step again.';
COMMENT ON FUNCTION pgtasks.task_steps_of(bigint, integer) IS
    'The completed steps of a running attempt''s task (name, result), read through the fence, with the database''s now().';
COMMENT ON FUNCTION pgtasks.report_progress(bigint, integer, bigint, bigint, text) IS
    'Sets the progress (current of total, message) of a running attempt; live watchers are notified.';
COMMENT ON FUNCTION pgtasks.log(bigint, integer, text, text) IS
    'Appends one log line to a running attempt''s task.';
COMMENT ON FUNCTION pgtasks.log_many(bigint, integer, text[], text[], timestamptz[], text[]) IS
    'Appends many log lines (parallel arrays of levels, messages, optional times and logger names) to a running attempt''s task in one call; returns how many.';
COMMENT ON FUNCTION pgtasks.cancel_task(bigint) IS
    'Cancels a task that has not finished (its worker is notified if it runs) and returns the status it had; PT004 when it already finished.';
COMMENT ON FUNCTION pgtasks.retry_task(bigint, timestamptz) IS
    'Runs a FAILED or CANCELLED task again: back to PENDING at run_at with its retries reset.';
