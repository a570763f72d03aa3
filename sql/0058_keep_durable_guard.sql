-- The tasks triggers test pgtasks.claim_commit before they call keep_durable
-- (sql/schema/03_state_machine.sql), so a transaction that claimed nothing pays a setting
-- lookup per statement instead of a function call. Replaced functions only.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.record_creations()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    -- A lookup, not a call, when no claim came first in this transaction (the usual case):
    -- the call and its SET clause cost more than the test, on every statement.
    IF current_setting('pgtasks.claim_commit', true) <> '' THEN
        PERFORM pgtasks.keep_durable();
    END IF;
    -- The history and the submitted counter's delta (task_counts, 01_tables.sql) in one
    -- statement: one row per queue and type of the statement, not a hot counter row.
    WITH history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
        SELECT n.id, n.attempt, NULL, n.status FROM new_rows n
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT n.queue, n.task_type, 'submitted', count(*) FROM new_rows n GROUP BY n.queue, n.task_type;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_status_changes()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_nestloop TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
BEGIN
    -- A lookup, not a call, when no claim came first in this transaction (the usual case):
    -- the call and its SET clause cost more than the test, on every statement.
    IF current_setting('pgtasks.claim_commit', true) <> '' THEN
        PERFORM pgtasks.keep_durable();
    END IF;
    -- The history and the counters' deltas (task_counts, 01_tables.sql) in one statement
    -- over one join. A claim counts nothing; a rescue (rescue_expired sets
    -- pgtasks.rescuing) counts `rescued` besides what the attempt became.
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.attempt, o.status AS from_status, n.status AS to_status,
               coalesce(n.worker_id, o.worker_id) AS worker_id, n.queue, n.task_type,
               CASE WHEN n.status = 'DONE' THEN 'done'
                    WHEN n.status = 'FAILED' THEN 'failed'
                    WHEN n.status = 'CANCELLED' THEN 'cancelled'
                    WHEN n.status = 'COMMIT' AND n.retry_count > o.retry_count THEN 'retried'
                    WHEN o.status IN ('FAILED', 'CANCELLED') THEN 'requeued' END AS kind
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE o.status <> n.status
    ), history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
        SELECT c.id, c.attempt, c.from_status, c.to_status, c.worker_id FROM changed c
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT c.queue, c.task_type, c.kind, count(*)
      FROM changed c
     WHERE c.kind IS NOT NULL
     GROUP BY c.queue, c.task_type, c.kind
    UNION ALL
    -- The setting alone decides (a one-time filter): outside a rescue this reads nothing.
    SELECT c.queue, c.task_type, 'rescued', count(*)
      FROM changed c
     WHERE current_setting('pgtasks.rescuing', true) = 'on' AND c.from_status = 'RUNNING'
     GROUP BY c.queue, c.task_type;
    RETURN NULL;
END $function$;
