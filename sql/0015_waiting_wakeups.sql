-- pgtasks 0015: an insert of WAITING tasks wakes no worker.
--
-- record_inserts (0008) sent its wake-up for every inserted row that was due now, judged by
-- run_at alone. Since 0012 a workflow node whose parents have not finished is inserted
-- WAITING, due now, and no claim can take it: submitting a chain or a chord woke every
-- idle worker for nothing (each woken worker runs a claim that finds nothing). A WAITING
-- task becomes claimable only when its last parent finishes, and that release
-- (record_updates, 0012) sends its own NOTIFY. So only rows that a claim can take now
-- (PENDING or COMMIT, run_at <= now(): the claim's own predicate) count here.
--
-- Tried and not kept: writing the history, the aggregate and the head probe as one
-- statement (the history insert as a data-modifying CTE) to save two executor start-ups.
-- Per single-row submit, server side (python -m bench.ablations --only submit_loop, min of
-- 9 interleaved loops of 2,000): wake-ups off 165 us, 0008 203 us, one statement 204 us.
-- The wake-up's cost is the head probe itself (~20 us on that machine), not the statements
-- around it.
--
-- Everything else is 0008's: at most one NOTIFY per statement and queue, none when the
-- queue's head was already ready, the off switch `pgtasks.wake_workers = off`.

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
     WHERE n.run_at <= now() AND n.status IN ('PENDING', 'COMMIT');
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: a timer or a release wakes
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
                  WHERE n.run_at <= now() AND n.status IN ('PENDING', 'COMMIT')
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

CALL pgtasks.secure_objects();
