-- pgtasks 0018: the dashboard counts WAITING tasks, and finds them through an index.
--
-- WAITING (0010, 0012: a workflow node or a task submitted with depends_on, whose parents
-- have not all finished) had no place on the dashboard: pgtasks.queues (0011), which its
-- queue cards read, counts ready, scheduled and running only, so a workflow of 1,000
-- nodes showed its roots and nothing else, and a queue whose only tasks were WAITING got
-- no card at all. No index had the predicate status = 'WAITING', so counting them scans the
-- whole table, and the tasks page's filter status=WAITING read every row when few tasks
-- wait. Measured with bench/dashboard.py's 1,000,000 tasks, 500 of them WAITING among the
-- oldest (PostgreSQL 18): pgtasks.queues with the WAITING count took 87 ms without the
-- index, 4.6 ms with it; the WAITING list 205 ms without, 1.6 ms with (docs/dashboard.md).

------------------------------------------------------------------------------------------
-- 1. WAITING rows, by queue and id. Partial: an entry is written only when a row version
-- is WAITING (a task submitted WAITING, or sent back to it by a parent's retry); leaving
-- WAITING writes none here (vacuum drops the old entry), and claims, heartbeats and
-- finishes never touch it. It holds about as many entries as tasks wait. (queue, id) serves the count per queue
-- (index-only) and the tasks page's status=WAITING filter, with or without a queue, newest
-- first. Built in the migration's transaction: one scan of the table, blocking writes to
-- tasks while it runs (130-146 ms for 1,000,000 tasks).

CREATE INDEX tasks_waiting ON pgtasks.tasks (queue, id) WHERE status = 'WAITING';

------------------------------------------------------------------------------------------
-- 2. pgtasks.queues with waiting_on_parents appended (CREATE OR REPLACE VIEW may only
-- append; the name is queue_stats' for the same count since 0016, as `waiting` means COMMIT
-- there). A queue with only WAITING tasks now has its row too. Everything else is 0011's
-- body unchanged.

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
), on_parents AS (
    SELECT t.queue, count(*) AS waiting_on_parents
      FROM pgtasks.tasks t
     WHERE t.status = 'WAITING'
     GROUP BY t.queue
), active AS (
    SELECT coalesce(w.queue, r.queue) AS queue, w.ready, w.scheduled, r.running
      FROM waiting w
      FULL JOIN running r ON r.queue = w.queue
), live AS (
    SELECT coalesce(a.queue, p.queue) AS queue,
           coalesce(a.ready, 0) AS ready,
           coalesce(a.scheduled, 0) AS scheduled,
           coalesce(a.running, 0) AS running,
           coalesce(p.waiting_on_parents, 0) AS waiting_on_parents
      FROM active a
      FULL JOIN on_parents p ON p.queue = a.queue
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
       s.updated_at AS settings_updated_at,
       coalesce(l.waiting_on_parents, 0) AS waiting_on_parents
  FROM pgtasks.queue_settings s
  FULL JOIN live l ON l.queue = s.queue;

------------------------------------------------------------------------------------------
-- 3. Ownership and security. The view keeps its owner and grants (0005: pgtasks_reader,
-- pgtasks_submitter) through CREATE OR REPLACE; no new function, so no new GRANT.

CALL pgtasks.secure_objects();
