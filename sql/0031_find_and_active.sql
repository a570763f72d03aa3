-- Lookup by unique key and what the workers are running: task_status gains unique_key
-- (appended: CREATE OR REPLACE VIEW may only append), which 0030's tasks_by_unique_key
-- serves, and pgtasks.active_tasks shows each RUNNING task with its worker, attempt start,
-- progress and lease. Both are the topic file's definitions (sql/schema/11_views.sql).
-- Views only: no lock a claim needs is held beyond a moment.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE VIEW pgtasks.task_status AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority, t.attempt,
       t.retry_count || '/' || t.max_retries AS retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total, t.progress_message, t.worker_id,
       t.run_at, t.created_at, t.started_at, t.finished_at,
       coalesce(t.finished_at, now()) - t.started_at AS elapsed,
       t.result, t.error, t.params, t.schedule, t.schedule_tick,
       t.workflow_id, t.workflow_node, t.unique_key
  FROM pgtasks.tasks t;
COMMENT ON COLUMN pgtasks.task_status.unique_key IS
    'The unique key the task was submitted with (keys belong to their task type). The newest '
    'task of a key: WHERE unique_key = $1 [AND task_type = $2] ORDER BY id DESC LIMIT 1, one '
    'probe of tasks_by_unique_key.';

CREATE VIEW pgtasks.active_tasks AS
SELECT t.id, t.task_type, t.queue, t.worker_id, w.host, w.pid,
       w.last_seen + w.lease > now() AS worker_alive,
       t.attempt, t.started_at, a.attempt_started_at,
       now() - a.attempt_started_at AS running_for,
       t.progress_current, t.progress_total,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_message, t.lease_expires_at, t.deadline
  FROM pgtasks.tasks t
  LEFT JOIN pgtasks.worker_registry w ON w.worker_id = t.worker_id
 CROSS JOIN LATERAL (
       SELECT coalesce(max(e.at), t.started_at) AS attempt_started_at
         FROM pgtasks.task_events e
        WHERE e.task_id = t.id AND e.attempt = t.attempt AND e.to_status = 'RUNNING') a
 WHERE t.lease_expires_at IS NOT NULL;
GRANT SELECT ON pgtasks.active_tasks TO pgtasks_reader;
COMMENT ON VIEW pgtasks.active_tasks IS
    'What the workers are running now: each RUNNING task with its worker (host, pid, alive), '
    'attempt, when the attempt started, progress and lease.';
COMMENT ON COLUMN pgtasks.active_tasks.worker_alive IS
    'Whether the task''s worker was seen within its lease; NULL when the worker never '
    'registered. A dead worker''s task is rescued once its lease runs out.';
COMMENT ON COLUMN pgtasks.active_tasks.attempt_started_at IS
    'When this attempt was claimed (started_at is when the first one was).';
COMMENT ON COLUMN pgtasks.active_tasks.running_for IS 'Time since this attempt was claimed.';
COMMENT ON COLUMN pgtasks.active_tasks.lease_expires_at IS
    'The attempt is rescued after this unless a heartbeat extends it (never past deadline).';
