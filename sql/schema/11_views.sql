-- The read views: what psql, the CLI, the HTTP API, the dashboard and /metrics read.
--
-- Nobody but pgtasks_owner reads a table (12_roles.sql). A view reads its tables with its
-- owner's rights, so granting SELECT on a view gives exactly its columns: submitters see
-- tasks without their params, results or errors (task_overview), readers see everything
-- (task_status). Every view here is plain SQL over the tables of 01_tables.sql, computed
-- when it is read. None is on a hot path: they serve people and monitoring, and some read
-- every task (queue_stats, metrics). (pgtasks.transitions is in 03_state_machine.sql,
-- pgtasks.schedules in 09_schedules.sql, pgtasks.workflows in 10_workflows.sql.)

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- One task

-- Everything about a task, params, result and error included, for readers. elapsed runs
-- on while the task is unfinished.
CREATE VIEW pgtasks.task_status AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority, t.attempt,
       t.retry_count || '/' || t.max_retries AS retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total, t.progress_message, t.worker_id,
       t.run_at, t.created_at, t.started_at, t.finished_at,
       coalesce(t.finished_at, now()) - t.started_at AS elapsed,
       t.result, t.error, t.params, t.schedule, t.schedule_tick,
       t.workflow_id, t.workflow_node, t.unique_key, t.spawned_by
  FROM pgtasks.tasks t;
GRANT SELECT ON pgtasks.task_status TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_status IS
    'Every task with everything about it (params, result, error, progress, schedule, '
    'workflow), for readers.';
COMMENT ON COLUMN pgtasks.task_status.retries IS
    'retry_count/max_retries: the retries used, of those allowed.';
COMMENT ON COLUMN pgtasks.task_status.percent IS
    'progress_current as a percentage of progress_total, when the task reported a total.';
COMMENT ON COLUMN pgtasks.task_status.elapsed IS
    'Time since the first start, up to the finish (or up to now while unfinished).';
COMMENT ON COLUMN pgtasks.task_status.spawned_by IS
    'The task that spawned this one as a child (spawn_children); its children are in task_children.';
COMMENT ON COLUMN pgtasks.task_status.unique_key IS
    'The unique key the task was submitted with (keys belong to their task type). The newest '
    'task of a key: WHERE unique_key = $1 [AND task_type = $2] ORDER BY id DESC LIMIT 1, one '
    'probe of tasks_by_unique_key.';

-- The status of every task for submitters, without params, results or errors (which often
-- quote the params): a submitter may watch what it submitted without reading what others
-- submitted with it.
CREATE VIEW pgtasks.task_overview AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority,
       t.attempt, t.retry_count, t.max_retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total,
       t.run_at, t.created_at, t.started_at, t.finished_at
  FROM pgtasks.tasks t;
GRANT SELECT ON pgtasks.task_overview TO pgtasks_submitter, pgtasks_reader;
COMMENT ON VIEW pgtasks.task_overview IS
    'Every task''s status, progress and times, without params, results or errors; for '
    'submitters.';

-- Every status change of every task, whoever made it: the worker it concerned and the
-- login role that caused it (db_user: session_user, because the functions run as
-- pgtasks_owner). event_id orders one task's changes as they committed (each is written
-- under the task's row lock), so a follower reads "the changes after the last one I saw"
-- by task_events_task and misses none, however briefly a status lasted.
-- note says why a RUNNING -> COMMIT parked the task, when it was a snooze or a wait for an
-- event or for its children (task_pauses: at most one per attempt, written with that change).
CREATE VIEW pgtasks.task_history AS
SELECT e.task_id, e.at, e.from_status, e.to_status, e.attempt, e.worker_id, e.db_user,
       CASE p.kind
           WHEN 'snooze' THEN pg_catalog.format('snoozed until %s', p.until)
           WHEN 'event' THEN pg_catalog.format('waiting for event %s until %s', p.event_name, p.until)
           WHEN 'children' THEN 'waiting for its children'
       END AS note,
       e.id AS event_id
  FROM pgtasks.task_events e
  LEFT JOIN pgtasks.task_pauses p
         ON p.task_id = e.task_id AND p.attempt = e.attempt
        AND e.from_status = 'RUNNING' AND e.to_status = 'COMMIT';
GRANT SELECT ON pgtasks.task_history TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_history IS
    'Every status change of every task: when, from and to which status, in which attempt, by '
    'which worker and login role; note says when the change was a snooze or a wait for an event or for its children.';
COMMENT ON COLUMN pgtasks.task_history.event_id IS
    'Orders a task''s changes as they committed: WHERE task_id = $1 AND event_id > $2 ORDER BY event_id reads those after one seen.';

-- Events sent to tasks and the tasks' waits for them (event_inbox), for psql, the API and
-- the dashboard. Readers see payloads, as they see params and results.
CREATE VIEW pgtasks.task_inbox AS
SELECT i.task_id, i.name, i.payload, i.sent_at, i.sent_by, i.waited_at,
       CASE WHEN i.wait_until < i.waited_at + interval '99 years' THEN i.wait_until END AS wait_until
  FROM pgtasks.event_inbox i;
GRANT SELECT ON pgtasks.task_inbox TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_inbox IS
    'Events sent to every task (sent_at, sent_by, payload) and its waits for them (waited_at, wait_until: when the wait times out; NULL without a timeout).';

-- A task's log lines, from ctx.log or Python logging inside the task; id order is the
-- order they were logged.
CREATE VIEW pgtasks.task_log_lines AS
SELECT l.id, l.task_id, l.attempt, l.level, l.message, l.logger, l.at
  FROM pgtasks.task_logs l;
GRANT SELECT ON pgtasks.task_log_lines TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_log_lines IS
    'Every log line of every task, in the order logged (id); at is when the line was logged.';

-- One row per failed attempt: the whole error history, not only the last error.
CREATE VIEW pgtasks.task_attempt_errors AS
SELECT e.task_id, e.attempt, e.error, e.traceback, e.at
  FROM pgtasks.task_errors e;
GRANT SELECT ON pgtasks.task_attempt_errors TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_attempt_errors IS
    'One row per failed attempt of every task: its error and traceback.';

-- A task's finished steps, so the task detail of the API works for a reader (the
-- task_steps table is granted to nobody). Readers see results, so step results too.
CREATE VIEW pgtasks.task_step_names AS
SELECT s.task_id, s.name, s.attempt, s.at, s.result
  FROM pgtasks.task_steps s;
GRANT SELECT ON pgtasks.task_step_names TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_step_names IS
    'The checkpointed steps of every task, with the attempt that stored each and its result.';

-- What failures of one cause have in common: the first line of the error (the exception
-- class and its message), at most 500 characters, with what differs between occurrences
-- taken out: quoted values, UUIDs, e-mail addresses, IP addresses, hex runs and numbers.
-- 26 bounced e-mails to 26 addresses are one fingerprint, so the dashboard groups them and
-- "retry the group" retries them all. Text work only, no table read: IMMUTABLE; SECURITY
-- DEFINER like every pgtasks function, though it needs no right of its owner.
CREATE FUNCTION pgtasks.error_fingerprint(error text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT btrim(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
               regexp_replace(regexp_replace(regexp_replace(
                   left(split_part(error, E'\n', 1), 500),
                   $q$'[^']*'|"[^"]*"$q$, '?', 'g'),
                   '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<uuid>', 'g'),
                   '[^\s@<>()?]+@[^\s@<>()?]+\.[A-Za-z]{2,}', '<email>', 'g'),
                   '\m\d{1,3}(\.\d{1,3}){3}(:\d+)?\M', '<ip>', 'g'),
                   '\m(0x[0-9a-fA-F]+|[0-9a-fA-F]{8,})\M', '<hex>', 'g'),
                   '\d+(\.\d+)?', '<n>', 'g'),
               '\s+', ' ', 'g'))
$$;
GRANT EXECUTE ON FUNCTION pgtasks.error_fingerprint(text) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.error_fingerprint(text) IS
    'The first line of an error with quoted values, UUIDs, e-mail and IP addresses, hex runs and numbers taken out: what failures of one cause share.';

-- The dead letters: tasks that failed for good. tasks_failed (01_tables.sql) holds only
-- FAILED rows, so reading them costs nothing until a task fails.
CREATE VIEW pgtasks.failed_tasks AS
SELECT t.id, t.task_type, t.queue, t.attempt, t.error, t.finished_at,
       (SELECT count(*) FROM pgtasks.task_errors e WHERE e.task_id = t.id) AS error_count,
       (SELECT e.traceback FROM pgtasks.task_errors e WHERE e.task_id = t.id
         ORDER BY e.attempt DESC LIMIT 1) AS last_traceback
  FROM pgtasks.tasks t
 WHERE t.status = 'FAILED';
GRANT SELECT ON pgtasks.failed_tasks TO pgtasks_reader;
COMMENT ON VIEW pgtasks.failed_tasks IS
    'The dead letters: every FAILED task with its last error, how many attempts failed, and '
    'the last traceback.';

------------------------------------------------------------------------------------------
-- Queues

-- Counts per queue and status, for `pgtasks stats`, the API and /metrics. It reads every
-- task of the table: a view for people, not for a hot path. Its columns only ever grew
-- (CREATE OR REPLACE VIEW may only append): `waiting` is COMMIT's count, the oldest name,
-- and WAITING tasks are `waiting_on_parents`.
CREATE VIEW pgtasks.queue_stats AS
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
GRANT SELECT ON pgtasks.queue_stats TO pgtasks_submitter, pgtasks_reader;
COMMENT ON VIEW pgtasks.queue_stats IS
    'Per queue: how many tasks are in each status, how many are ready and how long the oldest '
    'ready one has waited, and how many finished in the last minute.';
COMMENT ON COLUMN pgtasks.queue_stats.waiting IS
    'Tasks in COMMIT: waiting to continue after a checkpoint, a retryable error or a rescue. '
    '(WAITING tasks are waiting_on_parents.)';
COMMENT ON COLUMN pgtasks.queue_stats.ready IS
    'PENDING or COMMIT tasks whose run_at has come: what a worker may claim now, limits aside.';
COMMENT ON COLUMN pgtasks.queue_stats.waiting_on_parents IS
    'Tasks in WAITING: their parents (depends_on, or a workflow) have not all ended.';

-- Each queue with settings or active tasks: its flow-control settings next to its live
-- counts, for operators and the dashboard's queue cards. Every count comes from a partial
-- index the claim path keeps anyway, index-only: PENDING and COMMIT rows are exactly
-- tasks_claimable_queue's, RUNNING rows exactly tasks_lease's (a lease is set exactly
-- while RUNNING), WAITING rows tasks_waiting's. Measured with 1,000,000 tasks in the
-- table: 0.3 ms instead of 100 ms for a scan of the whole table, and 4.6 ms instead of
-- 87 ms with the WAITING count.
CREATE VIEW pgtasks.queues AS
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
GRANT SELECT ON pgtasks.queues TO pgtasks_submitter, pgtasks_reader;
COMMENT ON VIEW pgtasks.queues IS
    'Each queue with settings or active tasks: its limits and pause (configure_queue, '
    'pause_queue) next to how many of its tasks are ready, scheduled, running and waiting on '
    'parents.';
COMMENT ON COLUMN pgtasks.queues.scheduled IS
    'PENDING or COMMIT tasks whose run_at is still in the future.';
COMMENT ON COLUMN pgtasks.queues.recent_starts IS
    'Starts within the current rate window (rate-limited queues only).';
COMMENT ON COLUMN pgtasks.queues.waiting_on_parents IS
    'Tasks in WAITING: their parents (depends_on, or a workflow) have not all ended.';

------------------------------------------------------------------------------------------
-- Workers and task types

-- alive: seen within its lease. A dead worker's tasks stay RUNNING under its id until
-- their leases run out and rescue hands them on; `running` shows how many are left.
CREATE VIEW pgtasks.workers AS
SELECT w.worker_id, w.host, w.pid, w.queues, w.concurrency, w.started_at, w.last_seen,
       w.last_seen + w.lease > now() AS alive,
       (SELECT count(*) FROM pgtasks.tasks t
         WHERE t.status = 'RUNNING' AND t.worker_id = w.worker_id) AS running
  FROM pgtasks.worker_registry w;
GRANT SELECT ON pgtasks.workers TO pgtasks_reader;
COMMENT ON VIEW pgtasks.workers IS
    'The registered workers: where they run, their queues and slots, whether they are alive '
    'and how many tasks they are running.';
COMMENT ON COLUMN pgtasks.workers.alive IS
    'Seen (registered or heartbeating) within its lease. A dead worker''s tasks are rescued '
    'once their leases run out.';
COMMENT ON COLUMN pgtasks.workers.running IS
    'Tasks RUNNING under this worker''s id, including those of a dead worker that are still to '
    'be rescued.';

-- Tasks no live worker serves: their first attempt recorded a code version
-- (tasks.code_version) that no worker seen within its lease runs or declares compatible,
-- so no claim takes them (pick_ready). They wait, PENDING or COMMIT, rather than resume on
-- code whose steps differ; a worker that serves the version, or declares it compatible,
-- takes them up. live_versions: the versions of the type the live workers run. It reads
-- the claimable tasks (tasks_claimable), not the history.
CREATE VIEW pgtasks.stranded_tasks AS
SELECT t.id, t.task_type, t.queue, t.status, t.code_version, t.attempt, t.run_at,
       (SELECT array_agg(DISTINCT right(c, strpos(reverse(c), '@') - 1))
          FROM pgtasks.worker_registry w, unnest(w.code_versions) c
         WHERE w.last_seen + w.lease > now()
           AND left(c, length(c) - strpos(reverse(c), '@')) = t.task_type) AS live_versions
  FROM pgtasks.tasks t
 WHERE t.status IN ('PENDING', 'COMMIT') AND t.code_version IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM pgtasks.worker_registry w
                    WHERE w.last_seen + w.lease > now()
                      AND t.task_type || '@' || t.code_version
                          = ANY (w.code_versions || w.compatible_versions));
GRANT SELECT ON pgtasks.stranded_tasks TO pgtasks_reader;
COMMENT ON VIEW pgtasks.stranded_tasks IS
    'Ready tasks whose recorded code version no live worker runs or declares compatible: '
    'no claim takes them until such a worker starts.';
COMMENT ON COLUMN pgtasks.stranded_tasks.live_versions IS
    'The versions of the task''s type that the live workers run (NULL: no live worker runs a versioned one).';

-- What the workers are running now, one row per RUNNING task (as Celery's `inspect
-- active`): which worker holds it, that worker's host and pid when it registered (NULL for
-- a worker that never did, such as a claim from psql), whether the worker is still alive
-- (a dead worker's task stays here until its lease runs out and rescue hands it on), when
-- this attempt was claimed, its progress and its lease. It reads running tasks only, by
-- tasks_lease (a lease is set exactly while RUNNING), so history and backlog never slow
-- it; attempt_started_at is the claim's own transition (task_events, by task_events_task),
-- since started_at keeps the first attempt's start. No params, result or error here: the
-- columns are chosen one by one, never t.*, so no column added to tasks shows by itself.
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

-- What a submit of each registered type gets when the caller leaves an argument out: the
-- type's policy, else the settings default.
CREATE VIEW pgtasks.registered_types AS
SELECT t.task_type,
       coalesce(t.queue, s.default_queue)               AS queue,
       coalesce(t.priority, s.default_priority)         AS priority,
       coalesce(t.max_retries, s.default_max_retries)   AS max_retries,
       coalesce(t.timeout, s.default_timeout)           AS timeout,
       coalesce(t.backoff_base, s.default_backoff_base) AS backoff_base,
       t.registered_by, t.updated_at, t.soft_timeout
  FROM pgtasks.task_types t CROSS JOIN pgtasks.settings s;
GRANT SELECT ON pgtasks.registered_types TO pgtasks_submitter, pgtasks_reader;
COMMENT ON VIEW pgtasks.registered_types IS
    'Every task type the workers registered, with the policy a submit of it gets when the '
    'caller leaves an argument out (the type''s own, else the settings default); '
    'soft_timeout NULL: no soft limit.';

------------------------------------------------------------------------------------------
-- Counters

-- The counts task_counts keeps (01_tables.sql) plus the deltas not yet folded: exact as
-- of this snapshot, monotonic, never lowered by pruning. Rows: one per queue, task type
-- and kind that happened at least once.
CREATE VIEW pgtasks.task_counters AS
SELECT c.queue, c.task_type, c.kind, sum(c.n)::bigint AS total
  FROM (SELECT k.queue, k.task_type, k.kind, k.n FROM pgtasks.task_counts k
        UNION ALL
        SELECT d.queue, d.task_type, d.kind, d.n FROM pgtasks.task_count_deltas d) c
 GROUP BY c.queue, c.task_type, c.kind;
GRANT SELECT ON pgtasks.task_counters TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_counters IS
    'Monotonic counts per queue, task type and kind: submitted, done, failed, cancelled, '
    'retried (a failed attempt sent back to run again), rescued (an expired lease handed on), '
    'requeued (retry_task). Pruning never lowers them.';

------------------------------------------------------------------------------------------
-- /metrics

-- Everything /metrics shows, in one row, so a scrape is one query and its numbers are the
-- database's, however many workers and API processes run. The row holds jsonb documents
-- rather than one column per series because the label sets (queues, task types,
-- schedules) are data; the Python collector (pgtasks/web/metrics.py) maps them to
-- Prometheus families, and any other exporter can read the same row.
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
-- counters:  task_counters' rows ({queue, task_type, kind, total}).
-- queue_settings: per queue of pgtasks.queues (settings or active tasks): paused and the
--            limits (max_running, rate_limit, rate_period_seconds; null for none), so a
--            paused queue's backlog can be told from a stuck one.
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
  k.runtime_bounds,
  (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.queue, c.task_type, c.kind), '[]'::jsonb)
     FROM pgtasks.task_counters c) AS counters,
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
              'queue', q.queue, 'paused', q.paused, 'max_running', q.max_running,
              'rate_limit', q.rate_limit,
              'rate_period_seconds', extract(epoch FROM q.rate_period))
            ORDER BY q.queue), '[]'::jsonb)
     FROM pgtasks.queues q) AS queue_settings
  FROM knobs k;
GRANT SELECT ON pgtasks.metrics TO pgtasks_reader;
COMMENT ON VIEW pgtasks.metrics IS
    'Everything /metrics exports, in one row of JSON documents: per-queue counts, workers, '
    'per-type run times of the last runtime_window (histogram buckets at runtime_bounds), '
    'schedule lag, the task counters and each queue''s pause and limits.';

------------------------------------------------------------------------------------------
-- Health of the server itself: replica staleness, dead rows, the MVCC horizon

-- How far behind its primary the server answering is: what the dashboard, `pgtasks serve`
-- and the read-only CLI commands show when they read from a replica
-- (PGTASKS_READ_DATABASE_URL). One row; on a primary, in_recovery is false and the lag 0.
--
-- lag_seconds is 0 while a WAL receiver runs and has replayed everything it received:
-- the replica then holds every commit the primary has sent, so an idle primary does not
-- make it look stale (`now() - pg_last_xact_replay_timestamp()` alone would grow by a
-- second every second the primary commits nothing). Otherwise (replay behind what was
-- received, replay paused, or no WAL receiver: the primary is unreachable) it is the age
-- of the last commit replayed, which keeps growing while the replica is cut off. NULL
-- when no transaction was replayed since the replica started and it is not caught up.
-- A silent network partition is seen once wal_receiver_timeout (60 s by default) ends
-- the receiver. The age compares this server's clock with the primary's commit
-- timestamps, so clock skew between them adds to it. Real time (clock_timestamp()), not
-- pgtasks.now(): the replay timestamps are real time, whatever the test clock says.
CREATE VIEW pgtasks.replica_lag AS
SELECT r.in_recovery,
       r.receiving,
       r.last_replayed_commit_at,
       CASE WHEN NOT r.in_recovery THEN 0::float8
            WHEN r.receiving AND r.received_lsn IS NOT NULL
                 AND r.received_lsn <= r.replayed_lsn THEN 0::float8
            ELSE greatest(extract(epoch FROM clock_timestamp() - r.last_replayed_commit_at)::float8, 0)
       END AS lag_seconds
  FROM (SELECT pg_is_in_recovery() AS in_recovery,
               -- pid is the one column of pg_stat_wal_receiver that every role can read.
               EXISTS (SELECT FROM pg_stat_wal_receiver w WHERE w.pid IS NOT NULL) AS receiving,
               pg_last_wal_receive_lsn() AS received_lsn,
               pg_last_wal_replay_lsn() AS replayed_lsn,
               pg_last_xact_replay_timestamp() AS last_replayed_commit_at) r;
GRANT SELECT ON pgtasks.replica_lag TO pgtasks_reader;
COMMENT ON VIEW pgtasks.replica_lag IS
    'How stale this server is against its primary: lag_seconds 0 on a primary and on a '
    'replica that has replayed all it received from a live WAL receiver, else the age of '
    'the last replayed commit (NULL when none was replayed since start).';

-- Per pgtasks table: live and dead rows, the last vacuum, sizes and the age of its oldest
-- unfrozen transaction id, from the statistics every role can read. Dead rows that pile
-- up between vacuums are what slows claims (docs/operations.md); the counts are the
-- server's own, so on a replica (whose statistics count nothing replay does) they are
-- read from the primary.
CREATE VIEW pgtasks.table_health AS
SELECT c.relname::text AS table_name,
       s.n_live_tup AS live_tuples,
       s.n_dead_tup AS dead_tuples,
       s.n_mod_since_analyze AS modified_since_analyze,
       greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum_at,
       extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8
           AS seconds_since_vacuum,
       s.vacuum_count + s.autovacuum_count AS vacuums,
       pg_table_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS index_bytes,
       age(c.relfrozenxid) AS frozenxid_age
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_stat_all_tables s ON s.relid = c.oid
 WHERE n.nspname = 'pgtasks' AND c.relkind = 'r';
GRANT SELECT ON pgtasks.table_health TO pgtasks_reader;
COMMENT ON VIEW pgtasks.table_health IS
    'Per pgtasks table: live and dead rows, rows changed since the last analyze, the last '
    'vacuum (manual or auto), vacuum count, table and index bytes and the age of '
    'relfrozenxid. The server''s own statistics: read them on the primary.';

-- What holds the MVCC horizon back, by source: the oldest xmin (in transactions, age())
-- that keeps vacuum from removing the dead rows newer than it, and, where the source
-- says, how long it has been held. While one of these is old, autovacuum runs and removes
-- nothing. What a role can see: every transaction holding an xid (pg_locks), prepared
-- transactions and replication slots; the snapshots of other roles' sessions (a
-- REPEATABLE READ reader holds one without an xid) only with pg_read_all_stats
-- (pg_monitor), which is what to grant the role that scrapes /metrics. A session's own
-- query is left out.
CREATE VIEW pgtasks.xmin_horizon AS
SELECT 'session'::text AS source,
       coalesce(max(age(a.backend_xmin)), 0) AS xmin_age,
       coalesce(max(extract(epoch FROM now() - a.xact_start)), 0)::float8 AS held_seconds
  FROM pg_stat_activity a
 WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()
UNION ALL
SELECT 'transaction', coalesce(max(age(l.transactionid)), 0), NULL
  FROM pg_locks l
 WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
   AND l.pid <> pg_backend_pid()
UNION ALL
SELECT 'prepared', coalesce(max(age(p.transaction)), 0),
       coalesce(max(extract(epoch FROM now() - p.prepared)), 0)::float8
  FROM pg_prepared_xacts p
UNION ALL
SELECT 'replication_slot', coalesce(max(age(r.xmin)), 0), NULL
  FROM pg_replication_slots r
 WHERE r.xmin IS NOT NULL;
GRANT SELECT ON pgtasks.xmin_horizon TO pgtasks_reader;
COMMENT ON VIEW pgtasks.xmin_horizon IS
    'The oldest xmin holding back vacuum, by source (session, transaction, prepared, '
    'replication_slot): its age in transactions and, for sessions and prepared '
    'transactions, seconds held. Other roles'' sessions need pg_read_all_stats to be seen.';
-- Charts

-- The dashboard's charts over the last `span`, from task_rollup (01_tables.sql), never from
-- the tasks: one row per bucket, every bucket of the span (an empty one has zeros), oldest
-- first. Spans up to 2 hours come in 10-second buckets (5 minutes: 30 points, an hour:
-- 360), longer ones in 5-minute buckets (a day: 288); `queue` NULL sums every queue.
-- rolled is false for the buckets roll_up has not reached yet (the last 5 to 15 seconds,
-- more while maintenance is stopped): their counts are NULL, not 0, so a chart leaves them
-- out rather than draw a drop. The 5-minute bucket it is rolling holds what it rolled so far. Percentiles are read from the summed histograms
-- (histogram_quantile: the bin's upper bound, at most the max); means are sum / count.
-- ready and running: the deepest depth sample in the bucket, summed over the queues.
CREATE FUNCTION pgtasks.task_chart(span interval DEFAULT interval '1 hour', queue text DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, width interval, rolled boolean,
               done bigint, failed bigint, cancelled bigint,
               run_count bigint, run_mean float8, run_p50 float8, run_p95 float8, run_max float8,
               wait_count bigint, wait_mean float8, wait_p50 float8, wait_p95 float8, wait_max float8,
               ready bigint, running bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    now_ timestamptz := pgtasks.now();
    origin constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    w interval;
    rolled_to_ timestamptz;
BEGIN
    IF span IS NULL OR NOT (span >= interval '1 minute' AND span <= interval '7 days') THEN
        RAISE EXCEPTION 'pgtasks: span must be between 1 minute and 7 days, got %', coalesce(span::text, 'NULL')
            USING ERRCODE = 'PT133',
                  HINT = 'The dashboard asks for 5 minutes, 1 hour or 24 hours: 10-second buckets are kept for 2 hours, 5-minute ones for 8 days.';
    END IF;
    w := CASE WHEN span <= interval '2 hours' THEN interval '10 seconds' ELSE interval '5 minutes' END;
    SELECT s.rolled_to INTO rolled_to_ FROM pgtasks.rollup_state s;
    RETURN QUERY
    WITH slots AS (
        SELECT g.b FROM generate_series(date_bin(w, now_, origin) - span + w, date_bin(w, now_, origin), w) g(b)
    ), per AS (
        SELECT r.bucket AS b, sum(r.done)::bigint AS done, sum(r.failed)::bigint AS failed,
               sum(r.cancelled)::bigint AS cancelled,
               sum(r.run_count)::bigint AS run_count, sum(r.run_sum) AS run_sum, max(r.run_max) AS run_max,
               pgtasks.histogram_sum(array_agg(r.run_hist) FILTER (WHERE r.run_hist IS NOT NULL)) AS run_hist,
               sum(r.wait_count)::bigint AS wait_count, sum(r.wait_sum) AS wait_sum, max(r.wait_max) AS wait_max,
               pgtasks.histogram_sum(array_agg(r.wait_hist) FILTER (WHERE r.wait_hist IS NOT NULL)) AS wait_hist,
               sum(r.ready)::bigint AS ready, sum(r.running)::bigint AS running
          FROM pgtasks.task_rollup r
         WHERE r.width = w
           AND r.bucket >= date_bin(w, now_, origin) - span + w AND r.bucket <= date_bin(w, now_, origin)
           AND (task_chart.queue IS NULL OR r.queue = task_chart.queue)
         GROUP BY r.bucket
    )
    SELECT s.b, w, coalesce(s.b < rolled_to_, false) AS is_rolled,
           CASE WHEN s.b < rolled_to_ THEN coalesce(p.done, 0) END,
           CASE WHEN s.b < rolled_to_ THEN coalesce(p.failed, 0) END,
           CASE WHEN s.b < rolled_to_ THEN coalesce(p.cancelled, 0) END,
           CASE WHEN s.b < rolled_to_ THEN coalesce(p.run_count, 0) END,
           p.run_sum / nullif(p.run_count, 0),
           pgtasks.histogram_quantile(p.run_hist, 0.5, p.run_max),
           pgtasks.histogram_quantile(p.run_hist, 0.95, p.run_max),
           p.run_max,
           CASE WHEN s.b < rolled_to_ THEN coalesce(p.wait_count, 0) END,
           p.wait_sum / nullif(p.wait_count, 0),
           pgtasks.histogram_quantile(p.wait_hist, 0.5, p.wait_max),
           pgtasks.histogram_quantile(p.wait_hist, 0.95, p.wait_max),
           p.wait_max,
           p.ready, p.running
      FROM slots s
      LEFT JOIN per p ON p.b = s.b
     ORDER BY s.b;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.task_chart(interval, text) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.task_chart(interval, text) IS
    'The charts of the last span (1 minute to 7 days) from task_rollup, one row per bucket (10 seconds up to 2 hours, else 5 minutes), for one queue or all: tasks ended done, failed and cancelled, run and wait time (count, mean, p50, p95, max) and depth; counts NULL where not rolled up yet.';
