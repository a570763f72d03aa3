-- pgtasks: no-transaction
-- Lookup by unique key, first step: the index behind it, built before 0031 gives readers
-- the column to look up by. tasks_unique_key holds active tasks only, type first, so the
-- newest task of a key (finished ones included) had no index: a lookup read the whole
-- table. Partial: tasks without a key add no entry. Concurrently: a plain build would
-- block every write to pgtasks.tasks for as long as it reads the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_by_unique_key ON pgtasks.tasks (unique_key, id)
    WHERE unique_key IS NOT NULL;
