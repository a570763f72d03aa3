-- A claim can commit while its answer is lost with the connection; the worker then asks
-- hand_back_unheld to give back every RUNNING task under its id that it does not hold, with no
-- retry spent (sql/schema/07_leases.sql). A new function only.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.hand_back_unheld(worker_id text, held_task_ids bigint[])
 RETURNS TABLE(task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    now_ timestamptz := pgtasks.now();
    back bigint[];
    tags text[];
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    WITH unheld AS (
        SELECT t.id FROM pgtasks.tasks t
         -- lease_expires_at IS NOT NULL: the partial index tasks_lease holds just the
         -- running rows, so this reads those, not the whole table.
         WHERE t.lease_expires_at IS NOT NULL
           AND t.status = 'RUNNING' AND t.worker_id = hand_back_unheld.worker_id
           AND NOT (t.id = ANY (hand_back_unheld.held_task_ids))
           FOR NO KEY UPDATE OF t SKIP LOCKED
    ), handed AS (
        UPDATE pgtasks.tasks k
           SET status = 'COMMIT', run_at = now_,
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
         WHERE k.id IN (SELECT u.id FROM unheld u)
        RETURNING k.id, k.queue
    )
    SELECT array_agg(h.id), array_agg(DISTINCT pgtasks.queue_tag(h.queue)) INTO back, tags
      FROM handed h;
    IF back IS NOT NULL THEN
        PERFORM pg_notify('pgtasks_wakeup', tag) FROM unnest(tags) AS u(tag);
    END IF;
    RETURN QUERY SELECT u.id FROM unnest(back) AS u(id);
END $function$;
GRANT EXECUTE ON FUNCTION pgtasks.hand_back_unheld(text,bigint[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.hand_back_unheld(text,bigint[]) IS 'Hands back, without spending a retry, every RUNNING task under worker_id whose id is not in held_task_ids (a claim whose answer was lost); returns their ids.';
