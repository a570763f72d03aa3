-- Task counters kept by the database for /metrics: task_counts (folded totals) and
-- task_count_deltas (one row per statement, appended by the history triggers), folded by
-- rescue_expired; pgtasks.task_counters adds the two, and pgtasks.metrics gains the
-- counters and each queue's pause and limits (appended columns). Counting starts when this
-- runs: tasks that ended before have no counts.
-- Also: task_history.event_id (orders one task's changes as they committed, so the event
-- stream misses no brief status), and pgtasks.error_fingerprint (what failures of one
-- cause share), by which the dashboard groups dead letters and a bulk retry picks them.
-- The definitions are the topic files' (01_tables.sql, 03_state_machine.sql, 07_leases.sql,
-- 11_views.sql). New tables and replaced functions and views only: no lock a claim needs
-- is held beyond a moment.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE TABLE pgtasks.task_counts (
    queue     text NOT NULL,
    task_type text NOT NULL,
    kind      text NOT NULL,
    n         bigint NOT NULL,
    CONSTRAINT task_counts_pkey PRIMARY KEY (queue, task_type, kind),
    CONSTRAINT task_counts_kind_known CHECK (kind IN ('submitted', 'done', 'failed', 'cancelled',
                                                      'retried', 'rescued', 'requeued'))
);
-- No key, no index: an append-only heap each history trigger adds to, emptied by the fold.
CREATE TABLE pgtasks.task_count_deltas (
    queue     text NOT NULL,
    task_type text NOT NULL,
    kind      text NOT NULL,
    n         bigint NOT NULL
);


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

-- hand-write: column pgtasks.metrics.counters (new)
-- hand-write: column pgtasks.metrics.queue_settings (new)
-- hand-write: column pgtasks.task_counters.kind (new)
-- hand-write: column pgtasks.task_counters.queue (new)
-- hand-write: column pgtasks.task_counters.task_type (new)
-- hand-write: column pgtasks.task_counters.total (new)
-- hand-write: column pgtasks.task_history.event_id (new)

CREATE OR REPLACE FUNCTION pgtasks.fold_counts()
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    WITH moved AS (
        DELETE FROM pgtasks.task_count_deltas d RETURNING d.queue, d.task_type, d.kind, d.n
    )
    INSERT INTO pgtasks.task_counts AS c (queue, task_type, kind, n)
    SELECT m.queue, m.task_type, m.kind, sum(m.n) FROM moved m
     GROUP BY m.queue, m.task_type, m.kind
     ORDER BY m.queue, m.task_type, m.kind
    ON CONFLICT ON CONSTRAINT task_counts_pkey DO UPDATE SET n = c.n + excluded.n
$function$;
CREATE OR REPLACE FUNCTION pgtasks.record_creations()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    -- The history and the submitted counter's delta (task_counts, 01_tables.sql) in one
    -- statement: one row per queue and type of the statement, not a hot counter row.
    WITH history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
        SELECT n.id, n.attempt, NULL, n.status FROM new_rows n
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT n.queue, n.task_type, 'submitted', count(*) FROM new_rows n GROUP BY n.queue, n.task_type;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_status_changes()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_nestloop TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
BEGIN
    -- The history and the counters' deltas (task_counts, 01_tables.sql) in one statement
    -- over one join. A claim counts nothing; a rescue (rescue_expired sets
    -- pgtasks.rescuing) counts `rescued` besides what the attempt became.
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.attempt, o.status AS from_status, n.status AS to_status,
               coalesce(n.worker_id, o.worker_id) AS worker_id, n.queue, n.task_type,
               CASE WHEN n.status = 'DONE' THEN 'done'
                    WHEN n.status = 'FAILED' THEN 'failed'
                    WHEN n.status = 'CANCELLED' THEN 'cancelled'
                    WHEN n.status = 'COMMIT' AND n.retry_count > o.retry_count THEN 'retried'
                    WHEN o.status IN ('FAILED', 'CANCELLED') THEN 'requeued' END AS kind
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE o.status <> n.status
    ), history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
        SELECT c.id, c.attempt, c.from_status, c.to_status, c.worker_id FROM changed c
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT c.queue, c.task_type, c.kind, count(*)
      FROM changed c
     WHERE c.kind IS NOT NULL
     GROUP BY c.queue, c.task_type, c.kind
    UNION ALL
    -- The setting alone decides (a one-time filter): outside a rescue this reads nothing.
    SELECT c.queue, c.task_type, 'rescued', count(*)
      FROM changed c
     WHERE current_setting('pgtasks.rescuing', true) = 'on' AND c.from_status = 'RUNNING'
     GROUP BY c.queue, c.task_type;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.rescue_expired(max_tasks integer DEFAULT 1000)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.tasks;
    n integer := 0;
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    -- Read by record_updates: what moves now is counted as rescued.
    PERFORM set_config('pgtasks.rescuing', 'on', true);
    BEGIN
        FOR t IN SELECT * FROM pgtasks.lock_expired(max_tasks) LOOP
            PERFORM pgtasks.record_failure(t, pgtasks.expiry_reason(t), NULL, true, NULL);
            n := n + 1;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        n := 0;
        FOR t IN SELECT * FROM pgtasks.lock_expired(max_tasks) LOOP
            n := n + pgtasks.rescue_one(t);
        END LOOP;
    END;
    PERFORM set_config('pgtasks.rescuing', '', true);
    DELETE FROM pgtasks.worker_registry WHERE last_seen < pgtasks.now() - interval '10 minutes';
    -- Watch registrations of clients that went away without unwatching (killed mid-wait):
    -- they would only cost needless notifications, but they should not pile up.
    DELETE FROM pgtasks.task_waiters w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = w.pid);
    PERFORM pgtasks.fold_counts();
    RETURN n;
END $function$;
CREATE OR REPLACE VIEW pgtasks.task_counters AS
 SELECT queue,
    task_type,
    kind,
    (sum(n))::bigint AS total
   FROM ( SELECT k.queue,
            k.task_type,
            k.kind,
            k.n
           FROM pgtasks.task_counts k
        UNION ALL
         SELECT d.queue,
            d.task_type,
            d.kind,
            d.n
           FROM pgtasks.task_count_deltas d) c
  GROUP BY queue, task_type, kind;
CREATE OR REPLACE VIEW pgtasks.metrics AS
 WITH knobs AS (
         SELECT '00:05:00'::interval AS runtime_window,
            ARRAY[(0.01)::double precision, (0.05)::double precision, (0.1)::double precision, (0.5)::double precision, (1)::double precision, (5)::double precision, (10)::double precision, (30)::double precision, (60)::double precision, (300)::double precision, (1800)::double precision, (3600)::double precision] AS runtime_bounds
        ), recent AS (
         SELECT t.task_type,
            t.status,
            (EXTRACT(epoch FROM (t.finished_at - t.started_at)))::double precision AS secs
           FROM pgtasks.tasks t,
            knobs k_1
          WHERE ((t.status = ANY (ARRAY['DONE'::pgtasks.status, 'FAILED'::pgtasks.status])) AND (t.started_at IS NOT NULL) AND (t.finished_at > (now() - k_1.runtime_window)))
        ), per_bound AS (
         SELECT r.task_type,
            b.ord,
            count(*) FILTER (WHERE (r.secs <= b.le)) AS n
           FROM recent r,
            knobs k_1,
            LATERAL unnest(k_1.runtime_bounds) WITH ORDINALITY b(le, ord)
          GROUP BY r.task_type, b.ord
        ), per_type AS (
         SELECT r.task_type,
            count(*) AS count,
            count(*) FILTER (WHERE (r.status = 'FAILED'::pgtasks.status)) AS failed,
            sum(r.secs) AS sum,
            ( SELECT array_agg(pb.n ORDER BY pb.ord) AS array_agg
                   FROM per_bound pb
                  WHERE (pb.task_type = r.task_type)) AS buckets
           FROM recent r
          GROUP BY r.task_type
        )
 SELECT ( SELECT COALESCE(jsonb_agg(to_jsonb(q.*) ORDER BY q.queue), '[]'::jsonb) AS "coalesce"
           FROM ( SELECT s.queue,
                    s.pending,
                    s.waiting,
                    s.running,
                    s.done,
                    s.failed,
                    s.cancelled,
                    s.ready,
                    COALESCE(EXTRACT(epoch FROM s.oldest_ready_age), (0)::numeric) AS oldest_ready_seconds,
                    s.done_last_minute,
                    s.waiting_on_parents
                   FROM pgtasks.queue_stats s) q) AS queues,
    ( SELECT to_jsonb(w.*) AS to_jsonb
           FROM ( SELECT count(*) FILTER (WHERE v.alive) AS alive,
                    count(*) FILTER (WHERE (NOT v.alive)) AS dead,
                    COALESCE(sum(v.concurrency) FILTER (WHERE v.alive), (0)::bigint) AS slots,
                    COALESCE(sum(v.running) FILTER (WHERE v.alive), (0)::numeric) AS running
                   FROM pgtasks.workers v) w) AS workers,
    ( SELECT COALESCE(jsonb_agg(to_jsonb(p.*) ORDER BY p.task_type), '[]'::jsonb) AS "coalesce"
           FROM per_type p) AS runtimes,
    ( SELECT COALESCE(jsonb_agg(jsonb_build_object('schedule', d.name, 'lag_seconds', GREATEST(EXTRACT(epoch FROM (now() - d.next_run_at)), (0)::numeric)) ORDER BY d.name), '[]'::jsonb) AS "coalesce"
           FROM pgtasks.schedule_defs d
          WHERE ((NOT d.paused) AND (d.next_run_at IS NOT NULL))) AS schedules,
    runtime_window,
    runtime_bounds,
    ( SELECT COALESCE(jsonb_agg(to_jsonb(c.*) ORDER BY c.queue, c.task_type, c.kind), '[]'::jsonb) AS "coalesce"
           FROM pgtasks.task_counters c) AS counters,
    ( SELECT COALESCE(jsonb_agg(jsonb_build_object('queue', q.queue, 'paused', q.paused, 'max_running', q.max_running, 'rate_limit', q.rate_limit, 'rate_period_seconds', EXTRACT(epoch FROM q.rate_period)) ORDER BY q.queue), '[]'::jsonb) AS "coalesce"
           FROM pgtasks.queues q) AS queue_settings
   FROM knobs k;
CREATE OR REPLACE VIEW pgtasks.task_history AS
 SELECT e.task_id,
    e.at,
    e.from_status,
    e.to_status,
    e.attempt,
    e.worker_id,
    e.db_user,
        CASE p.kind
            WHEN 'snooze'::text THEN format('snoozed until %s'::text, p.until)
            WHEN 'event'::text THEN format('waiting for event %s until %s'::text, p.event_name, p.until)
            ELSE NULL::text
        END AS note,
    e.id AS event_id
   FROM (pgtasks.task_events e
     LEFT JOIN pgtasks.task_pauses p ON (((p.task_id = e.task_id) AND (p.attempt = e.attempt) AND (e.from_status = 'RUNNING'::pgtasks.status) AND (e.to_status = 'COMMIT'::pgtasks.status))));
COMMENT ON FUNCTION pgtasks.fold_counts() IS 'Folds task_count_deltas into task_counts; rescue_expired (and so maintain) calls it.';
COMMENT ON FUNCTION pgtasks.record_creations() IS 'Trigger function: records each inserted task in task_events (from NULL to its first status) and in the submitted counter (task_count_deltas).';
COMMENT ON FUNCTION pgtasks.record_status_changes() IS 'Trigger function: records every status change of an updated task in task_events, and its count (done, failed, cancelled, retried, requeued, rescued) in task_count_deltas.';
COMMENT ON VIEW pgtasks.metrics IS 'Everything /metrics exports, in one row of JSON documents: per-queue counts, workers, per-type run times of the last runtime_window (histogram buckets at runtime_bounds), schedule lag, the task counters and each queue''s pause and limits.';
GRANT SELECT ON TABLE pgtasks.task_counters TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_counters IS 'Monotonic counts per queue, task type and kind: submitted, done, failed, cancelled, retried (a failed attempt sent back to run again), rescued (an expired lease handed on), requeued (retry_task). Pruning never lowers them.';
COMMENT ON TABLE pgtasks.task_count_deltas IS 'What the statements since the last fold added to task_counts, one row per statement, queue, task type and kind.';
COMMENT ON TABLE pgtasks.task_counts IS 'Counts per queue, task type and kind (submitted, done, failed, cancelled, retried, rescued, requeued) folded from task_count_deltas; read them through pgtasks.task_counters.';
COMMENT ON COLUMN pgtasks.task_history.event_id IS 'Orders a task''s changes as they committed: WHERE task_id = $1 AND event_id > $2 ORDER BY event_id reads those after one seen.';
