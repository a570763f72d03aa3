-- pgtasks 0016: queue_stats and the metrics row count WAITING tasks.
--
-- 0010 added the status WAITING (a workflow node, or a task submitted with depends_on, whose
-- parents have not all finished), but queue_stats (0002) counts its statuses one column
-- each and had none for it, so `pgtasks stats`, GET /api/queues and /metrics
-- (pgtasks_tasks{status="WAITING"}) left those tasks out: a workflow of 1,000 nodes showed
-- its roots and nothing else. The new column goes last (CREATE OR REPLACE VIEW may only
-- append), named for what it counts: `waiting` is COMMIT's column since 0002 (a long task
-- between steps), and renaming it would break every reader.

CREATE OR REPLACE VIEW pgtasks.queue_stats AS
SELECT t.queue,
       count(*) FILTER (WHERE t.status = 'PENDING')                      AS pending,
       count(*) FILTER (WHERE t.status = 'COMMIT')                       AS waiting,
       count(*) FILTER (WHERE t.status = 'RUNNING')                      AS running,
       count(*) FILTER (WHERE t.status = 'DONE')                         AS done,
       count(*) FILTER (WHERE t.status = 'FAILED')                       AS failed,
       count(*) FILTER (WHERE t.status = 'CANCELLED')                    AS cancelled,
       count(*) FILTER (WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()) AS ready,
       now() - min(t.run_at) FILTER (WHERE t.status IN ('PENDING', 'COMMIT')
                                       AND t.run_at <= now())           AS oldest_ready_age,
       count(*) FILTER (WHERE t.status = 'DONE'
                          AND t.finished_at > now() - interval '1 minute') AS done_last_minute,
       count(*) FILTER (WHERE t.status = 'WAITING')                      AS waiting_on_parents
  FROM pgtasks.tasks t
 GROUP BY t.queue;

-- The metrics row (0007), its queues carrying the new count; nothing else changes.
CREATE OR REPLACE VIEW pgtasks.metrics AS
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
                  s.done_last_minute, s.waiting_on_parents
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

CALL pgtasks.secure_objects();
