-- The charts' roll-up: task_rollup holds per 10-second and 5-minute bucket and queue the
-- tasks that ended, histograms of their run and wait times and sampled depth; roll_up
-- (07_leases.sql) fills it from maintain(), task_chart (11_views.sql) reads it. Two new
-- tables nobody writes yet, new functions, and maintain() calling roll_up. Every statement
-- can run again (IF NOT EXISTS, ON CONFLICT), as the newest delta's must for the upgrade tests.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE TABLE IF NOT EXISTS pgtasks.task_rollup (
    width      interval NOT NULL,
    bucket     timestamptz NOT NULL,
    queue      text NOT NULL,
    done       bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    cancelled  bigint NOT NULL DEFAULT 0,
    run_count  bigint NOT NULL DEFAULT 0,
    run_sum    float8 NOT NULL DEFAULT 0,
    run_max    float8,
    run_hist   bigint[],
    wait_count bigint NOT NULL DEFAULT 0,
    wait_sum   float8 NOT NULL DEFAULT 0,
    wait_max   float8,
    wait_hist  bigint[],
    ready      bigint,
    running    bigint,
    CONSTRAINT task_rollup_pkey PRIMARY KEY (width, bucket, queue),
    CONSTRAINT task_rollup_width_known CHECK (width IN (interval '10 seconds', interval '5 minutes'))
);

CREATE TABLE IF NOT EXISTS pgtasks.rollup_state (
    rolled_to timestamptz NOT NULL,
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO pgtasks.rollup_state (rolled_to) VALUES ('-infinity') ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION pgtasks.histogram(seconds double precision[])
 RETURNS bigint[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT array_agg(coalesce(c.n, 0) ORDER BY i.i)
      FROM generate_series(1, cardinality(pgtasks.rollup_bounds())) i(i)
      LEFT JOIN (SELECT width_bucket(greatest(s.s, 0), pgtasks.rollup_bounds()) AS bin, count(*) AS n
                   FROM unnest(seconds) s(s) GROUP BY 1) c ON c.bin = i.i
    HAVING count(c.n) > 0
$function$;
CREATE OR REPLACE FUNCTION pgtasks.histogram_quantile(hist bigint[], q double precision, max_seen double precision)
 RETURNS double precision
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT least(coalesce((pgtasks.rollup_bounds())[c.i::integer + 1], max_seen), max_seen)
      FROM (SELECT u.i, sum(u.n) OVER (ORDER BY u.i) AS cum, sum(u.n) OVER () AS total
              FROM unnest(hist) WITH ORDINALITY u(n, i)) c
     WHERE c.total > 0 AND c.cum >= q * c.total
     ORDER BY c.i
     LIMIT 1
$function$;
CREATE OR REPLACE FUNCTION pgtasks.histogram_sum(hists bigint[])
 RETURNS bigint[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT array_agg((SELECT sum(hists[r][i])::bigint FROM generate_subscripts(hists, 1) r) ORDER BY i)
      FROM generate_subscripts(hists, 2) i
$function$;
CREATE OR REPLACE FUNCTION pgtasks.maintain(max_tasks integer DEFAULT 1000)
 RETURNS TABLE(rescued integer, pruned integer)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    PERFORM 1 FROM pgtasks.locks l WHERE l.name = 'maintain' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        rescued := 0;
        pruned := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    rescued := pgtasks.rescue_expired(max_tasks);
    -- Before the prune, so no ended task goes before it is counted. The charts are not
    -- worth a failed maintenance: an error here is a warning, and rescue and pruning go on.
    BEGIN
        PERFORM pgtasks.roll_up();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgtasks: roll_up failed (%); the charts wait for the next call', SQLERRM;
    END;
    pruned := pgtasks.prune_finished(NULL, max_tasks);
    PERFORM pgtasks.settle_new_edges(max_tasks);
    RETURN NEXT;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.roll_up()
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    now_ timestamptz := pgtasks.now();
    fine constant interval := interval '10 seconds';
    coarse constant interval := interval '5 minutes';
    origin constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    from_ timestamptz;
    to_ timestamptz;
BEGIN
    SELECT greatest(s.rolled_to, date_bin(fine, now_ - interval '2 hours', origin)) INTO from_
      FROM pgtasks.rollup_state s FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN  -- another call is rolling: the work is the same whoever does it
        RETURN 0;
    END IF;
    to_ := date_bin(fine, now_ - interval '5 seconds', origin);
    -- Straight to the first task that ended since (one probe of tasks_finished_at): a fresh
    -- install or an idle night costs no call per empty 10 minutes.
    from_ := greatest(from_, least(coalesce(
        date_bin(fine, (SELECT min(t.finished_at) FROM pgtasks.tasks t
                         WHERE t.status IN ('DONE', 'FAILED', 'CANCELLED') AND t.finished_at >= from_),
                 origin), to_), to_));
    to_ := least(to_, from_ + fine * 60);
    IF to_ > from_ THEN
        INSERT INTO pgtasks.task_rollup AS r (width, bucket, queue, done, failed, cancelled,
               run_count, run_sum, run_max, run_hist, wait_count, wait_sum, wait_max, wait_hist)
        SELECT fine, e.bucket, e.queue,
               count(*) FILTER (WHERE e.status = 'DONE'),
               count(*) FILTER (WHERE e.status = 'FAILED'),
               count(*) FILTER (WHERE e.status = 'CANCELLED'),
               count(e.run_s), coalesce(sum(e.run_s), 0), max(e.run_s),
               pgtasks.histogram(array_agg(e.run_s) FILTER (WHERE e.run_s IS NOT NULL)),
               count(e.wait_s), coalesce(sum(e.wait_s), 0), max(e.wait_s),
               pgtasks.histogram(array_agg(e.wait_s) FILTER (WHERE e.wait_s IS NOT NULL))
          FROM (SELECT date_bin(fine, t.finished_at, origin) AS bucket, t.queue, t.status,
                       CASE WHEN t.status IN ('DONE', 'FAILED') AND t.started_at IS NOT NULL
                            THEN greatest(extract(epoch FROM t.finished_at - t.started_at), 0)::float8
                       END AS run_s,
                       -- One attempt: run_at is still when the task became ready.
                       CASE WHEN t.status IN ('DONE', 'FAILED') AND t.attempt = 1
                            THEN greatest(extract(epoch FROM t.started_at - t.run_at), 0)::float8
                       END AS wait_s
                  FROM pgtasks.tasks t
                 WHERE t.status IN ('DONE', 'FAILED', 'CANCELLED')
                   AND t.finished_at >= from_ AND t.finished_at < to_) e
         GROUP BY e.bucket, e.queue
         ORDER BY e.bucket, e.queue
        ON CONFLICT ON CONSTRAINT task_rollup_pkey DO UPDATE
           SET done = excluded.done, failed = excluded.failed, cancelled = excluded.cancelled,
               run_count = excluded.run_count, run_sum = excluded.run_sum,
               run_max = excluded.run_max, run_hist = excluded.run_hist,
               wait_count = excluded.wait_count, wait_sum = excluded.wait_sum,
               wait_max = excluded.wait_max, wait_hist = excluded.wait_hist;
    END IF;
    -- Skipped or rolled, every bucket before to_ is final.
    UPDATE pgtasks.rollup_state s SET rolled_to = greatest(from_, to_);
    -- The depth now, into the bucket now falls in (rolled later; its counts leave it be).
    INSERT INTO pgtasks.task_rollup AS r (width, bucket, queue, ready, running)
    SELECT fine, date_bin(fine, now_, origin), d.queue, d.ready, d.running
      FROM (SELECT q.queue, q.ready, q.running FROM pgtasks.queues q
             WHERE q.ready > 0 OR q.running > 0
             ORDER BY q.ready + q.running DESC, q.queue
             LIMIT 50) d
     ORDER BY d.queue
    ON CONFLICT ON CONSTRAINT task_rollup_pkey DO UPDATE
       SET ready = greatest(r.ready, excluded.ready), running = greatest(r.running, excluded.running);
    -- The 5-minute buckets that the new 10-second ones (and the sample) fall in, summed again.
    INSERT INTO pgtasks.task_rollup AS r (width, bucket, queue, done, failed, cancelled,
           run_count, run_sum, run_max, run_hist, wait_count, wait_sum, wait_max, wait_hist,
           ready, running)
    SELECT coarse, f.bucket, f.queue, sum(f.done), sum(f.failed), sum(f.cancelled),
           sum(f.run_count), sum(f.run_sum), max(f.run_max),
           pgtasks.histogram_sum(array_agg(f.run_hist) FILTER (WHERE f.run_hist IS NOT NULL)),
           sum(f.wait_count), sum(f.wait_sum), max(f.wait_max),
           pgtasks.histogram_sum(array_agg(f.wait_hist) FILTER (WHERE f.wait_hist IS NOT NULL)),
           max(f.ready), max(f.running)
      FROM (SELECT date_bin(coarse, x.bucket, origin) AS bucket, x.queue, x.done, x.failed,
                   x.cancelled, x.run_count, x.run_sum, x.run_max, x.run_hist, x.wait_count,
                   x.wait_sum, x.wait_max, x.wait_hist, x.ready, x.running
              FROM pgtasks.task_rollup x
             WHERE x.width = fine AND x.bucket >= date_bin(coarse, from_, origin)) f
     GROUP BY f.bucket, f.queue
     ORDER BY f.bucket, f.queue
    ON CONFLICT ON CONSTRAINT task_rollup_pkey DO UPDATE
       SET done = excluded.done, failed = excluded.failed, cancelled = excluded.cancelled,
           run_count = excluded.run_count, run_sum = excluded.run_sum,
           run_max = excluded.run_max, run_hist = excluded.run_hist,
           wait_count = excluded.wait_count, wait_sum = excluded.wait_sum,
           wait_max = excluded.wait_max, wait_hist = excluded.wait_hist,
           ready = excluded.ready, running = excluded.running;
    -- The 5-minute sums above read 10-second rows from 2 hours and 5 minutes back at most.
    DELETE FROM pgtasks.task_rollup r WHERE r.width = fine AND r.bucket < now_ - interval '2 hours 5 minutes';
    DELETE FROM pgtasks.task_rollup r WHERE r.width = coarse AND r.bucket < now_ - interval '8 days';
    RETURN greatest(extract(epoch FROM to_ - from_) / 10, 0)::integer;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.rollup_bounds()
 RETURNS double precision[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT '{0,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600,86400}'::float8[]
$function$;
CREATE OR REPLACE FUNCTION pgtasks.task_chart(span interval DEFAULT '01:00:00'::interval, queue text DEFAULT NULL::text)
 RETURNS TABLE(bucket timestamp with time zone, width interval, rolled boolean, done bigint, failed bigint, cancelled bigint, run_count bigint, run_mean double precision, run_p50 double precision, run_p95 double precision, run_max double precision, wait_count bigint, wait_mean double precision, wait_p50 double precision, wait_p95 double precision, wait_max double precision, ready bigint, running bigint)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
COMMENT ON FUNCTION pgtasks.histogram(double precision[]) IS 'Counts of the values per bin of rollup_bounds() (NULL when there are none).';
GRANT EXECUTE ON FUNCTION pgtasks.histogram_quantile(bigint[],double precision,double precision) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.histogram_quantile(bigint[],double precision,double precision) IS 'The q-quantile of a task_rollup histogram: the upper bound of its bin, at most max_seen.';
COMMENT ON FUNCTION pgtasks.histogram_sum(bigint[]) IS 'The bin-by-bin sum of histograms given as the rows of a two-dimensional array.';
GRANT EXECUTE ON FUNCTION pgtasks.roll_up() TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.roll_up() IS 'Rolls the tasks that ended into task_rollup''s 10-second and 5-minute buckets (up to 10 minutes a call), samples queue depth and deletes buckets past their horizon; returns the 10-second buckets rolled. maintain() calls it.';
GRANT EXECUTE ON FUNCTION pgtasks.rollup_bounds() TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.rollup_bounds() IS 'The lower bounds in seconds of the bins of task_rollup''s run and wait histograms.';
GRANT EXECUTE ON FUNCTION pgtasks.task_chart(interval,text) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.task_chart(interval,text) IS 'The charts of the last span (1 minute to 7 days) from task_rollup, one row per bucket (10 seconds up to 2 hours, else 5 minutes), for one queue or all: tasks ended done, failed and cancelled, run and wait time (count, mean, p50, p95, max) and depth; counts NULL where not rolled up yet.';
COMMENT ON TABLE pgtasks.rollup_state IS 'The end of the last 10-second bucket roll_up rolled up (one row; -infinity before its first call).';
COMMENT ON TABLE pgtasks.task_rollup IS 'Per bucket (10 seconds for 2 hours, 5 minutes for 8 days) and queue: tasks ended done, failed and cancelled, histograms of run and wait times, and sampled depth; read it through pgtasks.task_chart.';
