-- 0007: views for the HTTP API and /metrics.
--
--   * pgtasks.metrics: everything /metrics shows, one row, so a scrape is one query and its
--     numbers are the database's however many workers and API processes run. The row holds
--     jsonb documents rather than one column per series because the label sets (queues,
--     task types, schedules) are data; the Python collector (pgtasks/web/metrics.py) maps
--     them to Prometheus families, and any other exporter can read the same row.
--   * pgtasks.task_step_names: a task's finished steps, so GET /tasks/{id} works for a role
--     with pgtasks_reader only (the task_steps table is granted to nobody).
--   * pgtasks.task_status gains the task's schedule and schedule_tick (0006 columns), so the
--     detail says which schedule created a task.

------------------------------------------------------------------------------------------
-- 1. task_status with the schedule columns. CREATE OR REPLACE VIEW can only append columns,
-- and it keeps the view's grants; the columns before are 0004's.

CREATE OR REPLACE VIEW pgtasks.task_status AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority,
       t.attempt, t.retry_count || '/' || t.max_retries AS retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total, t.progress_message,
       t.worker_id, t.run_at, t.created_at, t.started_at, t.finished_at,
       coalesce(t.finished_at, now()) - t.started_at AS elapsed,
       t.result, t.error, t.params,
       t.schedule, t.schedule_tick
  FROM pgtasks.tasks t;

------------------------------------------------------------------------------------------
-- 2. Steps for readers. Readers see results (task_status has them), so step results too.

CREATE VIEW pgtasks.task_step_names AS
SELECT s.task_id, s.name, s.attempt, s.at, s.result
  FROM pgtasks.task_steps s;

------------------------------------------------------------------------------------------
-- 3. The metrics row.
--
-- queues:    queue_stats per queue, oldest ready age in seconds (0 when none ready).
-- workers:   {alive, dead, slots, running}; slots and running count live workers only.
-- runtimes:  per task type, the tasks that ended DONE or FAILED within runtime_window:
--            count, failed, sum of run times (finished_at - started_at, seconds) and the
--            cumulative count at or below each of runtime_bounds (Prometheus `le`).
--            Counted from rows, not kept as counters: rows are pruned, and a window gives
--            rates without a table bumped on every finish.
-- schedules: per unpaused schedule with a next run, lag_seconds = how long its next tick
--            is overdue (0 when not yet due), so each schedule keeps one steady series.
-- The window and bounds are columns so the collector never repeats them.

CREATE VIEW pgtasks.metrics AS
WITH knobs AS (
    SELECT interval '5 minutes' AS runtime_window,
           ARRAY[0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600]::float8[] AS runtime_bounds
), recent AS (
    SELECT t.task_type, t.status, extract(epoch FROM t.finished_at - t.started_at)::float8 AS secs
      FROM pgtasks.tasks t, knobs k
     WHERE t.status IN ('DONE', 'FAILED') AND t.started_at IS NOT NULL
       AND t.finished_at > now() - k.runtime_window
), per_bound AS (
    -- Per type and bound, how many ended within it (cumulative, as Prometheus buckets are).
    SELECT r.task_type, b.ord, count(*) FILTER (WHERE r.secs <= b.le) AS n
      FROM recent r, knobs k, unnest(k.runtime_bounds) WITH ORDINALITY AS b(le, ord)
     GROUP BY r.task_type, b.ord
), per_type AS (
    SELECT r.task_type, count(*) AS count, count(*) FILTER (WHERE r.status = 'FAILED') AS failed,
           sum(r.secs) AS sum,
           (SELECT array_agg(pb.n ORDER BY pb.ord) FROM per_bound pb
             WHERE pb.task_type = r.task_type) AS buckets
      FROM recent r
     GROUP BY r.task_type
)
SELECT
  (SELECT coalesce(jsonb_agg(to_jsonb(q) ORDER BY q.queue), '[]'::jsonb)
     FROM (SELECT s.queue, s.pending, s.waiting, s.running, s.done, s.failed, s.cancelled,
                  s.ready, coalesce(extract(epoch FROM s.oldest_ready_age), 0) AS oldest_ready_seconds,
                  s.done_last_minute
             FROM pgtasks.queue_stats s) q) AS queues,
  (SELECT to_jsonb(w)
     FROM (SELECT count(*) FILTER (WHERE v.alive) AS alive,
                  count(*) FILTER (WHERE NOT v.alive) AS dead,
                  coalesce(sum(v.concurrency) FILTER (WHERE v.alive), 0) AS slots,
                  coalesce(sum(v.running) FILTER (WHERE v.alive), 0) AS running
             FROM pgtasks.workers v) w) AS workers,
  (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.task_type), '[]'::jsonb)
     FROM per_type p) AS runtimes,
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
              'schedule', d.name,
              'lag_seconds', greatest(extract(epoch FROM now() - d.next_run_at), 0))
            ORDER BY d.name), '[]'::jsonb)
     FROM pgtasks.schedule_defs d
    WHERE NOT d.paused AND d.next_run_at IS NOT NULL) AS schedules,
  k.runtime_window,
  k.runtime_bounds
  FROM knobs k;

------------------------------------------------------------------------------------------
-- 4. Ownership and security, then grants (explicit, as 0005 and 0006 do: grant_roles()
-- does not know these names). task_status keeps its grants through CREATE OR REPLACE.

CALL pgtasks.secure_objects();

GRANT SELECT ON pgtasks.task_step_names, pgtasks.metrics TO pgtasks_reader;
