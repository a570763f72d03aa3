-- wake_workers reads the clock once per statement instead of once per inserted row (a
-- function call each, half the insert trigger's time in a bulk submit). Same decision: the
-- value is pgtasks.now() either way. One function, no table lock.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

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
    now_        timestamptz;
BEGIN
    IF current_setting('pgtasks.wake_workers', true) IS NOT DISTINCT FROM 'off' THEN
        RETURN NULL;
    END IF;
    now_ := pgtasks.now();
    SELECT min(n.queue), max(n.queue), min(n.id) INTO first_queue, last_queue, first_id
      FROM new_rows n
     WHERE n.run_at <= now_ AND n.status IN ('PENDING', 'COMMIT');
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: a timer or a release wakes
    ELSIF first_queue = last_queue THEN
        IF NOT EXISTS (
               SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                               WHERE t.queue >= first_queue AND t.queue <= first_queue
                                 AND t.status IN ('PENDING', 'COMMIT')
                               ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                               LIMIT 1) head
                WHERE head.run_at <= now_ AND head.id < first_id) THEN
            PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(first_queue));
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(q.queue))
           FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
                  WHERE n.run_at <= now_ AND n.status IN ('PENDING', 'COMMIT')
                  GROUP BY n.queue) q
          WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                                WHERE t.queue >= q.queue AND t.queue <= q.queue
                                  AND t.status IN ('PENDING', 'COMMIT')
                                ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                                LIMIT 1) head
                 WHERE head.run_at <= now_ AND head.id < q.first_id);
    END IF;
    RETURN NULL;
END $function$;
