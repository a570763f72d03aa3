-- pgtasks: no-transaction
-- Validates the CHECK that 0050 added NOT VALID: the scan runs under SHARE UPDATE
-- EXCLUSIVE, which claims, finishes and heartbeats do not conflict with.
ALTER TABLE pgtasks.tasks VALIDATE CONSTRAINT tracestate_bounded;
