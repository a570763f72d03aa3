-- pgtasks: no-transaction
-- The unfinished children of each parent (0053), which every child's end and every
-- cancelled parent probe. Concurrently: a plain build would block every write to
-- pgtasks.tasks for as long as it reads the table. Only children are in it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_spawned_unfinished ON pgtasks.tasks (spawned_by)
    WHERE spawned_by IS NOT NULL AND status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
