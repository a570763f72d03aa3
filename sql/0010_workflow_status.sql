-- Issue 12 (workflows), part 1 of 2: the WAITING status.
--
-- A task with unfinished parents is WAITING: claim_tasks, claim_limited, next_run_at and
-- every claim index only look at PENDING and COMMIT, so nothing in the claim path changes
-- and a hand-written claim can never take a task before its parents are done. (A PENDING
-- that the claim must skip would have put a dependency test into every claim.)
--
-- A file of its own: a value added by ALTER TYPE ... ADD VALUE cannot be used in the
-- transaction that adds it, and each migration file runs in one transaction
-- (pgtasks/migrations.py). 0012_workflows.sql uses it. First in the enum's order: it comes
-- before PENDING in a task's life.

ALTER TYPE pgtasks.status ADD VALUE IF NOT EXISTS 'WAITING' BEFORE 'PENDING';

CALL pgtasks.secure_objects();
