-- pgtasks 0009: flow control's loose ends.
--
-- 1. retry_task of a FAILED or CANCELLED task whose unique_key another active task has
--    taken meanwhile failed with a bare unique_violation (23505) from tasks_unique_active.
--    It now raises PT306 with a hint, and the task stays as it was.
-- 2. unique_for windows were never deleted: a key submitted once a day left one row a day
--    forever. Rows of queue_starts whose queue no longer has a rate limit (or whose window
--    passed long ago) stayed too, since only the limited claim path trims them. Both are
--    now pruned by prune_finished (so by maintain() and by every worker's maintainer,
--    whatever its retention), in batches of max_tasks, like finished tasks.
--
-- New SQLSTATE:
--   PT306 retry_task: the task's unique_key is held by another active task

CREATE OR REPLACE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
               run_at = coalesce(retry_task.run_at, now())
         WHERE id = t.id;
    EXCEPTION WHEN unique_violation THEN
        PERFORM pgtasks.raise_unique_held(t);
    END;
END $$;

-- One message for both places retry_task finds the key taken.
CREATE FUNCTION pgtasks.raise_unique_held(t pgtasks.tasks) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    holder bigint;
BEGIN
    SELECT o.id INTO holder FROM pgtasks.tasks o
     WHERE o.unique_key = t.unique_key AND o.status IN ('PENDING', 'COMMIT', 'RUNNING')
       AND o.id <> t.id
     LIMIT 1;
    RAISE EXCEPTION 'pgtasks: task % cannot be retried: its unique_key % is held by active task %',
            t.id, pg_catalog.quote_literal(t.unique_key), coalesce(holder::text, '(being submitted)')
        USING ERRCODE = 'PT306',
              HINT = 'Wait for the active task with that key to finish, or cancel it, then retry.';
END $$;

CREATE OR REPLACE FUNCTION pgtasks.prune_finished(older_than interval DEFAULT NULL, max_tasks integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
    cutoff := now() - coalesce(older_than, (SELECT s.retention FROM pgtasks.settings s));
    -- Lets the append-only triggers through for this statement only (see 0004).
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
        -- task_events has no foreign key (see 0001), so its rows go here, not by cascade.
        DELETE FROM pgtasks.task_events e USING gone WHERE e.task_id = gone.id
    )
    SELECT count(*)::integer INTO n FROM gone;
    PERFORM set_config('pgtasks.pruning', '', true);
    PERFORM pgtasks.prune_flow_state(max_tasks);
    RETURN n;
END $$;

-- The flow-control rows nothing reads any more. Not counted in prune_finished's result,
-- which stays "finished tasks deleted".
CREATE FUNCTION pgtasks.prune_flow_state(max_rows integer) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    -- A window whose reservation has passed is only ever taken over by the next submit of
    -- its key (submit_one); deleting it leaves the key free exactly as that would. SKIP
    -- LOCKED: a submit taking the row over right now keeps it.
    DELETE FROM pgtasks.unique_windows w
     WHERE w.unique_key IN (SELECT o.unique_key FROM pgtasks.unique_windows o
                             WHERE o.reserved_until < now()
                             LIMIT max_rows
                             FOR UPDATE SKIP LOCKED);
    -- Starts older than their queue's window count for nothing (claim_limited trims them
    -- itself, but only for queues it still claims from with a rate limit). A queue without
    -- settings or without a rate limit keeps none.
    DELETE FROM pgtasks.queue_starts s
     WHERE s.ctid IN (SELECT o.ctid FROM pgtasks.queue_starts o
                        LEFT JOIN pgtasks.queue_settings qs ON qs.queue = o.queue
                       WHERE qs.rate_limit IS NULL OR o.at < now() - qs.rate_period
                       LIMIT max_rows);
END $$;

-- Both helpers run inside functions that already hold the grants; no role calls them.
CALL pgtasks.secure_objects();
