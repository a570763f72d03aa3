-- pgtasks: no-transaction
-- Claims of one task type, first step: the index they walk, built before 0047 gives
-- pick_ready the statement that uses it. tasks_claimable_type holds ready tasks only, type
-- first, then the claim order and the queue, so a worker of one type reads only its type's
-- rows, whatever the backlog of others. Concurrently: a plain build would block every
-- write to pgtasks.tasks for as long as it reads the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_claimable_type ON pgtasks.tasks (task_type, priority DESC, run_at, id, queue)
    WHERE status IN ('PENDING', 'COMMIT');
