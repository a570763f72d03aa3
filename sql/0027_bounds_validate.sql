-- pgtasks: no-transaction
-- Role bounds, last step. The unique index on the key alone goes (tasks_unique_key, built
-- by 0025, holds keys per task type); until it does, a submit whose key another type's
-- active task holds is refused with 23505 instead of creating its task. The settings
-- constraints 0026 added NOT VALID are validated (one row; SHARE UPDATE EXCLUSIVE, which
-- no claim or submit waits for).
DROP INDEX CONCURRENTLY IF EXISTS pgtasks.tasks_unique_active;
ALTER TABLE pgtasks.settings VALIDATE CONSTRAINT schedule_min_every_range;
ALTER TABLE pgtasks.settings VALIDATE CONSTRAINT schedule_max_ticks_range;
