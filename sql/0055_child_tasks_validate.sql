-- pgtasks: no-transaction
-- Validates the CHECK that 0053 added NOT VALID: the scan runs under SHARE UPDATE
-- EXCLUSIVE, which the snooze and wait functions' inserts do not conflict with.
ALTER TABLE pgtasks.task_pauses VALIDATE CONSTRAINT kind_known;
