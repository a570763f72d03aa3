-- pgtasks: no-transaction
-- pgtasks 0029: validates running_has_lease as 0028 left it (NOT VALID: new and changed rows
-- were checked from then on). The scan runs under SHARE UPDATE EXCLUSIVE, which claims,
-- finishes and heartbeats do not conflict with.
ALTER TABLE pgtasks.tasks VALIDATE CONSTRAINT running_has_lease;
