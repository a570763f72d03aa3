-- The statement triggers of pgtasks.tasks split by job, each function named for what it
-- does: record_inserts becomes record_creations (history) and wake_workers (wake-ups);
-- record_updates becomes record_status_changes (history), notify_waiters (pgtasks_done)
-- and settle_children (workflow children, 10_workflows.sql). Same statements, same order
-- (AFTER statement triggers fire in name order). The new functions are created first;
-- the triggers are swapped last, in this transaction, so every statement sees either the
-- old set or the new one; the swap takes the table's ACCESS EXCLUSIVE lock for a moment.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.notify_waiters()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pg_notify('pgtasks_done', n.id::text)
       FROM new_rows n
      WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')
        AND EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = n.id);
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_creations()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
    SELECT n.id, n.attempt, NULL, n.status FROM new_rows n;
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
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
    SELECT n.id, n.attempt, o.status, n.status, coalesce(n.worker_id, o.worker_id)
      FROM new_rows n JOIN old_rows o USING (id)
     WHERE o.status <> n.status;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.revive_children(parents bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET enable_nestloop TO 'on'
AS $function$
DECLARE
    frontier bigint[] := parents;
BEGIN
    -- The revivals below are updates too; settle_children must not walk them again.
    PERFORM set_config('pgtasks.reviving', 'on', true);
    -- A child that runs on parent failure counted the failed parent as ended; if it still
    -- waits on others, it now waits for the retried one too.
    UPDATE pgtasks.tasks c SET waiting_on = c.waiting_on + k.n
      FROM (SELECT e.child_id, count(*)::integer AS n FROM pgtasks.task_edges e
             WHERE e.parent_id = ANY (parents) GROUP BY e.child_id) k
     WHERE c.id = k.child_id AND c.status = 'WAITING';
    LOOP
        SELECT array_agg(DISTINCT c.id ORDER BY c.id) INTO frontier
          FROM pgtasks.task_edges e JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE e.parent_id = ANY (frontier) AND c.status = 'CANCELLED' AND c.cancelled_by IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pgtasks.task_edges e2 JOIN pgtasks.tasks p ON p.id = e2.parent_id
                            WHERE e2.child_id = c.id AND p.status IN ('FAILED', 'CANCELLED'));
        EXIT WHEN frontier IS NULL;
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (frontier) ORDER BY t.id FOR NO KEY UPDATE;
        WITH revived AS (
            UPDATE pgtasks.tasks c
               SET status = 'WAITING', finished_at = NULL, error = NULL, cancelled_by = NULL,
                   waiting_on = (SELECT count(*) FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
                                  WHERE e.child_id = c.id AND p.status <> 'DONE')
             WHERE c.id = ANY (frontier) AND c.status = 'CANCELLED'
            RETURNING c.id
        )
        SELECT array_agg(r.id) INTO frontier FROM revived r;
        EXIT WHEN frontier IS NULL;
    END LOOP;
    PERFORM set_config('pgtasks.reviving', '', true);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.settle_children()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_nestloop TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    ended bigint[];
    retried bigint[];
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.has_dependents)
       OR EXISTS (SELECT 1 FROM pgtasks.unsettled_edges) THEN
        SELECT array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')),
               array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('PENDING', 'WAITING')
                                                       AND o.status IN ('FAILED', 'CANCELLED'))
          INTO ended, retried
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE (n.has_dependents OR n.id IN (SELECT u.parent_id FROM pgtasks.unsettled_edges u))
           AND o.status <> n.status;
        IF ended IS NOT NULL THEN
            PERFORM pgtasks.release_children(ended);
        END IF;
        IF retried IS NOT NULL AND current_setting('pgtasks.reviving', true) IS DISTINCT FROM 'on' THEN
            PERFORM pgtasks.revive_children(retried);
        END IF;
    END IF;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.wake_workers()
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
            PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(first_queue));
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(q.queue))
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

COMMENT ON FUNCTION pgtasks.notify_waiters() IS 'Trigger function: sends pgtasks_done (payload: the task id) for each updated task that ended while a client watches it (watch_task).';
COMMENT ON FUNCTION pgtasks.record_creations() IS 'Trigger function: records each inserted task in task_events (from NULL to its first status).';
COMMENT ON FUNCTION pgtasks.record_status_changes() IS 'Trigger function: records every status change of an updated task in task_events.';
COMMENT ON FUNCTION pgtasks.settle_children() IS 'Trigger function: releases, cancels or revives the workflow children of the tasks an UPDATE ended or retried.';
COMMENT ON FUNCTION pgtasks.wake_workers() IS 'Trigger function: sends at most one pgtasks_wakeup per queue (payload: the queue''s tag) for inserted tasks a claim can take now, unless the queue''s head was ready already (off with pgtasks.wake_workers = off).';

DROP TRIGGER tasks_record_inserts ON pgtasks.tasks;
DROP TRIGGER tasks_record_updates ON pgtasks.tasks;
CREATE TRIGGER tasks_notify_waiters AFTER UPDATE ON pgtasks.tasks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.notify_waiters();
CREATE TRIGGER tasks_record_creations AFTER INSERT ON pgtasks.tasks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_creations();
CREATE TRIGGER tasks_record_status_changes AFTER UPDATE ON pgtasks.tasks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_status_changes();
CREATE TRIGGER tasks_settle_children AFTER UPDATE ON pgtasks.tasks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.settle_children();
CREATE TRIGGER tasks_wake_workers AFTER INSERT ON pgtasks.tasks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.wake_workers();
-- Trigger functions: no client calls them, and their triggers are gone above.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.record_inserts();
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.record_updates();
