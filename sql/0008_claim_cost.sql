-- pgtasks 0008: what flow control and wake-ups cost the tasks that use neither.
--
--   1. Running tasks are counted for max_running through tasks_lease, now keyed
--      (queue, lease_expires_at), instead of an index of their own: 0005's
--      tasks_running_queue cost every claim and every heartbeat, in every queue, one index
--      entry more per task. Rescue still walks the same index.
--   2. claim_tasks returns its rows sorted in claim order instead of joining them back to
--      the picked ids (a 100 x 100 nested loop per batch of 100).
--   3. The wake-up is part of the insert trigger that records history (one statement
--      trigger on insert instead of two), checks one queue's head without grouping when a
--      statement inserts into one queue, and is switched off by the setting
--      `pgtasks.wake_workers = off` instead of by disabling a trigger of its own.
--
-- The A/B that measured each step is `python -m bench.claim_ab` (docs/flow-control.md).

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;

------------------------------------------------------------------------------------------
-- 1. One index of running tasks, for rescue and for max_running.
--
-- A running task (lease set exactly when RUNNING) is in this index once, as in 0004. Its
-- leading column is the queue, so claim_limited counts a limited queue's running tasks with
-- an index range of that queue alone, exact under the queue's settings lock, as with 0005's
-- index. lock_expired (rescue) asks for expired leases of every queue: PostgreSQL 18 skips
-- through the queues in this index; older servers read every running task's entry (bounded
-- by the running tasks, never the backlog or the history) and sort the expired ones.
-- The predicate still names lease_expires_at, not status (see 0001: a status predicate made
-- batched finishes and heartbeats hash every running task).
DROP INDEX pgtasks.tasks_running_queue;
DROP INDEX pgtasks.tasks_lease;
CREATE INDEX tasks_lease ON pgtasks.tasks (queue, lease_expires_at) WHERE lease_expires_at IS NOT NULL;

------------------------------------------------------------------------------------------
-- 2. claim_tasks: 0005's, with the result sorted instead of joined back to picked.
--
-- 0005 returned the claimed rows in the order of `picked` by joining them with
-- unnest(picked) WITH ORDINALITY. The planner sees 10 rows on either side and, with sorting
-- off, joins them in a nested loop: 100 x 100 comparisons for a claim of 100. `picked` is in
-- claim order (priority DESC, run_at, id) on every path, and a claim changes none of those
-- columns, so sorting the claimed rows by them gives the same order for n log n.
-- The two probes in front (settings row for these queues? keyed task ready?) stay: both are
-- one index or heap probe of an empty relation when flow control is unused (measured 16 us
-- together per call, under 0.2 us per task at claim_max 100).
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

    IF EXISTS (SELECT 1 FROM pgtasks.queue_settings qs
                WHERE claim_tasks.queues IS NULL OR qs.queue = ANY (claim_tasks.queues))
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                     AND t.run_at <= now()) THEN
        SELECT l.picked, l.started INTO picked, started
          FROM pgtasks.claim_limited(queues, max_tasks, task_types) l;
        IF cardinality(picked) = 0 THEN
            picked := NULL;
        END IF;
    ELSIF queues IS NULL THEN
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

------------------------------------------------------------------------------------------
-- 3. Wake-ups inside the insert trigger.
--
-- 0001 gave the wake-up a statement trigger of its own next to record_inserts, so that a
-- deployment that only polls could disable it. A second trigger costs a second function
-- call (SECURITY DEFINER, its settings) per insert statement. Measured per single-row
-- submit_task, server side (2,000 submits in a loop, min of 7): no wake-up 68 us; 0001's
-- trigger 84 us; folded in here 82 us; plus the one-queue head check below 78 us. What is
-- left is the head probe itself (one index-only probe of tasks_claimable_queue, ~8 us).
--
-- The rule is 0001's: at most one NOTIFY per statement and queue, only for tasks ready now,
-- and none when the queue's head (what a worker claims next) was already ready before this
-- statement (a worker was woken for it, or all are busy and claim again when a slot frees).
-- A statement that inserts into one queue (every submit) takes min/max without grouping;
-- one that inserts into several takes 0001's grouped query.
-- The probe names its queue as a range of one value and orders by the queue first, so
-- that only tasks_claimable_queue yields that order (sorting is off): with 0001's
-- `t.queue = x` the planner may walk tasks_claimable in claim order and filter on the
-- queue, reading every other queue's ready tasks ahead of this one's (it did, with two
-- queues of 1,000 ready tasks: tests/sql/test_plans.py). An equality would let it drop
-- the queue from the ORDER BY again.
--
-- Off switch: the setting `pgtasks.wake_workers = off`, e.g.
--   ALTER DATABASE app SET pgtasks.wake_workers = off;    (new sessions)
--   SET pgtasks.wake_workers = off;                        (one session, e.g. a bulk load)
-- Any other value, or none, means on.
CREATE OR REPLACE FUNCTION pgtasks.record_inserts() RETURNS trigger
LANGUAGE plpgsql
-- Keep the head probe an index walk even when statistics are stale (see claim_tasks).
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
     WHERE n.run_at <= now();
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: the workers' timers find it
    ELSIF first_queue = last_queue THEN
        IF NOT EXISTS (
               SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                               WHERE t.queue >= first_queue AND t.queue <= first_queue
                                 AND t.status IN ('PENDING', 'COMMIT')
                               ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                               LIMIT 1) head
                WHERE head.run_at <= now() AND head.id < first_id) THEN
            PERFORM pg_notify('pgtasks_wakeup', first_queue);
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', q.queue)
           FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
                  WHERE n.run_at <= now()
                  GROUP BY n.queue) q
          WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                                WHERE t.queue >= q.queue AND t.queue <= q.queue
                                  AND t.status IN ('PENDING', 'COMMIT')
                                ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                                LIMIT 1) head
                 WHERE head.run_at <= now() AND head.id < q.first_id);
    END IF;
    RETURN NULL;
END $$;

-- A deployment that had switched wake-ups off by disabling 0001's trigger keeps them off.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger
                WHERE tgrelid = 'pgtasks.tasks'::regclass AND tgname = 'tasks_wake_workers'
                  AND tgenabled = 'D') THEN
        BEGIN
            EXECUTE format('ALTER DATABASE %I SET pgtasks.wake_workers = off', current_database());
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pgtasks: the wake-up trigger was disabled; run ALTER DATABASE % SET pgtasks.wake_workers = off to keep wake-ups off',
                quote_ident(current_database());
        END;
    END IF;
END $$;

DROP TRIGGER tasks_wake_workers ON pgtasks.tasks;
DROP FUNCTION pgtasks.wake_workers();

CALL pgtasks.secure_objects();
