-- Role bounds: JSON every client can decode, names that are never blank (Unicode invisible
-- characters included), times and worker ids within their documented bounds for every
-- argument of their kind, schedules that cannot burst or hold the others back, unique keys
-- per task type, and the powers only pgtasks_admin has (another role's task type policy,
-- pruning before the retention). The functions below are the topic files' definitions;
-- the table changes come after them, so their locks are held only until the commit.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

-- configure gains schedule_min_every and schedule_max_ticks. Only pgtasks_admin calls it,
-- by name; a call with the arguments it had binds to the new signature (every argument
-- has a default), so no worker or client of the release before breaks.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.configure(text,integer,integer,interval,interval,interval,interval,interval,integer,integer,integer);

CREATE OR REPLACE FUNCTION pgtasks.caller_is_admin()
 RETURNS boolean
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT pg_catalog.pg_has_role(session_user, 'pgtasks_admin', 'MEMBER')
        OR pg_catalog.pg_has_role(session_user, 'pgtasks_owner', 'MEMBER')
$function$;
CREATE OR REPLACE FUNCTION pgtasks.check_cron(cron text)
 RETURNS text
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    expr   text := lower(btrim(cron));
    fields text[];
    month_names text[] := ARRAY['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec'];
BEGIN
    expr := CASE expr WHEN '@yearly' THEN '0 0 1 1 *' WHEN '@annually' THEN '0 0 1 1 *'
                      WHEN '@monthly' THEN '0 0 1 * *' WHEN '@weekly' THEN '0 0 * * 0'
                      WHEN '@daily' THEN '0 0 * * *' WHEN '@midnight' THEN '0 0 * * *'
                      WHEN '@hourly' THEN '0 * * * *' ELSE expr END;
    fields := regexp_split_to_array(expr, '\s+');
    IF expr IS NULL OR expr = '' OR array_length(fields, 1) <> 5 THEN
        RAISE EXCEPTION 'pgtasks: a cron expression has 5 fields (minute hour day-of-month month day-of-week), got %',
                coalesce(quote_literal(cron), 'NULL')
            USING ERRCODE = 'PT401',
                  HINT = 'E.g. ''0 6 * * *'' (06:00 daily), ''*/5 * * * *'', ''0 0 1 * *'', or @hourly/@daily/@weekly/@monthly/@yearly.';
    END IF;
    expr := concat_ws(' ',
        pgtasks.check_cron_field(fields[1], 'minute', 0, 59, NULL),
        pgtasks.check_cron_field(fields[2], 'hour', 0, 23, NULL),
        pgtasks.check_cron_field(fields[3], 'day-of-month', 1, 31, NULL),
        pgtasks.check_cron_field(fields[4], 'month', 1, 12, month_names),
        -- 0 and 7 are both Sunday.
        pgtasks.check_cron_field(fields[5], 'day-of-week', 0, 7,
            ARRAY['sun','mon','tue','wed','thu','fri','sat']));
    IF (SELECT min(d) FROM unnest(pgtasks.cron_field_values(fields[3], 1, 31, NULL)) AS u(d))
       > (SELECT max(CASE WHEN m = 2 THEN 29 WHEN m IN (4, 6, 9, 11) THEN 30 ELSE 31 END)
            FROM unnest(pgtasks.cron_field_values(fields[4], 1, 12, month_names)) AS u(m)) THEN
        RAISE EXCEPTION 'pgtasks: cron % never fires: no month it names has day % (of month)',
                quote_literal(cron), fields[3]
            USING ERRCODE = 'PT401',
                  HINT = 'Pick days every named month has, e.g. ''0 0 28 2 *'', or ''0 0 1 3 *'' for the day after February.';
    END IF;
    RETURN expr;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_cron_field(field text, what text, lo integer, hi integer, names text[])
 RETURNS text
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    item  text;
    m     text[];
    a     integer;
    b     integer;
    f     text := lower(field);
    items text[] := '{}';
BEGIN
    FOREACH item IN ARRAY string_to_array(f, ',') LOOP
        m := regexp_match(item, '^(\*|([0-9a-z]+)(-([0-9a-z]+))?)(/([0-9]+))?$');
        IF m IS NULL THEN
            RAISE EXCEPTION 'pgtasks: invalid cron %: % (expected *, N, N-M, a list of them, each with an optional /step)',
                    what, quote_literal(field)
                USING ERRCODE = 'PT401', HINT = 'Five fields: minute hour day-of-month month day-of-week, e.g. ''0 6 * * *''.';
        END IF;
        IF m[2] IS NOT NULL THEN
            a := CASE WHEN m[2] ~ '^[0-9]+$' AND length(m[2]) <= 4 THEN m[2]::integer
                      ELSE array_position(names, m[2]) - 1 + lo END;
            b := CASE WHEN m[4] IS NULL THEN a
                      WHEN m[4] ~ '^[0-9]+$' AND length(m[4]) <= 4 THEN m[4]::integer
                      ELSE array_position(names, m[4]) - 1 + lo END;
            IF a IS NULL OR b IS NULL OR a NOT BETWEEN lo AND hi OR b NOT BETWEEN lo AND hi OR b < a THEN
                RAISE EXCEPTION 'pgtasks: invalid cron %: % (values % to %, ranges low-high)', what, quote_literal(field), lo, hi
                    USING ERRCODE = 'PT401', HINT = 'Five fields: minute hour day-of-month month day-of-week, e.g. ''0 6 * * *''.';
            END IF;
        END IF;
        IF m[6] IS NOT NULL AND (length(m[6]) > 4 OR m[6]::integer NOT BETWEEN 1 AND hi - lo + 1) THEN
            RAISE EXCEPTION 'pgtasks: invalid cron % step in %', what, quote_literal(field)
                USING ERRCODE = 'PT401', HINT = 'A step is 1 or more, e.g. ''*/15''.';
        END IF;
        items := items || CASE WHEN m[4] IS NOT NULL AND a = b THEN a::text ELSE item END;
    END LOOP;
    RETURN array_to_string(items, ',');
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_log_lines(levels text[], loggers text[], ats timestamp with time zone[])
 RETURNS void
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    bad_at timestamptz;
BEGIN
    IF EXISTS (SELECT 1 FROM (SELECT DISTINCT n FROM unnest(levels || loggers) AS u(n) WHERE n IS NOT NULL) d
                WHERE pgtasks.is_blank(d.n)) THEN
        RAISE EXCEPTION 'pgtasks: a log level or logger name is blank'
            USING ERRCODE = 'PT124', HINT = 'Pass NULL for no logger name (and for the level INFO), or a visible name.';
    END IF;
    SELECT a INTO bad_at FROM unnest(ats) AS u(a)
     WHERE a IS NOT NULL AND (NOT isfinite(a)
           OR a NOT BETWEEN pgtasks.now() - interval '100 years' AND pgtasks.now() + interval '100 years')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: a log line''s time must be within 100 years of now, got %', bad_at
            USING ERRCODE = 'PT105', HINT = 'Pass when the line was logged, or NULL for now.';
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_params(params jsonb, item integer DEFAULT NULL::integer)
 RETURNS void
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    limit_bytes integer := (SELECT s.max_params_bytes FROM pgtasks.settings s);
    size_bytes  integer;
    problem     text;
BEGIN
    IF params IS NULL OR jsonb_typeof(params) <> 'object' THEN
        RAISE EXCEPTION 'pgtasks: params must be a JSON object, got % %',
                coalesce(jsonb_typeof(params), 'NULL'),
                CASE WHEN item IS NULL THEN '' ELSE pg_catalog.format('(item %s of the list)', item) END
            USING ERRCODE = 'PT102', HINT = 'Wrap values in an object, e.g. ''{"width": 10}''.';
    END IF;
    size_bytes := octet_length(params::text);
    IF size_bytes > limit_bytes THEN
        RAISE EXCEPTION 'pgtasks: params are % bytes, more than settings.max_params_bytes (%) %',
                size_bytes, limit_bytes,
                CASE WHEN item IS NULL THEN '' ELSE pg_catalog.format('(item %s of the list)', item) END
            USING ERRCODE = 'PT113',
                  HINT = 'Store big inputs elsewhere and pass a reference, or raise the limit with configure(max_params_bytes => ...).';
    END IF;
    IF size_bytes > 202 THEN
        problem := pgtasks.json_shape_error(params, size_bytes);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'pgtasks: params not accepted: %, which clients cannot decode%', problem,
                    CASE WHEN item IS NULL THEN '' ELSE pg_catalog.format(' (item %s of the list)', item) END
                USING ERRCODE = 'PT123',
                      HINT = 'Clients cannot decode JSON nested over 100 levels or numbers of 1e4000 and more; pass big numbers as strings.';
        END IF;
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_params_list(params_list jsonb[])
 RETURNS void
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    bad record;
BEGIN
    IF params_list IS NULL THEN
        RAISE EXCEPTION 'pgtasks: params_list must be an array of JSON objects, got NULL'
            USING ERRCODE = 'PT108', HINT = 'Pass ARRAY[''{}''::jsonb, ...] or an empty array.';
    END IF;
    -- Items over 202 bytes of text only pay for json_shape_error (see there): a plain
    -- batch of small params makes no call per item. Each item's text is made once (OFFSET 0
    -- keeps the subquery from being flattened into two conversions). Measured with 1,000
    -- items of '{"id": 1}': 0.02 to 0.06 us per item more than the size test alone (0.11
    -- with a LATERAL), against 20 to 50 us per item for the whole submit_tasks.
    SELECT u.p, u.ord::integer AS ord INTO bad
      FROM (SELECT x.p, x.ord, octet_length(x.p::text) AS size_bytes
              FROM unnest(params_list) WITH ORDINALITY AS x(p, ord) OFFSET 0) u
     WHERE u.p IS NULL OR jsonb_typeof(u.p) <> 'object'
        OR u.size_bytes > (SELECT s.max_params_bytes FROM pgtasks.settings s)
        OR (u.size_bytes > 202 AND pgtasks.json_shape_error(u.p, u.size_bytes) IS NOT NULL)
     ORDER BY u.ord
     LIMIT 1;
    IF FOUND THEN
        PERFORM pgtasks.check_params(bad.p, bad.ord);
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_result_size(result jsonb, what text)
 RETURNS void
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    size_bytes bigint := octet_length(result::text);
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
    problem text;
BEGIN
    IF size_bytes > max_bytes THEN
        RAISE EXCEPTION 'pgtasks: % of % bytes is larger than max_result_bytes (%)', what, size_bytes, max_bytes
            USING ERRCODE = 'PT203',
                  HINT = 'Store big outputs elsewhere (object storage, a table) and return a reference; '
                         'or raise the limit: SELECT pgtasks.configure(max_result_bytes => ...).';
    END IF;
    IF size_bytes > 202 THEN
        problem := pgtasks.json_shape_error(result, size_bytes);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'pgtasks: % not accepted: %, which clients cannot decode', what, problem
                USING ERRCODE = 'PT123',
                      HINT = 'Clients cannot decode JSON nested over 100 levels or numbers of 1e4000 and more; return big numbers as strings.';
        END IF;
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_schedule(cron text, every interval, timezone text, overlap text, catch_up interval)
 RETURNS text
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF (cron IS NULL) = (every IS NULL) THEN
        RAISE EXCEPTION 'pgtasks: give exactly one of cron and every'
            USING ERRCODE = 'PT404', HINT = 'E.g. cron => ''0 6 * * *'' or every => ''5 minutes''.';
    END IF;
    -- date_bin computes every-ticks in SQL, and bins only fixed durations: a month is not
    -- one (use cron '0 0 1 * *'). More than a year between ticks is a typo.
    IF every IS NOT NULL AND (every <= interval '0' OR extract(month FROM every) <> 0
                              OR extract(year FROM every) <> 0 OR every > interval '366 days') THEN
        RAISE EXCEPTION 'pgtasks: every must be a positive fixed duration of at most 366 days, got %', every
            USING ERRCODE = 'PT403', HINT = 'E.g. every => ''30 seconds''; for calendar months use cron, e.g. ''0 0 1 * *''.';
    END IF;
    IF every < (SELECT s.schedule_min_every FROM pgtasks.settings s) THEN
        RAISE EXCEPTION 'pgtasks: every must be at least settings.schedule_min_every (%), got %',
                (SELECT s.schedule_min_every FROM pgtasks.settings s), every
            USING ERRCODE = 'PT403',
                  HINT = 'Workers fire schedules about once a second; an admin may lower the floor with configure(schedule_min_every => ...).';
    END IF;
    IF timezone IS NULL OR NOT EXISTS (SELECT 1 FROM pg_timezone_names z WHERE z.name = check_schedule.timezone) THEN
        RAISE EXCEPTION 'pgtasks: unknown time zone %', coalesce(quote_literal(timezone), 'NULL')
            USING ERRCODE = 'PT402', HINT = 'Use an IANA name from pg_timezone_names, e.g. ''Europe/Berlin'' or ''UTC''.';
    END IF;
    IF overlap IS NULL OR overlap NOT IN ('allow', 'skip', 'cancel_previous') THEN
        RAISE EXCEPTION 'pgtasks: overlap must be allow, skip or cancel_previous, got %', coalesce(quote_literal(overlap), 'NULL')
            USING ERRCODE = 'PT405', HINT = 'skip: no new task while the previous one is active; cancel_previous: cancel it first.';
    END IF;
    IF catch_up IS NULL OR catch_up < interval '0' OR catch_up > interval '1 year' THEN
        RAISE EXCEPTION 'pgtasks: catch_up must be between 0 and 1 year, got %', coalesce(catch_up::text, 'NULL')
            USING ERRCODE = 'PT406', HINT = 'catch_up => ''0'' runs only the latest missed tick; ''1 hour'' runs each one missed in the last hour.';
    END IF;
    RETURN CASE WHEN cron IS NOT NULL THEN pgtasks.check_cron(cron) END;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.configure(default_queue text DEFAULT NULL::text, default_priority integer DEFAULT NULL::integer, default_max_retries integer DEFAULT NULL::integer, default_timeout interval DEFAULT NULL::interval, default_backoff_base interval DEFAULT NULL::interval, max_backoff interval DEFAULT NULL::interval, default_lease interval DEFAULT NULL::interval, retention interval DEFAULT NULL::interval, max_params_bytes integer DEFAULT NULL::integer, max_result_bytes integer DEFAULT NULL::integer, max_log_bytes integer DEFAULT NULL::integer, schedule_min_every interval DEFAULT NULL::interval, schedule_max_ticks integer DEFAULT NULL::integer)
 RETURNS pgtasks.settings
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    s pgtasks.settings;
BEGIN
    -- The defaults get the same checks (and SQLSTATEs) as the arguments they stand in for.
    PERFORM pgtasks.check_policy(NULL, default_queue, default_max_retries, default_timeout,
                                 default_backoff_base, type_required => false);
    IF default_lease IS NOT NULL THEN
        PERFORM pgtasks.lease_or_default(default_lease);
    END IF;
    IF NOT (max_backoff > interval '0' AND max_backoff <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: max_backoff must be positive and at most 1 year, got %', max_backoff
            USING ERRCODE = 'PT118', HINT = 'For example max_backoff => interval ''1 hour''.';
    END IF;
    IF NOT (retention > interval '0' AND retention <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: retention must be positive and at most 100 years, got %', retention
            USING ERRCODE = 'PT118', HINT = 'Finished tasks are pruned this long after they finish.';
    END IF;
    IF max_params_bytes NOT BETWEEN 2 AND 268435455
       OR max_result_bytes NOT BETWEEN 1 AND 268435455
       OR max_log_bytes NOT BETWEEN 1 AND 268435455 THEN
        RAISE EXCEPTION 'pgtasks: size limits must be between 1 byte and 255 MB (params %, result %, log %)',
                max_params_bytes, max_result_bytes, max_log_bytes
            USING ERRCODE = 'PT118', HINT = 'Sizes are in bytes of JSON text, e.g. max_params_bytes => 1048576.';
    END IF;
    IF NOT (schedule_min_every > interval '0' AND schedule_min_every <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: schedule_min_every must be positive and at most 1 day, got %', schedule_min_every
            USING ERRCODE = 'PT118', HINT = 'Workers fire schedules about once a second; 1 second suits them.';
    END IF;
    IF schedule_max_ticks NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'pgtasks: schedule_max_ticks must be between 1 and 100000, got %', schedule_max_ticks
            USING ERRCODE = 'PT118', HINT = 'The most tasks one firing of a schedule enqueues, e.g. 100.';
    END IF;

    UPDATE pgtasks.settings t
       SET default_queue        = coalesce(configure.default_queue, t.default_queue),
           default_priority     = coalesce(configure.default_priority, t.default_priority),
           default_max_retries  = coalesce(configure.default_max_retries, t.default_max_retries),
           default_timeout      = coalesce(configure.default_timeout, t.default_timeout),
           default_backoff_base = coalesce(configure.default_backoff_base, t.default_backoff_base),
           max_backoff          = coalesce(configure.max_backoff, t.max_backoff),
           default_lease        = coalesce(configure.default_lease, t.default_lease),
           retention            = coalesce(configure.retention, t.retention),
           max_params_bytes     = coalesce(configure.max_params_bytes, t.max_params_bytes),
           max_result_bytes     = coalesce(configure.max_result_bytes, t.max_result_bytes),
           max_log_bytes        = coalesce(configure.max_log_bytes, t.max_log_bytes),
           schedule_min_every   = coalesce(configure.schedule_min_every, t.schedule_min_every),
           schedule_max_ticks   = coalesce(configure.schedule_max_ticks, t.schedule_max_ticks)
    RETURNING t.* INTO s;
    RETURN s;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.cron_field_values(field text, lo integer, hi integer, names text[])
 RETURNS integer[]
 LANGUAGE sql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT array_agg(DISTINCT v ORDER BY v)
      FROM (SELECT regexp_match(item, '^(\*|([0-9a-z]+)(-([0-9a-z]+))?)(/([0-9]+))?$') AS m
              FROM unnest(string_to_array(lower(field), ',')) AS u(item)) p
     CROSS JOIN LATERAL (
           SELECT CASE WHEN p.m[2] IS NULL THEN lo
                       WHEN p.m[2] ~ '^[0-9]+$' THEN p.m[2]::integer
                       ELSE array_position(names, p.m[2]) - 1 + lo END AS a) a
     CROSS JOIN LATERAL (
           SELECT CASE WHEN p.m[2] IS NULL THEN hi
                       WHEN p.m[4] IS NOT NULL AND p.m[4] ~ '^[0-9]+$' THEN p.m[4]::integer
                       WHEN p.m[4] IS NOT NULL THEN array_position(names, p.m[4]) - 1 + lo
                       WHEN p.m[6] IS NOT NULL THEN hi
                       ELSE a.a END AS b) b
     CROSS JOIN LATERAL generate_series(a.a, b.b, coalesce(p.m[6]::integer, 1)) AS g(v)
$function$;
CREATE OR REPLACE FUNCTION pgtasks.due_schedules(max_schedules integer DEFAULT 100, claim interval DEFAULT '00:00:03'::interval, worker_id text DEFAULT NULL::text)
 RETURNS TABLE(name text, cron text, every interval, timezone text, catch_up interval, next_run_at timestamp with time zone, revision bigint, db_now timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_max_tasks(max_schedules);
    IF claim IS NULL OR claim <= interval '0' OR claim > interval '30 seconds' THEN
        RAISE EXCEPTION 'pgtasks: claim must be > 0 and at most 30 seconds, got %', claim
            USING ERRCODE = 'PT114', HINT = 'Leave claim out for 3 seconds.';
    END IF;
    IF worker_id IS NOT NULL THEN
        PERFORM pgtasks.check_worker_id(worker_id);
    END IF;
    RETURN QUERY
    UPDATE pgtasks.schedule_defs d SET claimed_until = pgtasks.now() + claim, fired_by = worker_id
      FROM (SELECT c.name FROM pgtasks.schedule_defs c
             WHERE NOT c.paused AND (c.next_run_at IS NULL OR c.next_run_at <= pgtasks.now())
               AND (c.claimed_until IS NULL OR c.claimed_until < pgtasks.now())
             ORDER BY c.next_run_at NULLS FIRST
             LIMIT max_schedules
               FOR UPDATE SKIP LOCKED) due
     WHERE d.name = due.name
    RETURNING d.name, d.cron, d.every, d.timezone, d.catch_up, d.next_run_at, d.revision, pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    picked bigint[];
    lease_for interval;
BEGIN
    IF claim_max IS NULL OR claim_max < 0 THEN
        RAISE EXCEPTION 'pgtasks: claim_max must be 0 or more, got %', coalesce(claim_max::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Pass the number of free slots; 0 only finishes the batch.';
    END IF;
    PERFORM pgtasks.check_worker_id(worker_id);
    lease_for := pgtasks.lease_or_default(lease);

    -- The two-statement path, for the calls listed above this function.
    IF claim_max = 0
       OR EXISTS (SELECT 1 FROM (SELECT x.result, octet_length(x.result::text) AS size_bytes
                                   FROM unnest(finish_and_claim.results) AS x(result) OFFSET 0) u,
                                pgtasks.settings s
                   WHERE u.size_bytes > s.max_result_bytes
                      OR (u.size_bytes > 202 AND pgtasks.json_shape_error(u.result, u.size_bytes) IS NOT NULL))
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.id = ANY (finish_and_claim.task_ids) AND t.has_dependents)
       OR EXISTS (SELECT 1 FROM pgtasks.unsettled_edges u WHERE u.parent_id = ANY (finish_and_claim.task_ids))
       OR pgtasks.flow_control_in_use(queues) THEN
        RETURN QUERY
        SELECT f.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
               NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
          FROM pgtasks.finish_tasks(task_ids, attempts, results) f;
        IF claim_max > 0 THEN
            RETURN QUERY
            SELECT NULL::bigint, c.* FROM pgtasks.claim_tasks(worker_id, queues, claim_max, lease, task_types) c;
        END IF;
        RETURN;
    END IF;

    -- One statement. finish_tasks checked the arrays itself; here they are checked before
    -- anything is written, with the same message.
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);

    picked := pgtasks.pick_ready(queues, claim_max, task_types);

    -- Finishing rows carry their attempt (the fencing token: a stale one matches nothing and
    -- comes back rejected, a NULL one too); picked rows are ours, locked above. A task can
    -- be in both only if it went back to PENDING/COMMIT since its attempt: then the claim
    -- takes it and the finish is rejected, as with two statements.
    RETURN QUERY
    WITH work AS (
        SELECT u.task_id, u.attempt, u.result, true AS finishing
          FROM unnest(finish_and_claim.task_ids, finish_and_claim.attempts, finish_and_claim.results)
                 AS u(task_id, attempt, result)
        UNION ALL
        SELECT p.id, NULL::integer, NULL::jsonb, false FROM unnest(picked) AS p(id)
    ), changed AS (
        UPDATE pgtasks.tasks t
           SET status = CASE WHEN w.finishing THEN 'DONE' ELSE 'RUNNING' END::pgtasks.status,
               result = w.result,
               finished_at = CASE WHEN w.finishing THEN pgtasks.now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, pgtasks.now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE pgtasks.now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout) END,
               progress_current = CASE WHEN w.finishing THEN coalesce(t.progress_total, t.progress_current)
                                       ELSE t.progress_current END
          FROM work w
         WHERE t.id = w.task_id
           AND (NOT w.finishing OR (t.attempt = w.attempt AND t.status = 'RUNNING'))
        RETURNING w.finishing, t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  NOT w.finishing AND t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.attempt = w.attempt)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[])
 RETURNS TABLE(rejected_task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
    big bigint[];
    o record;
BEGIN
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);
    -- Sizes first, from the arguments alone: the common batch has no oversized result and
    -- reads no table here.
    SELECT array_agg(u.ord) INTO big
      FROM (SELECT x.result, x.ord, octet_length(x.result::text) AS size_bytes
              FROM unnest(finish_tasks.results) WITH ORDINALITY AS x(result, ord) OFFSET 0) u
     WHERE u.size_bytes > max_bytes
        OR (u.size_bytes > 202 AND pgtasks.json_shape_error(u.result, u.size_bytes) IS NOT NULL);
    IF big IS NOT NULL THEN
        FOR o IN
            SELECT k AS task, octet_length(u.result::text) AS size_bytes, u.result
              FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                     WITH ORDINALITY AS u(task_id, attempt, result, ord)
              JOIN pgtasks.tasks k ON k.id = u.task_id AND k.attempt = u.attempt AND k.status = 'RUNNING'
             WHERE u.ord = ANY (big)
               FOR NO KEY UPDATE OF k
        LOOP
            -- Now FAILED, so the UPDATE below (RUNNING rows only) leaves it and reports it.
            PERFORM pgtasks.record_failure(
                o.task, CASE WHEN o.size_bytes > max_bytes
                             THEN pg_catalog.format('pgtasks: result of %s bytes is larger than max_result_bytes (%s)',
                                                    o.size_bytes, max_bytes)
                             ELSE pg_catalog.format('pgtasks: result not accepted: %s, which clients cannot decode',
                                                    pgtasks.json_shape_error(o.result, o.size_bytes)) END,
                NULL, false, NULL);
        END LOOP;
    END IF;

    RETURN QUERY
    WITH batch AS (
        SELECT * FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                   AS u(task_id, attempt, result)
    ), done AS (
        UPDATE pgtasks.tasks t
           SET status = 'DONE', result = batch.result, finished_at = pgtasks.now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.attempt = batch.attempt AND t.status = 'RUNNING'
        RETURNING t.id, t.attempt
    )
    -- NOT EXISTS, not NOT IN: a NULL attempt must come back rejected (see heartbeat).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.attempt = batch.attempt);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], next_run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, skipped_before bigint DEFAULT 0)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    s         pgtasks.schedule_defs;
    due       timestamptz[];
    run       timestamptz[];
    nxt       timestamptz := fire_schedule.next_run_at;
    missed    bigint := coalesce(skipped_before, 0);
    n_overlap bigint := 0;
    window_at timestamptz;  -- ticks at or after it run
    max_ticks integer := (SELECT st.schedule_max_ticks FROM pgtasks.settings st);
    capped    bigint := 0;  -- due ticks in the window left out by the cap
    latest    timestamptz;
    first_in  timestamptz;
    t         timestamptz;
    prev      pgtasks.status;
    new_id    bigint;
    last_id   bigint;
BEGIN
    SELECT * INTO s FROM pgtasks.schedule_defs d WHERE d.name = fire_schedule.name FOR UPDATE;
    IF NOT FOUND OR s.paused OR s.revision <> fire_schedule.revision THEN
        RETURN;
    END IF;
    window_at := pgtasks.now() - greatest(s.catch_up, interval '2 seconds');
    IF skipped_before < 0 THEN
        RAISE EXCEPTION 'pgtasks: skipped_before must be 0 or more, got %', skipped_before
            USING ERRCODE = 'PT409', HINT = 'Pass how many due ticks older than the catch-up window you left out.';
    END IF;

    IF s.every IS NOT NULL THEN
        -- Every schedule: computed here, so any client (or pg_cron) can fire it with
        -- fire_schedule(name, revision).
        IF s.next_run_at IS NULL OR s.next_run_at > pgtasks.now() THEN
            nxt := coalesce(s.next_run_at, pgtasks.every_tick_after(s.every, pgtasks.now()));
            due := '{}';
        ELSE
            latest := date_bin(s.every, pgtasks.now(), s.next_run_at);
            first_in := greatest(s.next_run_at, date_bin(s.every, window_at, s.next_run_at));
            IF first_in < window_at THEN
                first_in := first_in + s.every;
            END IF;
            first_in := least(first_in, latest);
            -- The cap, before anything is generated: every '1 second' with catch_up 1 year
            -- would otherwise build an array of 31 million ticks.
            capped := greatest(round(extract(epoch FROM latest - first_in) / extract(epoch FROM s.every))::bigint
                               + 1 - max_ticks, 0);
            first_in := first_in + s.every * capped;
            due := ARRAY(SELECT generate_series(first_in, latest, s.every));
            missed := round(extract(epoch FROM first_in - s.next_run_at) / extract(epoch FROM s.every))::bigint;
            nxt := latest + s.every;
        END IF;
    ELSE
        IF nxt IS NULL OR (s.next_run_at IS NOT NULL AND ticks IS NULL) THEN
            RAISE EXCEPTION 'pgtasks: a cron schedule is fired with the ticks and next_run_at the caller computed'
                USING ERRCODE = 'PT409', HINT = 'The Python worker computes them with croniter; pass ticks => ''{}'' when none are due.';
        END IF;
        due := ARRAY(SELECT DISTINCT u FROM unnest(coalesce(ticks, '{}')) u WHERE u IS NOT NULL ORDER BY u);
        IF s.next_run_at IS NULL AND cardinality(due) > 0 THEN
            RAISE EXCEPTION 'pgtasks: schedule % has no next_run_at yet; it gets one before any tick fires', s.name
                USING ERRCODE = 'PT409', HINT = 'Pass ticks => ''{}'' and the first tick after now as next_run_at.';
        END IF;
        IF cardinality(due) > 0 AND (due[1] < s.next_run_at OR due[cardinality(due)] > pgtasks.now()) THEN
            RAISE EXCEPTION 'pgtasks: ticks of % must lie between its next_run_at % and now', s.name, s.next_run_at
                USING ERRCODE = 'PT409', HINT = 'Fire only due ticks; earlier ones were fired already.';
        END IF;
        -- Not "after pgtasks.now()": the caller computed it from due_schedules' db_now, and this
        -- transaction's pgtasks.now() may already have passed it. Then it is simply due next round.
        IF NOT isfinite(nxt) OR nxt > pgtasks.now() + interval '100 years'
           OR nxt <= coalesce(due[cardinality(due)], s.next_run_at, '-infinity') THEN
            RAISE EXCEPTION 'pgtasks: next_run_at of % must be after the ticks fired (and finite), got %', s.name, nxt
                USING ERRCODE = 'PT409', HINT = 'Pass the first tick after db_now of due_schedules.';
        END IF;
        -- The missed-tick policy, whatever the caller sent.
        latest := due[cardinality(due)];
        run := ARRAY(SELECT u FROM unnest(due) u WHERE u >= window_at OR u = latest ORDER BY u);
        missed := missed + cardinality(due) - cardinality(run);
        IF cardinality(run) > max_ticks THEN
            capped := cardinality(run) - max_ticks;
            run := run[capped + 1 :];
            missed := missed + capped;
        END IF;
        due := run;
    END IF;
    IF capped > 0 THEN
        RAISE WARNING 'pgtasks: schedule % had % ticks to catch up, more than settings.schedule_max_ticks (%); the oldest % were skipped',
                s.name, capped + max_ticks, max_ticks, capped;
    END IF;

    last_id := s.last_task_id;
    FOREACH t IN ARRAY due LOOP
        IF s.overlap <> 'allow' AND last_id IS NOT NULL THEN
            SELECT k.status INTO prev FROM pgtasks.tasks k WHERE k.id = last_id;
            IF prev IN ('PENDING', 'RUNNING', 'COMMIT') THEN
                IF s.overlap = 'skip' THEN
                    n_overlap := n_overlap + 1;
                    CONTINUE;
                END IF;
                PERFORM pgtasks.cancel_task(last_id);
            END IF;
        END IF;
        new_id := pgtasks.enqueue_tick(s, t);
        IF new_id IS NOT NULL THEN
            last_id := new_id;
            RETURN NEXT new_id;
        END IF;
    END LOOP;

    UPDATE pgtasks.schedule_defs d
       SET next_run_at = nxt, claimed_until = NULL, revision = d.revision + 1,
           last_tick = coalesce(due[cardinality(due)], d.last_tick),
           last_run_at = CASE WHEN last_id IS DISTINCT FROM s.last_task_id THEN pgtasks.now() ELSE d.last_run_at END,
           last_task_id = last_id, skipped = d.skipped + missed,
           skipped_overlap = d.skipped_overlap + n_overlap
     WHERE d.name = s.name;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.is_blank(value text)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT value IS NULL
        OR value ~ '^[[:space:][:cntrl:]\u0001-\u001f\u007f-\u009f\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]*$'
$function$;
CREATE OR REPLACE FUNCTION pgtasks.json_shape_error(value jsonb, size_bytes bigint)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT CASE
        WHEN size_bytes > 202 AND jsonb_path_exists(value, 'strict $.**{101}')
            THEN 'JSON nested more than 100 levels deep'
        WHEN size_bytes > 4000 AND jsonb_path_exists(value, 'strict $.** ? (@.abs() >= 1e4000)')
            THEN 'JSON with a number of 1e4000 or more (over 4,000 digits)'
    END
$function$;
CREATE OR REPLACE FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_log_size(message, 'log line');
    PERFORM pgtasks.check_log_size(level, 'log level');
    PERFORM pgtasks.check_log_lines(ARRAY[level], NULL, NULL);
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message)
    VALUES (task_id, attempt, upper(coalesce(level, 'INFO')), coalesce(message, ''));
    PERFORM pgtasks.notify_watchers(task_id);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.log_many(task_id bigint, attempt integer, levels text[], messages text[], ats timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], loggers text[] DEFAULT NULL::text[])
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    n integer := coalesce(cardinality(messages), 0);
    longest bigint;
BEGIN
    IF coalesce(cardinality(levels), 0) <> n
       OR (ats IS NOT NULL AND cardinality(ats) <> n)
       OR (loggers IS NOT NULL AND cardinality(loggers) <> n) THEN
        RAISE EXCEPTION 'pgtasks: log_many needs arrays of one length (% messages, % levels, % ats, % loggers)',
                n, coalesce(cardinality(levels), 0), cardinality(ats), cardinality(loggers)
            USING ERRCODE = 'PT111', HINT = 'Pass one level (and at, logger) per message, or NULL for ats/loggers.';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pgtasks.check_log_lines(levels, loggers, ats);
    SELECT max(greatest(octet_length(m), octet_length(l), octet_length(g))) INTO longest
      FROM unnest(log_many.messages, log_many.levels, log_many.loggers) AS u(m, l, g);
    IF longest > (SELECT s.max_log_bytes FROM pgtasks.settings s) THEN
        RAISE EXCEPTION 'pgtasks: a log line of % bytes is larger than max_log_bytes (%)',
                longest, (SELECT s.max_log_bytes FROM pgtasks.settings s)
            USING ERRCODE = 'PT204',
                  HINT = 'Nothing of this batch was written. Log less per line, or raise the limit: '
                         'SELECT pgtasks.configure(max_log_bytes => ...).';
    END IF;
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message, logger, at)
    SELECT log_many.task_id, log_many.attempt, upper(coalesce(u.level, 'INFO')), coalesce(u.message, ''),
           log_many.loggers[u.ord], coalesce(log_many.ats[u.ord], clock_timestamp())
      FROM unnest(log_many.levels, log_many.messages) WITH ORDINALITY AS u(level, message, ord)
     ORDER BY u.ord;
    PERFORM pgtasks.notify_watchers(task_id);
    RETURN n;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.prune_finished(older_than interval DEFAULT NULL::interval, max_tasks integer DEFAULT 1000)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    cutoff timestamptz;
    n integer;
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    -- A negative age would delete tasks the moment they finish, before anyone read them.
    IF older_than IS NOT NULL AND NOT (older_than >= interval '0' AND older_than <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: older_than must be between 0 and 100 years, got %', older_than
            USING ERRCODE = 'PT120', HINT = 'Leave older_than out (NULL) for settings.retention.';
    END IF;
    IF older_than < (SELECT s.retention FROM pgtasks.settings s) AND NOT pgtasks.caller_is_admin() THEN
        RAISE EXCEPTION 'pgtasks: older_than % is shorter than settings.retention (%); only pgtasks_admin may prune sooner',
                older_than, (SELECT s.retention FROM pgtasks.settings s)
            USING ERRCODE = 'PT120',
                  HINT = 'Leave older_than out (NULL) for settings.retention, or have an admin change it: '
                         'SELECT pgtasks.configure(retention => ...).';
    END IF;
    cutoff := pgtasks.now() - coalesce(older_than, (SELECT s.retention FROM pgtasks.settings s));
    -- Lets the append-only triggers through for this statement only (see reject_history_change).
    PERFORM set_config('pgtasks.pruning', 'on', true);
    WITH doomed AS (
        SELECT t.id FROM pgtasks.tasks t
         WHERE t.status IN ('DONE', 'FAILED', 'CANCELLED') AND t.finished_at < cutoff
         ORDER BY t.finished_at
         LIMIT max_tasks
         FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgtasks.tasks t USING doomed WHERE t.id = doomed.id RETURNING t.id
    ), history AS (
        -- task_events has no foreign key (see its table), so its rows go here, not by cascade.
        DELETE FROM pgtasks.task_events e USING gone WHERE e.task_id = gone.id
    )
    SELECT count(*)::integer INTO n FROM gone;
    PERFORM set_config('pgtasks.pruning', '', true);
    PERFORM pgtasks.prune_flow_state(max_tasks);
    RETURN n;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.prune_flow_state(max_rows integer)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    -- A window whose reservation has passed is only ever taken over by the next submit of
    -- its key (submit_one); deleting it leaves the key free exactly as that would. SKIP
    -- LOCKED: a submit taking the row over right now keeps it.
    DELETE FROM pgtasks.unique_windows w
     WHERE (w.task_type, w.unique_key) IN (SELECT o.task_type, o.unique_key FROM pgtasks.unique_windows o
                                            WHERE o.reserved_until < pgtasks.now()
                                            LIMIT max_rows
                                            FOR UPDATE SKIP LOCKED);
    -- Starts older than their queue's window count for nothing (claim_limited trims them
    -- itself, but only for queues it still claims from with a rate limit). A queue without
    -- settings or without a rate limit keeps none.
    DELETE FROM pgtasks.queue_starts s
     WHERE s.ctid IN (SELECT o.ctid FROM pgtasks.queue_starts o
                        LEFT JOIN pgtasks.queue_settings qs ON qs.queue = o.queue
                       WHERE qs.rate_limit IS NULL OR o.at < pgtasks.now() - qs.rate_period
                       LIMIT max_rows);
    -- Concurrency keys' rows an hour after they were made, unless a claimer holds one (SKIP
    -- LOCKED) or the key has a running task: a key used once would otherwise keep its row
    -- forever. The next claim of the key makes the row again (lock_concurrency_key).
    DELETE FROM pgtasks.concurrency_keys k
     WHERE k.concurrency_key IN (SELECT o.concurrency_key FROM pgtasks.concurrency_keys o
                                  WHERE o.created_at < pgtasks.now() - interval '1 hour'
                                    AND NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                                                     WHERE t.concurrency_key = o.concurrency_key
                                                       AND t.status = 'RUNNING')
                                  ORDER BY o.created_at
                                  LIMIT max_rows
                                  FOR UPDATE OF o SKIP LOCKED);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.raise_unique_held(t pgtasks.tasks)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    holder bigint;
BEGIN
    SELECT o.id INTO holder FROM pgtasks.tasks o
     WHERE o.task_type = t.task_type AND o.unique_key = t.unique_key
       AND o.status IN ('PENDING', 'COMMIT', 'RUNNING') AND o.id <> t.id
     LIMIT 1;
    RAISE EXCEPTION 'pgtasks: task % cannot be retried: its unique_key % is held by active task %',
            t.id, pg_catalog.quote_literal(t.unique_key), coalesce(holder::text, '(being submitted)')
        USING ERRCODE = 'PT306',
              HINT = 'Wait for the active task with that key to finish, or cancel it, then retry.';
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.register_task_type(task_type text, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, worker_id text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.task_types;
BEGIN
    PERFORM pgtasks.check_policy(task_type, queue, max_retries, timeout, backoff_base);
    IF worker_id IS NOT NULL THEN
        PERFORM pgtasks.check_worker_id(worker_id);
    END IF;
    SELECT * INTO t FROM pgtasks.task_types tt WHERE tt.task_type = register_task_type.task_type;
    IF NOT FOUND THEN
        INSERT INTO pgtasks.task_types AS tt
               (task_type, queue, priority, max_retries, timeout, backoff_base, registered_by)
        VALUES (register_task_type.task_type, register_task_type.queue, register_task_type.priority,
                register_task_type.max_retries, register_task_type.timeout,
                register_task_type.backoff_base, register_task_type.worker_id)
        -- A concurrent first registration won: this one is then a change like any other,
        -- and the next worker start applies it (or is refused) as below.
        ON CONFLICT ON CONSTRAINT task_types_pkey DO NOTHING;
        RETURN;
    END IF;
    IF (t.queue, t.priority, t.max_retries, t.timeout, t.backoff_base)
       IS NOT DISTINCT FROM (queue, priority, max_retries, timeout, backoff_base) THEN
        RETURN;
    END IF;
    IF t.owner_role <> session_user AND NOT pgtasks.caller_is_admin() THEN
        RAISE EXCEPTION 'pgtasks: task type % belongs to role %; role % may not change its policy',
                pg_catalog.quote_literal(task_type), pg_catalog.quote_ident(t.owner_role),
                pg_catalog.quote_ident(session_user)
            USING ERRCODE = 'PT125',
                  HINT = 'Declare the type with the policy it has (SELECT * FROM pgtasks.registered_types), '
                         'or ask its deployment or a pgtasks_admin to change it.';
    END IF;
    UPDATE pgtasks.task_types tt
       SET queue = register_task_type.queue, priority = register_task_type.priority,
           max_retries = register_task_type.max_retries, timeout = register_task_type.timeout,
           backoff_base = register_task_type.backoff_base, registered_by = register_task_type.worker_id,
           updated_at = pgtasks.now()
     WHERE tt.task_type = register_task_type.task_type;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamp with time zone DEFAULT now())
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.tasks;
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    t := pgtasks.lock_task(task_id);
    IF t.status NOT IN ('FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % is %; only FAILED or CANCELLED tasks can be retried', task_id, t.status
            USING ERRCODE = 'PT001', HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    -- Checked first so the common case costs one index probe and no subtransaction. A
    -- concurrent submit of the key can still win between this probe and the UPDATE; the
    -- unique index then refuses the UPDATE, caught below and given the same code.
    IF t.unique_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM pgtasks.tasks o
         WHERE o.task_type = t.task_type AND o.unique_key = t.unique_key
           AND o.status IN ('PENDING', 'COMMIT', 'RUNNING') AND o.id <> t.id) THEN
        PERFORM pgtasks.raise_unique_held(t);
    END IF;
    BEGIN
        UPDATE pgtasks.tasks
           SET status = 'PENDING', retry_count = 0, finished_at = NULL, result = NULL,
               run_at = coalesce(retry_task.run_at, pgtasks.now())
         WHERE id = t.id;
    EXCEPTION WHEN unique_violation THEN
        PERFORM pgtasks.raise_unique_held(t);
    END;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_one(p pgtasks.tasks, params jsonb, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, OUT id bigint, OUT created boolean)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
#variable_conflict use_column
-- (ON CONFLICT's index inference names columns, which plpgsql cannot qualify.)
DECLARE
    took boolean;
BEGIN
    IF unique_key IS NULL THEN
        INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                   backoff_base, concurrency_key, concurrency_limit)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.concurrency_key, submit_one.concurrency_limit)
        RETURNING tasks.id INTO submit_one.id;
        created := true;
        RETURN;
    END IF;

    IF unique_for IS NOT NULL THEN
        -- The window row is the lock: a concurrent submit of the key waits here, then finds
        -- the window taken and returns its task.
        INSERT INTO pgtasks.unique_windows AS w (task_type, unique_key, task_id, reserved_until)
        VALUES (p.task_type, submit_one.unique_key, NULL, pgtasks.now() + submit_one.unique_for)
        ON CONFLICT ON CONSTRAINT unique_windows_pkey DO UPDATE
           SET task_id = NULL, reserved_until = excluded.reserved_until
         WHERE w.reserved_until <= pgtasks.now()
        RETURNING true INTO took;
        IF took IS NULL THEN
            SELECT w.task_id INTO submit_one.id FROM pgtasks.unique_windows w
             WHERE w.task_type = p.task_type AND w.unique_key = submit_one.unique_key;
            created := false;
            RETURN;
        END IF;
    END IF;

    LOOP
        INSERT INTO pgtasks.tasks AS t (task_type, params, queue, priority, run_at, max_retries, timeout,
                                        backoff_base, unique_key, concurrency_key, concurrency_limit)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.unique_key, submit_one.concurrency_key, submit_one.concurrency_limit)
        ON CONFLICT (task_type, unique_key) WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING')
        DO NOTHING
        RETURNING t.id INTO submit_one.id;
        IF FOUND THEN
            created := true;
            EXIT;
        END IF;
        SELECT t.id INTO submit_one.id FROM pgtasks.tasks t
         WHERE t.task_type = p.task_type AND t.unique_key = submit_one.unique_key
           AND t.status IN ('PENDING', 'COMMIT', 'RUNNING');
        IF FOUND THEN
            created := false;
            EXIT;
        END IF;
    END LOOP;

    IF unique_for IS NOT NULL THEN
        UPDATE pgtasks.unique_windows w SET task_id = submit_one.id
         WHERE w.task_type = p.task_type AND w.unique_key = submit_one.unique_key;
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.unregister_worker(worker_id text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    DELETE FROM pgtasks.worker_registry w WHERE w.worker_id = unregister_worker.worker_id;
END $function$;
GRANT EXECUTE ON FUNCTION pgtasks.configure(text,integer,integer,interval,interval,interval,interval,interval,integer,integer,integer,interval,integer) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.configure(text,integer,integer,interval,interval,interval,interval,interval,integer,integer,integer,interval,integer) IS 'Changes the deployment-wide defaults and limits (pgtasks.settings); each argument given replaces its value, NULL keeps it. Returns the new settings row.';
COMMENT ON FUNCTION pgtasks.prune_finished(interval,integer) IS 'Deletes up to max_tasks tasks that finished more than older_than ago (NULL: settings.retention; shorter than it: pgtasks_admin only), with their history; returns how many. maintain() calls it.';
COMMENT ON FUNCTION pgtasks.register_task_type(text,text,integer,integer,interval,interval,text) IS 'Registers a task type''s policy (queue, priority, max_retries, timeout, backoff_base; NULL: the settings default), applied to every submit of the type that leaves the argument out. Only the role that registered the type first, or pgtasks_admin, may change it (PT125).';
COMMENT ON TABLE pgtasks.unique_windows IS 'Unique keys reserved by unique_for, per task type: taken until reserved_until, whatever their task does.';

-- tables
-- Last in the file, each a short ACCESS EXCLUSIVE lock held until the commit.
-- settings: one row; the constraints are validated by 0027.
ALTER TABLE pgtasks.settings
    ADD COLUMN schedule_min_every interval NOT NULL DEFAULT interval '1 second',
    ADD COLUMN schedule_max_ticks integer NOT NULL DEFAULT 100,
    ADD CONSTRAINT schedule_min_every_range CHECK (schedule_min_every > interval '0'
                                                   AND schedule_min_every <= interval '1 day') NOT VALID,
    ADD CONSTRAINT schedule_max_ticks_range CHECK (schedule_max_ticks BETWEEN 1 AND 100000) NOT VALID;
-- Types registered before this migration belong to the role that runs it: session_user is
-- stable, so PostgreSQL evaluates the default once, now, and rewrites nothing. The
-- zero-setup deployment, one role for everything, keeps changing its policies as before;
-- elsewhere a worker role re-declares them unchanged, or an admin changes them.
-- squawk-ignore adding-field-with-default
ALTER TABLE pgtasks.task_types ADD COLUMN owner_role text NOT NULL DEFAULT session_user;
-- Unique keys per task type: a unique_for window takes its task's type. A window whose task
-- is gone (pruned while the window still ran) has no type to belong to and is dropped: its
-- key is free again. unique_windows holds one row per live window and is pruned as they
-- pass, so its scans and its new primary key's build take a moment; only submits with
-- unique_for touch it.
ALTER TABLE pgtasks.unique_windows ADD COLUMN task_type text;
UPDATE pgtasks.unique_windows w SET task_type = t.task_type FROM pgtasks.tasks t WHERE t.id = w.task_id;
DELETE FROM pgtasks.unique_windows w WHERE w.task_type IS NULL;
-- squawk-ignore adding-not-nullable-field
ALTER TABLE pgtasks.unique_windows ALTER COLUMN task_type SET NOT NULL;
-- The primary key on (task_type, unique_key) replaces the one on the key alone.
-- squawk-ignore ban-drop-constraint
ALTER TABLE pgtasks.unique_windows DROP CONSTRAINT unique_windows_pkey;
-- squawk-ignore constraint-missing-not-valid,adding-serial-primary-key-field
ALTER TABLE pgtasks.unique_windows ADD CONSTRAINT unique_windows_pkey PRIMARY KEY (task_type, unique_key);
-- It was NOT NULL as the primary key's column; now it is one column of two.
-- squawk-ignore adding-not-nullable-field
ALTER TABLE pgtasks.unique_windows ALTER COLUMN unique_key SET NOT NULL;
COMMENT ON COLUMN pgtasks.settings.schedule_max_ticks IS 'The most tasks one firing of a schedule enqueues; older due ticks beyond it are skipped and counted.';
COMMENT ON COLUMN pgtasks.settings.schedule_min_every IS 'The shortest every a schedule may be created or declared with.';
COMMENT ON COLUMN pgtasks.task_types.owner_role IS 'The login role that registered the type first: its workers (and pgtasks_admin) may change the policy.';
COMMENT ON COLUMN pgtasks.tasks.unique_key IS 'At most one PENDING, COMMIT or RUNNING task per key and task type: a submit of a held key returns that task.';

-- data
-- Schedules declared with an every below the new floor fired in bursts: raised to it.
UPDATE pgtasks.schedule_defs d
   SET every = (SELECT s.schedule_min_every FROM pgtasks.settings s), revision = d.revision + 1,
       updated_at = now()
 WHERE d.every < (SELECT s.schedule_min_every FROM pgtasks.settings s);
-- Cron expressions normalized again: a range of one value ('5-5') is stored as that value,
-- which croniter read as '*' (the schedule fired every hour or day). Cron schedules that can
-- never fire (a day none of their months has) made every worker warn every round: paused,
-- with a notice naming each. Resume one after fixing its expression.
DO $$
DECLARE
    d record;
    norm text;
BEGIN
    FOR d IN SELECT s.name, s.cron FROM pgtasks.schedule_defs s WHERE s.cron IS NOT NULL LOOP
        BEGIN
            norm := pgtasks.check_cron(d.cron);
            IF norm <> d.cron THEN
                UPDATE pgtasks.schedule_defs s
                   SET cron = norm, next_run_at = NULL, revision = s.revision + 1, updated_at = now()
                 WHERE s.name = d.name;
                RAISE NOTICE 'pgtasks: schedule % now has cron % (was %)', d.name, norm, d.cron;
            END IF;
        EXCEPTION WHEN SQLSTATE 'PT401' THEN
            UPDATE pgtasks.schedule_defs s SET paused = true, revision = s.revision + 1, updated_at = now()
             WHERE s.name = d.name AND NOT s.paused;
            RAISE NOTICE 'pgtasks: schedule % (cron %) never fires; paused', d.name, d.cron;
        END;
    END LOOP;
END $$;
