-- 0011_dashboard.sql: what the web dashboard (pgtasks/web/dashboard, docs/dashboard.md)
-- needs to stay fast with a million tasks in the table. Measured with bench/dashboard.py
-- (1,000,000 tasks, 2 % FAILED; PostgreSQL 18):
--
--   * pgtasks.queues read every PENDING/COMMIT/RUNNING row through a sequential scan of the
--     whole table (100 ms), because no index has the predicate `status IN (PENDING, COMMIT,
--     RUNNING)`. Its new body counts the same rows from the two partial indexes the claim
--     path keeps anyway (index-only: 0.3 ms). Same columns, same meaning, no new index to
--     maintain on the hot path.
--   * The dead letters (counts per queue, groups by type and error, a type's failed tasks
--     newest first) had no index: each read walked the table (103 ms). tasks_failed holds
--     only FAILED rows, so it costs nothing until a task fails for good, and the claim,
--     heartbeat and finish paths never touch it.
--
-- Filters over all tasks (a rare type, a status that few rows have) still walk the primary
-- key newest first until a page is full; docs/dashboard.md gives the worst case measured.
-- An index per filter column would serve them, at a write on every transition of every
-- task: not worth it for an operator's page.

------------------------------------------------------------------------------------------
-- 1. pgtasks.queues from the claim path's partial indexes.
-- PENDING/COMMIT rows are exactly tasks_claimable_queue's (queue, priority, run_at, id), and
-- RUNNING rows exactly tasks_lease's (queue, lease_expires_at) WHERE lease_expires_at IS NOT
-- NULL (0008; the running_has_lease constraint: RUNNING <=> a lease). Both scans are
-- index-only.

CREATE OR REPLACE VIEW pgtasks.queues AS
WITH waiting AS (
    SELECT t.queue,
           count(*) FILTER (WHERE t.run_at <= now()) AS ready,
           count(*) FILTER (WHERE t.run_at > now()) AS scheduled
      FROM pgtasks.tasks t
     WHERE t.status IN ('PENDING', 'COMMIT')
     GROUP BY t.queue
), running AS (
    SELECT t.queue, count(*) AS running
      FROM pgtasks.tasks t
     WHERE t.lease_expires_at IS NOT NULL
     GROUP BY t.queue
), live AS (
    SELECT coalesce(w.queue, r.queue) AS queue,
           coalesce(w.ready, 0) AS ready,
           coalesce(w.scheduled, 0) AS scheduled,
           coalesce(r.running, 0) AS running
      FROM waiting w
      FULL JOIN running r ON r.queue = w.queue
)
SELECT coalesce(s.queue, l.queue) AS queue,
       coalesce(s.paused, false) AS paused,
       s.max_running,
       s.rate_limit,
       CASE WHEN s.rate_limit IS NOT NULL THEN s.rate_period END AS rate_period,
       coalesce(l.ready, 0) AS ready,
       coalesce(l.scheduled, 0) AS scheduled,
       coalesce(l.running, 0) AS running,
       CASE WHEN s.rate_limit IS NOT NULL THEN
           (SELECT count(*) FROM pgtasks.queue_starts q
             WHERE q.queue = s.queue AND q.at >= now() - s.rate_period) END AS recent_starts,
       s.updated_at AS settings_updated_at
  FROM pgtasks.queue_settings s
  FULL JOIN live l ON l.queue = s.queue;

------------------------------------------------------------------------------------------
-- 2. The dead letters. (task_type, id) serves "this type's failed tasks, newest first";
-- queue rides along (INCLUDE) so the failed count per queue is an index-only scan.

CREATE INDEX IF NOT EXISTS tasks_failed ON pgtasks.tasks (task_type, id) INCLUDE (queue)
 WHERE status = 'FAILED';

------------------------------------------------------------------------------------------
-- 3. Ownership and security. The view keeps its grants through CREATE OR REPLACE; no new
-- function, so no new GRANT.

CALL pgtasks.secure_objects();
