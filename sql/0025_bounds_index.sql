-- pgtasks: no-transaction
-- Unique keys per task type, first step: the index 0026's submit_one names in its ON
-- CONFLICT, built before that function replaces the one that names the key alone
-- (tasks_unique_active, dropped by 0027). Every pair it holds is unique already, as every
-- key is, so the build cannot fail on existing rows. Concurrently: a plain build would
-- block every write to pgtasks.tasks for as long as it reads the table.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tasks_unique_key ON pgtasks.tasks (task_type, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING');
