-- Claims of one task type, second step: pick_ready walks tasks_claimable_type (0046) when
-- the claimer serves one type, instead of stepping over every ready row of the other types
-- on the queue's index. Replaced function only.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[], served text[])
 RETURNS bigint[]
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    picked bigint[];
BEGIN
    IF cardinality(task_types) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND t.task_type = pick_ready.task_types[1]
               AND (pick_ready.queues IS NULL OR t.queue = ANY (pick_ready.queues))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND t.queue = pick_ready.queues[1]
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND t.queue = ANY (pick_ready.queues)
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    RETURN picked;
END $function$;
