-- pgtasks 0020: finish_and_claim finishes and claims in one UPDATE.
--
-- A worker's completer sends its results and asks for work in one call (0003). That call
-- ran two UPDATE statements on pgtasks.tasks, finish_tasks' and claim_tasks', and every
-- UPDATE statement on the table pays a fixed cost before its first row: PostgreSQL parses
-- the stored expressions of the table's 21 CHECK constraints (18 KB of node text) and of
-- its transition triggers' WHEN clauses (18 KB) once per statement, prepares them, and
-- runs the history trigger record_updates once per statement. perf on a backend draining
-- with claim_max 10 put stringToNode alone at 15 % of its time (TriggerEnabled 8 %,
-- ExecConstraints 7 %). At the batches a worker sends at concurrency 10 (10-20 results,
-- 10-20 claims) that fixed cost is most of the call.
--
-- So when nothing needs two statements, the tasks are picked first (pick_ready, below: the
-- pick claim_tasks made itself until now, and makes through it from here) and one UPDATE
-- moves the finished ones RUNNING -> DONE and the picked ones PENDING/COMMIT -> RUNNING.
-- Each row gets exactly the columns finish_tasks (0004) or claim_tasks (0008) would give
-- it, and the result is the same: rejected finishes first, then the claimed tasks in claim
-- order. The two-statement path of 0003 remains, unchanged, for calls that need it:
--   * claim_max 0 (nothing to claim);
--   * a result over settings.max_result_bytes (finish_tasks fails that task alone);
--   * a finished task with dependents: its children are released by the finish
--     statement's history trigger and must be claimable by this same call (the chain
--     hand-off of 0012);
--   * flow control in use (the probes claim_tasks runs itself): claim_limited counts
--     running tasks, and must see this call's finishes as no longer running.
--
-- Measured with bench.claim_ab and this file as a variant (one session drains through
-- finish_and_claim, the variants interleaved, one fresh database each per round, server
-- CPU of the backend from /proc; 2026-12-03, 2 shared cores):
--   claim_max 10, 6,000 tasks, 5 rounds: 0.805 [0.798-0.807] of the server CPU per task,
--     1.195x the tasks/s;
--   claim_max 100, 20,000 tasks, 3 rounds: 0.984 [0.976-0.985], 1.014x the tasks/s.
--
-- Lock order: the picked tasks are locked (SKIP LOCKED, so never waited for) before the
-- finished ones, which only this worker's lease keeper or a cancel would also lock; the
-- two-statement path locked them the other way round. Neither waits on a picked task.

-- The pick of the unlimited claim, once for both callers (claim_tasks, finish_and_claim):
-- the ready tasks in claim order, locked, skipping any another claimer holds. Three forms,
-- so that each keeps its own index walk (tasks_claimable for every queue,
-- tasks_claimable_queue for one; tests/sql/test_plans.py), sorting and bitmap scans off
-- against stale statistics (0002). NULL when nothing is ready. No role may call it: it
-- only locks, and both callers check their arguments first.
CREATE FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[])
RETURNS bigint[]
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    picked bigint[];
BEGIN
    IF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = pick_ready.queues[1]
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = ANY (pick_ready.queues)
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    RETURN picked;
END $$;

-- claim_tasks' two probes (0005, kept by 0008), once for both callers: does a queue of this
-- claim have settings, or is a task with a concurrency key ready? Both look at a relation
-- that is empty while flow control is unused. True sends a claim to claim_limited.
CREATE FUNCTION pgtasks.flow_control_in_use(queues text[]) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM pgtasks.queue_settings qs
                    WHERE flow_control_in_use.queues IS NULL OR qs.queue = ANY (flow_control_in_use.queues))
        OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= now());
END $$;

-- claim_tasks as in 0008, its probes and pick now the two functions above.
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
LANGUAGE plpgsql
-- Stale statistics must not turn the pick into bitmap + sort (see 0002).
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    picked bigint[];
    lease_for interval;
    started timestamptz := now();
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL used to mean "no LIMIT": claim_tasks(max_tasks => NULL) took all 500 ready tasks.
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
    -- rate window recorded), else now() as before. The sort is the only way to order a CTE
    -- scan, so enable_sort = off does not keep the planner from it.
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
LANGUAGE plpgsql
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

    -- The two-statement path (0003), for the calls listed at the top of this file.
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
CALL pgtasks.secure_objects();
