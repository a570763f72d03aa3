-- pgtasks 0013: the history trigger joins its transition tables by hash.
--
-- record_updates (0001, redefined by 0012) writes one task_events row per status change by
-- joining the statement's new_rows and old_rows on id. Transition tables have no statistics
-- and no index, and the planner took a nested loop: for a completer batch of 100 finished
-- tasks, 100 x 100 row comparisons in every finish_tasks / finish_and_claim / claim_tasks
-- statement. As a hash join it is 100 + 100.
--
-- Measured with bench.claim_ab (one session drains 20,000 tasks through
-- finish_and_claim(claim_max => 100), variants interleaved, 9 rounds, server CPU per task
-- relative to 0004): 0008 0.953, 0008 with this change 0.705, and 1.33x the tasks/s.
-- `python -m bench.claim_ab --variants 0004,head` reproduces it after this file.
--
-- The setting is the function's, so it holds for everything record_updates runs, and the
-- workflow functions it calls look tasks and edges up by index in nested loops: they set
-- it back on for themselves (without that, a batch with dependents would hash-join
-- pgtasks.tasks whole).

CREATE OR REPLACE FUNCTION pgtasks.record_updates() RETURNS trigger
LANGUAGE plpgsql
SET enable_nestloop = off
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    ended bigint[];
    retried bigint[];
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
    SELECT n.id, n.attempt, o.status, n.status, coalesce(n.worker_id, o.worker_id)
      FROM new_rows n JOIN old_rows o USING (id)
     WHERE o.status <> n.status;

    -- Wake clients blocked in wait(), only for tasks someone watches.
    PERFORM pg_notify('pgtasks_done', n.id::text)
       FROM new_rows n
      WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')
        AND EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = n.id);

    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.has_dependents) THEN
        SELECT array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')),
               array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('PENDING', 'WAITING')
                                                       AND o.status IN ('FAILED', 'CANCELLED'))
          INTO ended, retried
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE n.has_dependents AND o.status <> n.status;
        IF ended IS NOT NULL THEN
            PERFORM pgtasks.release_children(ended);
        END IF;
        IF retried IS NOT NULL AND current_setting('pgtasks.reviving', true) IS DISTINCT FROM 'on' THEN
            PERFORM pgtasks.revive_children(retried);
        END IF;
    END IF;
    RETURN NULL;
END $$;

ALTER FUNCTION pgtasks.release_children(bigint[]) SET enable_nestloop = on;
ALTER FUNCTION pgtasks.revive_children(bigint[]) SET enable_nestloop = on;

CALL pgtasks.secure_objects();
