-- The pgtasks schema as the migrations in sql/ build it. Generated, do not edit:
-- make schema  (or: .venv/bin/python -m tests.schema_dump)
-- tests/test_schema_drift.py fails when the migrations and this file disagree.

CREATE SCHEMA pgtasks;

ALTER SCHEMA pgtasks OWNER TO pgtasks_owner;

CREATE TYPE pgtasks.status AS ENUM (
    'WAITING',
    'PENDING',
    'RUNNING',
    'COMMIT',
    'DONE',
    'FAILED',
    'CANCELLED'
);

ALTER TYPE pgtasks.status OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.await_parents() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    dead record;
    unmet integer;
BEGIN
    IF NEW.on_parent_failure IS DISTINCT FROM 'run' THEN
        SELECT p.id, p.status INTO dead
          FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
         WHERE e.child_id = NEW.id AND p.status IN ('FAILED', 'CANCELLED')
         ORDER BY p.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgtasks: task % cannot run again: its parent task % is %', NEW.id, dead.id, dead.status
                USING ERRCODE = 'PT510',
                      HINT = 'Retry the parent instead: the dependents it cancelled come back with it.';
        END IF;
    END IF;
    SELECT count(*) INTO unmet
      FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
     WHERE e.child_id = NEW.id AND p.status NOT IN ('DONE', 'FAILED', 'CANCELLED');
    NEW.waiting_on := unmet;
    NEW.cancelled_by := NULL;
    IF unmet > 0 THEN
        NEW.status := 'WAITING';
    END IF;
    RETURN NEW;
END $$;

ALTER FUNCTION pgtasks.await_parents() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.backoff(retry_count integer, base interval DEFAULT NULL::interval) RETURNS interval
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT pg_catalog.make_interval(secs => least(
               greatest(pg_catalog.date_part('epoch', coalesce(backoff.base, s.default_backoff_base)), 0)
               -- 2^62 times any base already exceeds every allowed max_backoff.
               * pg_catalog.power(2::float8, least(greatest(coalesce(backoff.retry_count, 1) - 1, 0), 62)::float8)
               * (0.8 + 0.4 * pg_catalog.random()),
               pg_catalog.date_part('epoch', s.max_backoff)))
      FROM pgtasks.settings s
$$;

ALTER FUNCTION pgtasks.backoff(retry_count integer, base interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.cancel_task(task_id bigint) RETURNS pgtasks.status
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_task(task_id);
    IF t.status IN ('DONE', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % already finished as %; nothing to cancel', task_id, t.status
            USING ERRCODE = 'PT004', HINT = 'Use retry_task() to run a FAILED or CANCELLED task again.';
    END IF;
    UPDATE pgtasks.tasks
       SET status = 'CANCELLED', finished_at = now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE id = t.id;
    IF t.status = 'RUNNING' THEN
        -- The worker listens and stops the task; fencing rejects anything it writes later.
        PERFORM pg_notify('pgtasks_cancel', t.id::text || ':' || t.attempt::text);
    END IF;
    RETURN t.status;
END $$;

ALTER FUNCTION pgtasks.cancel_task(task_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.cancel_workflow(workflow_id bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    wf_name text;
    reason text;
    running text[];
    n integer;
BEGIN
    SELECT w.name INTO wf_name FROM pgtasks.workflow_runs w WHERE w.id = cancel_workflow.workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: workflow % does not exist', coalesce(workflow_id::text, 'NULL')
            USING ERRCODE = 'PT508', HINT = 'SELECT id, name, state FROM pgtasks.workflows lists them.';
    END IF;
    reason := pg_catalog.format('cancelled: workflow %s%s cancelled', workflow_id,
                                coalesce(' (' || wf_name || ')', ''));
    PERFORM 1 FROM pgtasks.tasks t
      WHERE t.workflow_id = cancel_workflow.workflow_id
        AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING')
      ORDER BY t.id FOR NO KEY UPDATE;
    SELECT array_agg(t.id::text || ':' || t.attempt::text) INTO running
      FROM pgtasks.tasks t
     WHERE t.workflow_id = cancel_workflow.workflow_id AND t.status = 'RUNNING';
    UPDATE pgtasks.tasks t
       SET status = 'CANCELLED', finished_at = now(), error = reason,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE t.workflow_id = cancel_workflow.workflow_id
       AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('pgtasks_cancel', r) FROM unnest(running) r;
    RETURN n;
END $$;

ALTER FUNCTION pgtasks.cancel_workflow(workflow_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_batch(what text, task_ids bigint[], attempts integer[], results jsonb[] DEFAULT NULL::jsonb[], with_results boolean DEFAULT false) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF coalesce(cardinality(task_ids), 0) <> coalesce(cardinality(attempts), 0)
       OR (with_results AND coalesce(cardinality(task_ids), 0) <> coalesce(cardinality(results), 0)) THEN
        RAISE EXCEPTION 'pgtasks: % needs arrays of one length (% task_ids, % attempts%)', what,
                coalesce(cardinality(task_ids), 0), coalesce(cardinality(attempts), 0),
                CASE WHEN with_results THEN pg_catalog.format(', %s results', coalesce(cardinality(results), 0)) ELSE '' END
            USING ERRCODE = 'PT116', HINT = 'Pass one attempt (and result) per task id, in the same order.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_batch(what text, task_ids bigint[], attempts integer[], results jsonb[], with_results boolean) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_cron(cron text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    expr   text := lower(btrim(cron));
    fields text[];
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
    RETURN concat_ws(' ',
        pgtasks.check_cron_field(fields[1], 'minute', 0, 59, NULL),
        pgtasks.check_cron_field(fields[2], 'hour', 0, 23, NULL),
        pgtasks.check_cron_field(fields[3], 'day-of-month', 1, 31, NULL),
        pgtasks.check_cron_field(fields[4], 'month', 1, 12,
            ARRAY['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec']),
        -- 0 and 7 are both Sunday.
        pgtasks.check_cron_field(fields[5], 'day-of-week', 0, 7,
            ARRAY['sun','mon','tue','wed','thu','fri','sat']));
END $$;

ALTER FUNCTION pgtasks.check_cron(cron text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_cron_field(field text, what text, lo integer, hi integer, names text[]) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $_$
DECLARE
    item  text;
    m     text[];
    a     integer;
    b     integer;
    f     text := lower(field);
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
    END LOOP;
    RETURN f;
END $_$;

ALTER FUNCTION pgtasks.check_cron_field(field text, what text, lo integer, hi integer, names text[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_flow_args(unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, item integer DEFAULT NULL::integer) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    where_ text := CASE WHEN item IS NULL THEN '' ELSE pg_catalog.format(' (item %s of the list)', item) END;
BEGIN
    IF unique_key IS NOT NULL AND (pgtasks.is_blank(unique_key) OR octet_length(unique_key) > 255) THEN
        RAISE EXCEPTION 'pgtasks: unique_key must be a non-blank string of at most 255 bytes%', where_
            USING ERRCODE = 'PT303', HINT = 'Name what must not run twice, e.g. ''report:2026-12-01''; NULL: no key.';
    END IF;
    IF unique_for IS NOT NULL AND (unique_key IS NULL
       OR NOT (unique_for > interval '0' AND unique_for <= interval '100 years')) THEN
        RAISE EXCEPTION 'pgtasks: unique_for needs a unique_key and must be in (0, 100 years], got % %', unique_for, where_
            USING ERRCODE = 'PT303', HINT = 'For example unique_key => ''daily-report'', unique_for => interval ''1 day''.';
    END IF;
    IF concurrency_key IS NOT NULL AND (pgtasks.is_blank(concurrency_key) OR octet_length(concurrency_key) > 255) THEN
        RAISE EXCEPTION 'pgtasks: concurrency_key must be a non-blank string of at most 255 bytes%', where_
            USING ERRCODE = 'PT304', HINT = 'For example concurrency_key => ''customer:42''; NULL: no key.';
    END IF;
    IF concurrency_limit IS NOT NULL AND (concurrency_key IS NULL OR concurrency_limit NOT BETWEEN 1 AND 1000000) THEN
        RAISE EXCEPTION 'pgtasks: concurrency_limit needs a concurrency_key and must be between 1 and 1000000, got % %',
                concurrency_limit, where_
            USING ERRCODE = 'PT304', HINT = 'For example concurrency_key => ''customer:42'', concurrency_limit => 1.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_flow_args(unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, item integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF NEW.status NOT IN ('PENDING', 'WAITING') THEN
        RAISE EXCEPTION 'pgtasks: a new task must start PENDING (or WAITING on its parents), not %', NEW.status
            USING ERRCODE = 'PT001',
                  HINT = 'Submit with pgtasks.submit_task() or submit_workflow(); the workers move it on.';
    END IF;
    RAISE EXCEPTION 'pgtasks: a new task starts at attempt 0, not %', NEW.attempt
        USING ERRCODE = 'PT201', HINT = 'Submit with pgtasks.submit_task(); claims count attempts.';
END $$;

ALTER FUNCTION pgtasks.check_insert() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_log_size(message text, what text) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    max_bytes integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    IF octet_length(message) > max_bytes THEN
        RAISE EXCEPTION 'pgtasks: % of % bytes is larger than max_log_bytes (%)', what, octet_length(message), max_bytes
            USING ERRCODE = 'PT204',
                  HINT = 'Log less per line, or raise the limit: SELECT pgtasks.configure(max_log_bytes => ...).';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_log_size(message text, what text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_max_tasks(max_tasks integer) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Maintenance works in batches; 1000 is a good size.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_max_tasks(max_tasks integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_params(params jsonb, item integer DEFAULT NULL::integer) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    limit_bytes integer := (SELECT s.max_params_bytes FROM pgtasks.settings s);
    size_bytes  integer;
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
END $$;

ALTER FUNCTION pgtasks.check_params(params jsonb, item integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_params_list(params_list jsonb[]) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    bad record;
BEGIN
    IF params_list IS NULL THEN
        RAISE EXCEPTION 'pgtasks: params_list must be an array of JSON objects, got NULL'
            USING ERRCODE = 'PT108', HINT = 'Pass ARRAY[''{}''::jsonb, ...] or an empty array.';
    END IF;
    SELECT u.p, u.ord::integer AS ord INTO bad
      FROM unnest(params_list) WITH ORDINALITY AS u(p, ord)
     WHERE u.p IS NULL OR jsonb_typeof(u.p) <> 'object'
        OR octet_length(u.p::text) > (SELECT s.max_params_bytes FROM pgtasks.settings s)
     ORDER BY u.ord
     LIMIT 1;
    IF FOUND THEN
        PERFORM pgtasks.check_params(bad.p, bad.ord);
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_params_list(params_list jsonb[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_policy(task_type text, queue text DEFAULT NULL::text, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, type_required boolean DEFAULT true) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    -- 255 bytes: names travel as NOTIFY payloads (limit 8000 bytes) and in every log line.
    IF (type_required OR task_type IS NOT NULL)
       AND (pgtasks.is_blank(task_type) OR octet_length(task_type) > 255) THEN
        RAISE EXCEPTION 'pgtasks: task_type must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(task_type, 40)), 'NULL')
            USING ERRCODE = 'PT101', HINT = 'Pass the registered type name, e.g. submit_task(''resize'', ...).';
    END IF;
    IF queue IS NOT NULL AND (pgtasks.is_blank(queue) OR octet_length(queue) > 255) THEN
        RAISE EXCEPTION 'pgtasks: queue must be a non-empty string (not blank, at most 255 bytes), got %',
                pg_catalog.quote_literal(pg_catalog.left(queue, 40))
            USING ERRCODE = 'PT103',
                  HINT = 'Leave queue out (NULL) to use the type''s queue or settings.default_queue.';
    END IF;
    -- 1000 retries is already years of backoff at the default cap; more is a typo.
    IF max_retries IS NOT NULL AND max_retries NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'pgtasks: max_retries must be 0 or more (and at most 1000), got %', max_retries
            USING ERRCODE = 'PT106', HINT = 'Use 0 for a task that must never be retried.';
    END IF;
    -- A claim computes now() + timeout; past a year that is a typo, and '300000 years' made
    -- every claim that reached the task fail (issue 9, defect 3).
    IF timeout IS NOT NULL AND NOT (timeout > interval '0' AND timeout <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: timeout must be positive and at most 1 year, got %', timeout
            USING ERRCODE = 'PT107', HINT = 'For example timeout => interval ''10 minutes''.';
    END IF;
    IF backoff_base IS NOT NULL
       AND NOT (backoff_base > interval '0' AND backoff_base <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: backoff_base must be positive and at most 1 day, got %', backoff_base
            USING ERRCODE = 'PT112',
                  HINT = 'Retry n waits about backoff_base * 2^(n-1), capped at settings.max_backoff.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_policy(task_type text, queue text, max_retries integer, timeout interval, backoff_base interval, type_required boolean) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_queue_name(queue text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF pgtasks.is_blank(queue) OR octet_length(queue) > 255 THEN
        RAISE EXCEPTION 'pgtasks: queue must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(queue, 40)), 'NULL')
            USING ERRCODE = 'PT103', HINT = 'Name the queue, e.g. configure_queue(''imports'', max_running => 2).';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_queue_name(queue text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_result_size(result jsonb, what text) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    size_bytes bigint := octet_length(result::text);
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
BEGIN
    IF size_bytes > max_bytes THEN
        RAISE EXCEPTION 'pgtasks: % of % bytes is larger than max_result_bytes (%)', what, size_bytes, max_bytes
            USING ERRCODE = 'PT203',
                  HINT = 'Store big outputs elsewhere (object storage, a table) and return a reference; '
                         'or raise the limit: SELECT pgtasks.configure(max_result_bytes => ...).';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_result_size(result jsonb, what text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_run_at(run_at timestamp with time zone) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF run_at IS NOT NULL AND (NOT isfinite(run_at)
       OR run_at NOT BETWEEN now() - interval '100 years' AND now() + interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_run_at(run_at timestamp with time zone) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_schedule(cron text, every interval, timezone text, overlap text, catch_up interval) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
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
END $$;

ALTER FUNCTION pgtasks.check_schedule(cron text, every interval, timezone text, overlap text, catch_up interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_schedule_name(name text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF pgtasks.is_blank(name) OR octet_length(name) > 255 THEN
        RAISE EXCEPTION 'pgtasks: schedule name must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(name, 40)), 'NULL')
            USING ERRCODE = 'PT408', HINT = 'Name the schedule after what it does, e.g. ''nightly-report''.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_schedule_name(name text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.check_worker_id(worker_id text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF pgtasks.is_blank(worker_id) OR octet_length(worker_id) > 255 THEN
        RAISE EXCEPTION 'pgtasks: worker_id must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT121', HINT = 'Use a name unique to the worker process, e.g. host:pid:random.';
    END IF;
END $$;

ALTER FUNCTION pgtasks.check_worker_id(worker_id text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb DEFAULT NULL::jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF pgtasks.is_blank(step) OR octet_length(step) > 255 THEN
        RAISE EXCEPTION 'pgtasks: step name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT109', HINT = 'Name each step, e.g. ctx.step(''download'', ...).';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_result_size(result, pg_catalog.format('result of step %s', step));
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (task_id, step, result, attempt)
    ON CONFLICT ON CONSTRAINT task_steps_pkey DO UPDATE SET result = excluded.result, attempt = excluded.attempt,
                                              at = now();
END $$;

ALTER FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], OUT picked bigint[], OUT started timestamp with time zone) RETURNS record
    LANGUAGE plpgsql SECURITY DEFINER
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    lq_names  text[] := '{}';
    lq_budget integer[] := '{}';
    lq_rated  boolean[] := '{}';
    blocked_q text[];
    blocked_k text[] := '{}';
    key_names text[] := '{}';
    key_running integer[] := '{}';   -- running + picked here, per key
    s record;
    c record;
    qi integer;
    ki integer;
    n integer;
    again boolean;
BEGIN
    picked := '{}';
    blocked_q := '{}';
    -- Every settings row of the claim's queues, paused ones too: pause_queue then waits for
    -- the claims holding the row, and a claim that locks it after the pause sees the pause,
    -- so nothing starts after a pause commits.
    PERFORM 1 FROM pgtasks.queue_settings qs
      WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
      ORDER BY qs.queue
        FOR NO KEY UPDATE OF qs;
    started := clock_timestamp();

    -- Settings as of now (after the locks: a configure_queue that committed meanwhile counts).
    FOR s IN SELECT qs.* FROM pgtasks.queue_settings qs
              WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
              ORDER BY qs.queue
    LOOP
        IF s.paused THEN
            blocked_q := blocked_q || s.queue;
            CONTINUE;
        END IF;
        n := max_tasks;
        IF s.max_running IS NOT NULL THEN
            n := least(n, s.max_running - (SELECT count(*) FROM pgtasks.tasks t
                                            WHERE t.queue = s.queue AND t.lease_expires_at IS NOT NULL));
        END IF;
        IF s.rate_limit IS NOT NULL THEN
            DELETE FROM pgtasks.queue_starts q WHERE q.queue = s.queue AND q.at < started - s.rate_period;
            n := least(n, s.rate_limit - (SELECT count(*) FROM pgtasks.queue_starts q
                                           WHERE q.queue = s.queue AND q.at >= started - s.rate_period));
        END IF;
        lq_names := lq_names || s.queue;
        lq_budget := lq_budget || n;
        lq_rated := lq_rated || (s.rate_limit IS NOT NULL);
        IF n <= 0 THEN
            blocked_q := blocked_q || s.queue;
        END IF;
    END LOOP;

    -- No keyed task ready: one set-based pick, as on the fast path, minus blocked queues.
    -- Kept when no queue went over its budget (the usual case: the limit is not reached);
    -- else the walk below redoes it (the rows stay locked by us, it may pick them again).
    -- (measured: the row-by-row walk alone drained a never-full max_running queue at ~0.77
    -- of drain_1.)
    IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= now()) THEN
        -- A claim of limited queues only takes no more than their budgets together.
        n := max_tasks;
        IF queues IS NOT NULL AND queues <@ (lq_names || blocked_q) THEN
            n := least(n, (SELECT coalesce(sum(greatest(b, 0)), 0) FROM unnest(lq_budget) b));
        END IF;
        IF n <= 0 THEN
            RETURN;
        END IF;
        SELECT coalesce(array_agg(pick.id), '{}') INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND t.queue <> ALL (blocked_q)
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT n
             FOR NO KEY UPDATE SKIP LOCKED) pick;
        IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                         JOIN unnest(lq_names, lq_budget) AS b(queue, budget) ON b.queue = t.queue
                        WHERE t.id = ANY (picked)
                        GROUP BY b.queue, b.budget
                       HAVING count(*) > b.budget) THEN
            started := clock_timestamp();
            INSERT INTO pgtasks.queue_starts (queue, at)
            SELECT t.queue, started FROM pgtasks.tasks t
             WHERE t.id = ANY (picked) AND lq_rated[array_position(lq_names, t.queue)];
            RETURN;
        END IF;
        picked := '{}';
    END IF;

    LOOP
        again := false;
        FOR c IN
            SELECT t.id, t.queue, t.concurrency_key, t.concurrency_limit FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND t.queue <> ALL (blocked_q)
               AND (t.concurrency_key IS NULL OR t.concurrency_key <> ALL (blocked_k))
               AND t.id <> ALL (picked)
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks - cardinality(picked)
             FOR NO KEY UPDATE SKIP LOCKED
        LOOP
            IF c.concurrency_key IS NOT NULL THEN
                ki := array_position(key_names, c.concurrency_key);
                IF ki IS NULL THEN
                    IF pg_try_advisory_xact_lock(hashtextextended('pgtasks.concurrency_key:' || c.concurrency_key, 0)) THEN
                        SELECT count(*)::integer INTO n FROM pgtasks.tasks t
                         WHERE t.concurrency_key = c.concurrency_key AND t.status = 'RUNNING';
                    ELSE
                        n := 2147483647;   -- another claimer is deciding for this key
                    END IF;
                    key_names := key_names || c.concurrency_key;
                    key_running := key_running || n;
                    ki := cardinality(key_names);
                END IF;
                -- The task's own limit decides (a key's tasks normally share one).
                IF key_running[ki] >= coalesce(c.concurrency_limit, 1) THEN
                    blocked_k := blocked_k || c.concurrency_key;
                    again := true;
                    EXIT;
                END IF;
                key_running[ki] := key_running[ki] + 1;
            END IF;
            picked := picked || c.id;
            qi := array_position(lq_names, c.queue);
            IF qi IS NOT NULL THEN
                lq_budget[qi] := lq_budget[qi] - 1;
                IF lq_budget[qi] <= 0 THEN
                    blocked_q := blocked_q || c.queue;
                    again := true;
                    EXIT;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN NOT again OR cardinality(picked) >= max_tasks;
    END LOOP;

    -- The start time, taken after every count: a task whose finish a count saw ended
    -- before this (so the recorded RUNNING periods never overlap more than the limits).
    -- Still under the queue locks, so later than every earlier holder's.
    started := clock_timestamp();
    -- The rate window's log: one row per start.
    INSERT INTO pgtasks.queue_starts (queue, at)
    SELECT t.queue, started FROM pgtasks.tasks t
     WHERE t.id = ANY (picked) AND lq_rated[array_position(lq_names, t.queue)];
END $$;

ALTER FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], OUT picked bigint[], OUT started timestamp with time zone) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[]) RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    picked bigint[];
    lease_for interval;
    started timestamptz := now();
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL used to mean "no LIMIT": claim_tasks(max_tasks => NULL) took all 500 ready tasks.
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Claim as many tasks as the worker has free slots.';
    END IF;
    lease_for := pgtasks.lease_or_default(lease);

    IF pgtasks.flow_control_in_use(queues) THEN
        SELECT l.picked, l.started INTO picked, started
          FROM pgtasks.claim_limited(queues, max_tasks, task_types) l;
        IF cardinality(picked) = 0 THEN
            picked := NULL;
        END IF;
    ELSE
        picked := pgtasks.pick_ready(queues, max_tasks, task_types);
    END IF;
    IF picked IS NULL THEN
        RETURN;
    END IF;

    -- Rows come back in claim order. started_at: the limited path's start time (the one its
    -- rate window recorded), else now() as before. The sort is the only way to order a CTE
    -- scan, so enable_sort = off does not keep the planner from it.
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgtasks.tasks t
           SET status = 'RUNNING',
               worker_id = claim_tasks.worker_id,
               attempt = t.attempt + 1,
               started_at = coalesce(t.started_at, started),
               deadline = now() + t.timeout,
               lease_expires_at = least(now() + lease_for, now() + t.timeout)
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $$;

ALTER FUNCTION pgtasks.claim_tasks(worker_id text, queues text[], max_tasks integer, lease interval, task_types text[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.clip_text(value text, max_chars integer) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT CASE WHEN value IS NULL OR length(value) <= max_chars THEN value
                ELSE left(value, max_chars / 2)
                     || format(E'\n[... %s characters left out ...]\n', length(value) - max_chars)
                     || right(value, max_chars - max_chars / 2) END
$$;

ALTER FUNCTION pgtasks.clip_text(value text, max_chars integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.is_blank(value text) RETURNS boolean
    LANGUAGE sql IMMUTABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $_$
    SELECT value IS NULL
        OR value ~ '^[[:space:][:cntrl:]\u0085\u00a0\u1680\u180e\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]*$'
$_$;

ALTER FUNCTION pgtasks.is_blank(value text) OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.settings (
    id boolean DEFAULT true NOT NULL,
    default_queue text DEFAULT 'default'::text NOT NULL,
    default_priority integer DEFAULT 0 NOT NULL,
    default_max_retries integer DEFAULT 3 NOT NULL,
    default_timeout interval DEFAULT '04:00:00'::interval NOT NULL,
    default_backoff_base interval DEFAULT '00:00:01'::interval NOT NULL,
    max_backoff interval DEFAULT '01:00:00'::interval NOT NULL,
    default_lease interval DEFAULT '00:01:00'::interval NOT NULL,
    retention interval DEFAULT '7 days'::interval NOT NULL,
    max_params_bytes integer DEFAULT 1048576 NOT NULL,
    max_result_bytes integer DEFAULT 1048576 NOT NULL,
    max_log_bytes integer DEFAULT 65536 NOT NULL,
    CONSTRAINT default_backoff_base_range CHECK (((default_backoff_base > '00:00:00'::interval) AND (default_backoff_base <= '1 day'::interval))),
    CONSTRAINT default_lease_range CHECK (((default_lease > '00:00:00'::interval) AND (default_lease <= '1 day'::interval))),
    CONSTRAINT default_max_retries_range CHECK (((default_max_retries >= 0) AND (default_max_retries <= 1000))),
    CONSTRAINT default_queue_named CHECK (((NOT pgtasks.is_blank(default_queue)) AND (octet_length(default_queue) <= 255))),
    CONSTRAINT default_timeout_range CHECK (((default_timeout > '00:00:00'::interval) AND (default_timeout <= '1 year'::interval))),
    CONSTRAINT max_backoff_range CHECK (((max_backoff > '00:00:00'::interval) AND (max_backoff <= '1 year'::interval))),
    CONSTRAINT max_log_bytes_range CHECK (((max_log_bytes >= 1) AND (max_log_bytes <= 268435455))),
    CONSTRAINT max_params_bytes_range CHECK (((max_params_bytes >= 2) AND (max_params_bytes <= 268435455))),
    CONSTRAINT max_result_bytes_range CHECK (((max_result_bytes >= 1) AND (max_result_bytes <= 268435455))),
    CONSTRAINT retention_range CHECK (((retention > '00:00:00'::interval) AND (retention <= '100 years'::interval))),
    CONSTRAINT settings_id_check CHECK (id)
);

ALTER TABLE pgtasks.settings OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.configure(default_queue text DEFAULT NULL::text, default_priority integer DEFAULT NULL::integer, default_max_retries integer DEFAULT NULL::integer, default_timeout interval DEFAULT NULL::interval, default_backoff_base interval DEFAULT NULL::interval, max_backoff interval DEFAULT NULL::interval, default_lease interval DEFAULT NULL::interval, retention interval DEFAULT NULL::interval, max_params_bytes integer DEFAULT NULL::integer, max_result_bytes integer DEFAULT NULL::integer, max_log_bytes integer DEFAULT NULL::integer) RETURNS pgtasks.settings
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
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
           max_log_bytes        = coalesce(configure.max_log_bytes, t.max_log_bytes)
    RETURNING t.* INTO s;
    RETURN s;
END $$;

ALTER FUNCTION pgtasks.configure(default_queue text, default_priority integer, default_max_retries integer, default_timeout interval, default_backoff_base interval, max_backoff interval, default_lease interval, retention interval, max_params_bytes integer, max_result_bytes integer, max_log_bytes integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.configure_queue(queue text, max_running integer DEFAULT NULL::integer, rate_limit integer DEFAULT NULL::integer, rate_period interval DEFAULT '00:00:01'::interval) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    IF max_running IS NOT NULL AND max_running NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'pgtasks: max_running must be between 1 and 1000000, got %', max_running
            USING ERRCODE = 'PT301',
                  HINT = 'Use NULL for no limit; to stop a queue use pgtasks.pause_queue(queue).';
    END IF;
    IF (rate_limit IS NOT NULL AND rate_limit NOT BETWEEN 1 AND 1000000)
       OR rate_period IS NULL OR NOT (rate_period > interval '0' AND rate_period <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: rate_limit must be between 1 and 1000000 and rate_period in (0, 1 day], got % per %',
                rate_limit, rate_period
            USING ERRCODE = 'PT302',
                  HINT = 'For example rate_limit => 10, rate_period => interval ''1 second''; NULL rate_limit: no limit.';
    END IF;
    INSERT INTO pgtasks.queue_settings AS s (queue, max_running, rate_limit, rate_period)
    VALUES (configure_queue.queue, configure_queue.max_running, configure_queue.rate_limit,
            configure_queue.rate_period)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE
       SET max_running = excluded.max_running, rate_limit = excluded.rate_limit,
           rate_period = excluded.rate_period, updated_at = now();
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    -- Raised limits may free slots at once.
    PERFORM pg_notify('pgtasks_wakeup', queue);
END $$;

ALTER FUNCTION pgtasks.configure_queue(queue text, max_running integer, rate_limit integer, rate_period interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.create_schedule(name text, task_type text, cron text DEFAULT NULL::text, every interval DEFAULT NULL::interval, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, timezone text DEFAULT 'UTC'::text, overlap text DEFAULT 'allow'::text, catch_up interval DEFAULT '00:00:00'::interval) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                    timezone, overlap, catch_up, 'sql');
END $$;

ALTER FUNCTION pgtasks.create_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.current_settings() RETURNS pgtasks.settings
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT s FROM pgtasks.settings s
$$;

ALTER FUNCTION pgtasks.current_settings() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.declare_schedule(name text, task_type text, cron text DEFAULT NULL::text, every interval DEFAULT NULL::interval, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, timezone text DEFAULT 'UTC'::text, overlap text DEFAULT 'allow'::text, catch_up interval DEFAULT '00:00:00'::interval) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    RETURN pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                   timezone, overlap, catch_up, 'code');
END $$;

ALTER FUNCTION pgtasks.declare_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.drop_idle_queue_settings(queue text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    DELETE FROM pgtasks.queue_settings s
     WHERE s.queue = drop_idle_queue_settings.queue
       AND s.max_running IS NULL AND s.rate_limit IS NULL AND NOT s.paused;
$$;

ALTER FUNCTION pgtasks.drop_idle_queue_settings(queue text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.drop_schedule(name text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    DELETE FROM pgtasks.schedule_defs d WHERE d.name = drop_schedule.name;
END $$;

ALTER FUNCTION pgtasks.drop_schedule(name text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.due_schedules(max_schedules integer DEFAULT 100, claim interval DEFAULT '00:00:03'::interval, worker_id text DEFAULT NULL::text) RETURNS TABLE(name text, cron text, every interval, timezone text, catch_up interval, next_run_at timestamp with time zone, revision bigint, db_now timestamp with time zone)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_max_tasks(max_schedules);
    IF claim IS NULL OR claim <= interval '0' OR claim > interval '1 hour' THEN
        RAISE EXCEPTION 'pgtasks: claim must be > 0 and at most 1 hour, got %', claim
            USING ERRCODE = 'PT114', HINT = 'Leave claim out for 3 seconds.';
    END IF;
    RETURN QUERY
    UPDATE pgtasks.schedule_defs d SET claimed_until = now() + claim, fired_by = worker_id
      FROM (SELECT c.name FROM pgtasks.schedule_defs c
             WHERE NOT c.paused AND (c.next_run_at IS NULL OR c.next_run_at <= now())
               AND (c.claimed_until IS NULL OR c.claimed_until < now())
             ORDER BY c.next_run_at NULLS FIRST
             LIMIT max_schedules
               FOR UPDATE SKIP LOCKED) due
     WHERE d.name = due.name
    RETURNING d.name, d.cron, d.every, d.timezone, d.catch_up, d.next_run_at, d.revision, now();
END $$;

ALTER FUNCTION pgtasks.due_schedules(max_schedules integer, claim interval, worker_id text) OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.schedule_defs (
    name text NOT NULL,
    task_type text NOT NULL,
    cron text,
    every interval,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    queue text,
    priority integer,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    overlap text DEFAULT 'allow'::text NOT NULL,
    catch_up interval DEFAULT '00:00:00'::interval NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    origin text DEFAULT 'sql'::text NOT NULL,
    next_run_at timestamp with time zone,
    last_tick timestamp with time zone,
    last_run_at timestamp with time zone,
    last_task_id bigint,
    skipped bigint DEFAULT 0 NOT NULL,
    skipped_overlap bigint DEFAULT 0 NOT NULL,
    revision bigint DEFAULT 0 NOT NULL,
    claimed_until timestamp with time zone,
    fired_by text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT catch_up_in_range CHECK (((catch_up >= '00:00:00'::interval) AND (catch_up <= '1 year'::interval))),
    CONSTRAINT every_positive CHECK ((every > '00:00:00'::interval)),
    CONSTRAINT one_of_cron_every CHECK (((cron IS NULL) <> (every IS NULL))),
    CONSTRAINT origin_known CHECK ((origin = ANY (ARRAY['sql'::text, 'code'::text]))),
    CONSTRAINT overlap_known CHECK ((overlap = ANY (ARRAY['allow'::text, 'skip'::text, 'cancel_previous'::text])))
);

ALTER TABLE pgtasks.schedule_defs OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.enqueue_tick(s pgtasks.schedule_defs, tick timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    p      pgtasks.tasks;
    new_id bigint;
BEGIN
    -- The same policy resolution as submit_task (type's policy, else settings), but an
    -- INSERT of our own: ON CONFLICT needs to name the (schedule, tick) index.
    p := pgtasks.submit_policy(s.task_type, s.queue, s.priority, NULL, NULL, NULL, NULL);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                               backoff_base, schedule, schedule_tick)
    VALUES (p.task_type, s.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
            p.backoff_base, s.name, tick)
    ON CONFLICT (schedule, schedule_tick) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

ALTER FUNCTION pgtasks.enqueue_tick(s pgtasks.schedule_defs, tick timestamp with time zone) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.every_tick_after(every interval, after timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE sql IMMUTABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT date_bin(every, after, timestamptz '1970-01-01 00:00:00+00') + every
$$;

ALTER FUNCTION pgtasks.every_tick_after(every interval, after timestamp with time zone) OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.tasks (
    id bigint NOT NULL,
    task_type text NOT NULL,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    queue text DEFAULT (pgtasks.current_settings()).default_queue NOT NULL,
    priority integer DEFAULT (pgtasks.current_settings()).default_priority NOT NULL,
    status pgtasks.status DEFAULT 'PENDING'::pgtasks.status NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    retry_count integer DEFAULT 0 NOT NULL,
    max_retries integer DEFAULT (pgtasks.current_settings()).default_max_retries NOT NULL,
    timeout interval DEFAULT (pgtasks.current_settings()).default_timeout NOT NULL,
    worker_id text,
    lease_expires_at timestamp with time zone,
    deadline timestamp with time zone,
    result jsonb,
    error text,
    progress_current bigint,
    progress_total bigint,
    progress_message text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    backoff_base interval DEFAULT (pgtasks.current_settings()).default_backoff_base NOT NULL,
    unique_key text,
    concurrency_key text,
    concurrency_limit integer,
    schedule text,
    schedule_tick timestamp with time zone,
    workflow_id bigint,
    workflow_node text,
    waiting_on integer,
    has_dependents boolean,
    on_parent_failure text,
    cancelled_by bigint,
    CONSTRAINT attempt_not_negative CHECK ((attempt >= 0)),
    CONSTRAINT backoff_base_positive CHECK ((backoff_base > '00:00:00'::interval)),
    CONSTRAINT cancelled_by_cancelled CHECK (((cancelled_by IS NULL) OR (status = 'CANCELLED'::pgtasks.status))),
    CONSTRAINT failed_has_error CHECK (((status <> 'FAILED'::pgtasks.status) OR (error IS NOT NULL))),
    CONSTRAINT on_parent_failure_known CHECK ((on_parent_failure = ANY (ARRAY['cancel'::text, 'run'::text]))),
    CONSTRAINT only_done_has_result CHECK (((status = 'DONE'::pgtasks.status) OR (result IS NULL))),
    CONSTRAINT params_is_object CHECK ((jsonb_typeof(params) = 'object'::text)),
    CONSTRAINT progress_in_bounds CHECK ((((progress_current IS NULL) OR (progress_current >= 0)) AND ((progress_total IS NULL) OR (progress_total >= 0)) AND ((progress_total IS NULL) OR (progress_current IS NULL) OR (progress_current <= progress_total)))),
    CONSTRAINT queue_not_empty CHECK ((queue <> ''::text)),
    CONSTRAINT ready_has_no_unfinished_parents CHECK (((status <> ALL (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status, 'RUNNING'::pgtasks.status])) OR (COALESCE(waiting_on, 0) = 0))),
    CONSTRAINT retries_in_bounds CHECK (((max_retries >= 0) AND ((retry_count >= 0) AND (retry_count <= max_retries)))),
    CONSTRAINT run_at_finite CHECK (isfinite(run_at)),
    CONSTRAINT running_has_lease CHECK (
CASE
    WHEN (status = 'RUNNING'::pgtasks.status) THEN ((worker_id IS NOT NULL) AND (lease_expires_at IS NOT NULL) AND (deadline IS NOT NULL))
    ELSE ((worker_id IS NULL) AND (lease_expires_at IS NULL) AND (deadline IS NULL))
END),
    CONSTRAINT running_was_claimed CHECK (((status <> 'RUNNING'::pgtasks.status) OR ((attempt > 0) AND (started_at IS NOT NULL)))),
    CONSTRAINT schedule_has_tick CHECK (((schedule IS NULL) = (schedule_tick IS NULL))),
    CONSTRAINT task_type_not_empty CHECK ((task_type <> ''::text)),
    CONSTRAINT terminal_has_finished_at CHECK (((status = ANY (ARRAY['DONE'::pgtasks.status, 'FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status])) = (finished_at IS NOT NULL))),
    CONSTRAINT timeout_at_most_a_year CHECK ((timeout <= '1 year'::interval)),
    CONSTRAINT timeout_positive CHECK ((timeout > '00:00:00'::interval)),
    CONSTRAINT waiting_has_parents CHECK (((status <> 'WAITING'::pgtasks.status) OR (waiting_on > 0))),
    CONSTRAINT waiting_on_not_negative CHECK ((waiting_on >= 0))
);

ALTER TABLE pgtasks.tasks OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.expiry_reason(t pgtasks.tasks) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT CASE WHEN t.deadline < now()
                THEN pg_catalog.format('timed out: ran past its %s time limit (worker %s)', t.timeout, t.worker_id)
                ELSE pg_catalog.format('lease expired: worker %s stopped heartbeating', t.worker_id) END
$$;

ALTER FUNCTION pgtasks.expiry_reason(t pgtasks.tasks) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.fail_task(task_id bigint, attempt integer, error text, traceback text DEFAULT NULL::text, retryable boolean DEFAULT true, retry_delay interval DEFAULT NULL::interval) RETURNS pgtasks.status
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    t       pgtasks.tasks;
    longest integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    -- run_at becomes now() + retry_delay: the same 100-year bound as a submit's run_at.
    IF retry_delay IS NOT NULL
       AND NOT (retry_delay >= interval '0' AND retry_delay <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: retry_delay must be between 0 and 100 years, got %', retry_delay
            USING ERRCODE = 'PT119', HINT = 'Leave retry_delay out (NULL) for the task''s backoff.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, attempt);
    -- Only text over the limit pays for clip_text (a call with its own settings): measured
    -- with the calls unconditional, a short failure cost ~7 % more than before 0017.
    IF length(fail_task.error) > longest THEN
        fail_task.error := pgtasks.clip_text(fail_task.error, longest);
    END IF;
    IF length(fail_task.traceback) > longest THEN
        fail_task.traceback := pgtasks.clip_text(fail_task.traceback, longest);
    END IF;
    RETURN pgtasks.record_failure(t, coalesce(nullif(fail_task.error, ''), 'unknown error'),
                                  fail_task.traceback, coalesce(retryable, true), retry_delay);
END $$;

ALTER FUNCTION pgtasks.fail_task(task_id bigint, attempt integer, error text, traceback text, retryable boolean, retry_delay interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[]) RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
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

    -- The two-statement path (0003), for the calls listed at the top of this file.
    IF claim_max = 0
       OR EXISTS (SELECT 1 FROM unnest(finish_and_claim.results) AS u(result), pgtasks.settings s
                   WHERE octet_length(u.result::text) > s.max_result_bytes)
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.id = ANY (finish_and_claim.task_ids) AND t.has_dependents)
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
               finished_at = CASE WHEN w.finishing THEN now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(now() + lease_for, now() + t.timeout) END,
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
END $$;

ALTER FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer, queues text[], lease interval, task_types text[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb DEFAULT NULL::jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_result_size(result, 'result');
    UPDATE pgtasks.tasks t
       SET status = 'DONE', result = finish_task.result, finished_at = now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
           progress_current = coalesce(t.progress_total, t.progress_current)
     WHERE t.id = finish_task.task_id;
END $$;

ALTER FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[]) RETURNS TABLE(rejected_task_id bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
    big bigint[];
    o record;
BEGIN
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);
    -- Sizes first, from the arguments alone: the common batch has no oversized result and
    -- reads no table here.
    SELECT array_agg(u.ord) INTO big
      FROM unnest(finish_tasks.results) WITH ORDINALITY AS u(result, ord)
     WHERE octet_length(u.result::text) > max_bytes;
    IF big IS NOT NULL THEN
        FOR o IN
            SELECT k AS task, octet_length(u.result::text) AS size_bytes
              FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                     WITH ORDINALITY AS u(task_id, attempt, result, ord)
              JOIN pgtasks.tasks k ON k.id = u.task_id AND k.attempt = u.attempt AND k.status = 'RUNNING'
             WHERE u.ord = ANY (big)
               FOR NO KEY UPDATE OF k
        LOOP
            -- Now FAILED, so the UPDATE below (RUNNING rows only) leaves it and reports it.
            PERFORM pgtasks.record_failure(
                o.task, pg_catalog.format('pgtasks: result of %s bytes is larger than max_result_bytes (%s)',
                                          o.size_bytes, max_bytes),
                NULL, false, NULL);
        END LOOP;
    END IF;

    RETURN QUERY
    WITH batch AS (
        SELECT * FROM unnest(finish_tasks.task_ids, finish_tasks.attempts, finish_tasks.results)
                   AS u(task_id, attempt, result)
    ), done AS (
        UPDATE pgtasks.tasks t
           SET status = 'DONE', result = batch.result, finished_at = now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.attempt = batch.attempt AND t.status = 'RUNNING'
        RETURNING t.id, t.attempt
    )
    -- NOT EXISTS, not NOT IN: a NULL attempt must come back rejected (see 0003).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.attempt = batch.attempt);
END $$;

ALTER FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.fire_every_schedules(max_schedules integer DEFAULT 100) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    d record;
    n integer := 0;
BEGIN
    FOR d IN SELECT * FROM pgtasks.due_schedules(max_schedules) ds WHERE ds.every IS NOT NULL LOOP
        n := n + (SELECT count(*) FROM pgtasks.fire_schedule(d.name, d.revision))::integer;
    END LOOP;
    RETURN n;
END $$;

ALTER FUNCTION pgtasks.fire_every_schedules(max_schedules integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], next_run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, skipped_before bigint DEFAULT 0) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    s         pgtasks.schedule_defs;
    due       timestamptz[];
    run       timestamptz[];
    nxt       timestamptz := fire_schedule.next_run_at;
    missed    bigint := coalesce(skipped_before, 0);
    n_overlap bigint := 0;
    window_at timestamptz;  -- ticks at or after it run
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
    window_at := now() - greatest(s.catch_up, interval '2 seconds');
    IF skipped_before < 0 THEN
        RAISE EXCEPTION 'pgtasks: skipped_before must be 0 or more, got %', skipped_before
            USING ERRCODE = 'PT409', HINT = 'Pass how many due ticks older than the catch-up window you left out.';
    END IF;

    IF s.every IS NOT NULL THEN
        -- Every schedule: computed here, so any client (or pg_cron) can fire it with
        -- fire_schedule(name, revision).
        IF s.next_run_at IS NULL OR s.next_run_at > now() THEN
            nxt := coalesce(s.next_run_at, pgtasks.every_tick_after(s.every, now()));
            due := '{}';
        ELSE
            latest := date_bin(s.every, now(), s.next_run_at);
            first_in := greatest(s.next_run_at, date_bin(s.every, window_at, s.next_run_at));
            IF first_in < window_at THEN
                first_in := first_in + s.every;
            END IF;
            first_in := least(first_in, latest);
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
        IF cardinality(due) > 0 AND (due[1] < s.next_run_at OR due[cardinality(due)] > now()) THEN
            RAISE EXCEPTION 'pgtasks: ticks of % must lie between its next_run_at % and now', s.name, s.next_run_at
                USING ERRCODE = 'PT409', HINT = 'Fire only due ticks; earlier ones were fired already.';
        END IF;
        -- Not "after now()": the caller computed it from due_schedules' db_now, and this
        -- transaction's now() may already have passed it. Then it is simply due next round.
        IF NOT isfinite(nxt) OR nxt > now() + interval '100 years'
           OR nxt <= coalesce(due[cardinality(due)], s.next_run_at, '-infinity') THEN
            RAISE EXCEPTION 'pgtasks: next_run_at of % must be after the ticks fired (and finite), got %', s.name, nxt
                USING ERRCODE = 'PT409', HINT = 'Pass the first tick after db_now of due_schedules.';
        END IF;
        -- The missed-tick policy, whatever the caller sent.
        latest := due[cardinality(due)];
        run := ARRAY(SELECT u FROM unnest(due) u WHERE u >= window_at OR u = latest ORDER BY u);
        missed := missed + cardinality(due) - cardinality(run);
        due := run;
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
           last_run_at = CASE WHEN last_id IS DISTINCT FROM s.last_task_id THEN now() ELSE d.last_run_at END,
           last_task_id = last_id, skipped = d.skipped + missed,
           skipped_overlap = d.skipped_overlap + n_overlap
     WHERE d.name = s.name;
END $$;

ALTER FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[], next_run_at timestamp with time zone, skipped_before bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.flow_control_in_use(queues text[]) RETURNS boolean
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM pgtasks.queue_settings qs
                    WHERE flow_control_in_use.queues IS NULL OR qs.queue = ANY (flow_control_in_use.queues))
        OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= now());
END $$;

ALTER FUNCTION pgtasks.flow_control_in_use(queues text[]) OWNER TO pgtasks_owner;

CREATE PROCEDURE pgtasks.grant_roles()
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    g record;
    o record;
BEGIN
    FOR g IN SELECT * FROM (VALUES
        ('pgtasks_submitter', ARRAY['submit_task', 'submit_tasks', 'watch_task', 'unwatch_task']),
        ('pgtasks_worker', ARRAY['claim_tasks', 'next_run_at', 'heartbeat', 'finish_task',
                                 'finish_tasks', 'finish_and_claim', 'fail_task', 'yield_task',
                                 'checkpoint', 'task_steps_of', 'report_progress', 'log',
                                 'log_many', 'rescue_expired', 'prune_finished', 'maintain',
                                 'register_worker', 'unregister_worker', 'register_task_type']),
        ('pgtasks_admin', ARRAY['cancel_task', 'retry_task', 'configure'])
    ) AS v(grantee, names)
    LOOP
        FOR o IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
                  WHERE p.pronamespace = 'pgtasks'::regnamespace AND p.proname = ANY (g.names)
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', o.fn, g.grantee);
        END LOOP;
    END LOOP;
    -- Views. A view checks table access as its owner, but the functions it calls as the
    -- caller: transitions calls transition_reason.
    FOR g IN SELECT * FROM (VALUES
        ('pgtasks_submitter', ARRAY['task_overview', 'queue_stats', 'transitions', 'registered_types']),
        ('pgtasks_reader', ARRAY['task_overview', 'queue_stats', 'transitions', 'registered_types',
                                 'task_status', 'failed_tasks', 'workers', 'task_history',
                                 'task_log_lines', 'task_attempt_errors'])
    ) AS v(grantee, names)
    LOOP
        FOR o IN SELECT c.oid::regclass AS rel FROM pg_class c
                  WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind IN ('v', 'm')
                    AND c.relname = ANY (g.names)
        LOOP
            EXECUTE format('GRANT SELECT ON %s TO %I', o.rel, g.grantee);
        END LOOP;
    END LOOP;
    EXECUTE 'GRANT EXECUTE ON FUNCTION pgtasks.transition_reason(pgtasks.status, pgtasks.status) '
            'TO pgtasks_submitter, pgtasks_reader';
    -- The deployment's defaults and limits are no secret; workers of any language read them.
    IF to_regprocedure('pgtasks.current_settings()') IS NOT NULL THEN
        EXECUTE 'GRANT EXECUTE ON FUNCTION pgtasks.current_settings() TO pgtasks_worker, pgtasks_reader';
    END IF;
END $$;

ALTER PROCEDURE pgtasks.grant_roles() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.heartbeat(worker_id text, task_ids bigint[], attempts integer[], lease interval DEFAULT NULL::interval) RETURNS TABLE(lost_task_id bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    lease_for interval;
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    PERFORM pgtasks.check_batch('heartbeat', task_ids, attempts);
    lease_for := pgtasks.lease_or_default(lease);

    UPDATE pgtasks.worker_registry w SET last_seen = now()
     WHERE w.worker_id = heartbeat.worker_id;

    RETURN QUERY
    WITH mine AS (
        SELECT u.task_id, u.attempt FROM unnest(heartbeat.task_ids, heartbeat.attempts) AS u(task_id, attempt)
    ), extended AS (
        UPDATE pgtasks.tasks t
           SET lease_expires_at = least(now() + lease_for, t.deadline)
          FROM mine
         WHERE t.id = mine.task_id AND t.attempt = mine.attempt
           AND t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id
        RETURNING t.id, t.attempt
    )
    -- NOT EXISTS, not NOT IN: with a NULL attempt in the batch, NOT IN is never true
    -- and that task would be neither extended nor reported lost.
    SELECT mine.task_id FROM mine
     WHERE NOT EXISTS (SELECT 1 FROM extended e WHERE e.id = mine.task_id AND e.attempt = mine.attempt);
END $$;

ALTER FUNCTION pgtasks.heartbeat(worker_id text, task_ids bigint[], attempts integer[], lease interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.keep_settings_row() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    RAISE EXCEPTION 'pgtasks: the settings row cannot be deleted'
        USING ERRCODE = 'PT118', HINT = 'Change values with pgtasks.configure(name => value).';
END $$;

ALTER FUNCTION pgtasks.keep_settings_row() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.lease_or_default(lease interval) RETURNS interval
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF lease IS NULL THEN
        RETURN (SELECT s.default_lease FROM pgtasks.settings s);
    END IF;
    IF NOT (lease > interval '0' AND lease <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: lease must be positive and at most 1 day, got %', lease
            USING ERRCODE = 'PT114',
                  HINT = 'Leave lease out (NULL) for settings.default_lease; heartbeat well within it.';
    END IF;
    RETURN lease;
END $$;

ALTER FUNCTION pgtasks.lease_or_default(lease interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.lock_expired(max_tasks integer) RETURNS SETOF pgtasks.tasks
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT * FROM pgtasks.tasks t
     WHERE t.lease_expires_at IS NOT NULL AND t.lease_expires_at < now()
     ORDER BY t.lease_expires_at
     LIMIT lock_expired.max_tasks
     FOR NO KEY UPDATE SKIP LOCKED
$$;

ALTER FUNCTION pgtasks.lock_expired(max_tasks integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.lock_owned_task(task_id bigint, attempt integer) RETURNS pgtasks.tasks
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    IF attempt IS NULL THEN
        RAISE EXCEPTION 'pgtasks: attempt must not be NULL (it is the fencing token of task %)', task_id
            USING ERRCODE = 'PT117', HINT = 'Pass the attempt that claim_tasks returned with the task.';
    END IF;
    t := pgtasks.lock_task(task_id);
    IF t.status <> 'RUNNING' OR t.attempt <> lock_owned_task.attempt THEN
        RAISE EXCEPTION 'pgtasks: attempt % of task % no longer holds the lease (task is % at attempt %)',
                attempt, task_id, t.status, t.attempt
            USING ERRCODE = 'PT002',
                  HINT = 'Another worker took over or the task was cancelled; drop this result.';
    END IF;
    RETURN t;
END $$;

ALTER FUNCTION pgtasks.lock_owned_task(task_id bigint, attempt integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.lock_schedule(name text) RETURNS pgtasks.schedule_defs
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    s pgtasks.schedule_defs;
BEGIN
    SELECT * INTO s FROM pgtasks.schedule_defs d WHERE d.name = lock_schedule.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: no schedule named %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'PT407', HINT = 'SELECT name FROM pgtasks.schedules lists them.';
    END IF;
    RETURN s;
END $$;

ALTER FUNCTION pgtasks.lock_schedule(name text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.lock_task(task_id bigint) RETURNS pgtasks.tasks
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    SELECT * INTO t FROM pgtasks.tasks WHERE id = lock_task.task_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id
            USING ERRCODE = 'PT003', HINT = 'Check the id; finished tasks are pruned after their retention.';
    END IF;
    RETURN t;
END $$;

ALTER FUNCTION pgtasks.lock_task(task_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_log_size(message, 'log line');
    PERFORM pgtasks.check_log_size(level, 'log level');
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message)
    VALUES (task_id, attempt, upper(coalesce(level, 'INFO')), coalesce(message, ''));
    PERFORM pgtasks.notify_watchers(task_id);
END $$;

ALTER FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.log_many(task_id bigint, attempt integer, levels text[], messages text[], ats timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], loggers text[] DEFAULT NULL::text[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
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
END $$;

ALTER FUNCTION pgtasks.log_many(task_id bigint, attempt integer, levels text[], messages text[], ats timestamp with time zone[], loggers text[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.maintain(max_tasks integer DEFAULT 1000) RETURNS TABLE(rescued integer, pruned integer)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    -- Any constant works; it only has to be the same for every caller ("pgtmnt").
    IF NOT pg_catalog.pg_try_advisory_xact_lock(x'7067746d6e74'::bigint) THEN
        rescued := 0;
        pruned := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    rescued := pgtasks.rescue_expired(max_tasks);
    pruned := pgtasks.prune_finished(NULL, max_tasks);
    RETURN NEXT;
END $$;

ALTER FUNCTION pgtasks.maintain(max_tasks integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.next_run_at(queues text[] DEFAULT NULL::text[], task_types text[] DEFAULT NULL::text[]) RETURNS timestamp with time zone
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT min(t.run_at) FROM pgtasks.tasks t
     WHERE t.status IN ('PENDING', 'COMMIT')
       AND (next_run_at.queues IS NULL OR t.queue = ANY (next_run_at.queues))
       AND (next_run_at.task_types IS NULL OR t.task_type = ANY (next_run_at.task_types))
$$;

ALTER FUNCTION pgtasks.next_run_at(queues text[], task_types text[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.notify_watchers(task_id bigint) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT pg_notify('pgtasks_progress', notify_watchers.task_id::text)
     WHERE EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = notify_watchers.task_id);
$$;

ALTER FUNCTION pgtasks.notify_watchers(task_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.parent_results(task_id bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    r jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t WHERE t.id = parent_results.task_id) THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id
            USING ERRCODE = 'PT003', HINT = 'Check the id; finished tasks are pruned after their retention.';
    END IF;
    SELECT coalesce(jsonb_object_agg(p.id::text,
               CASE WHEN p.status = 'DONE'
                    THEN jsonb_build_object('node', p.workflow_node, 'status', p.status, 'result', p.result)
                    WHEN p.status IN ('FAILED', 'CANCELLED')
                    THEN jsonb_build_object('node', p.workflow_node, 'status', p.status,
                                            'error', coalesce(p.error, 'cancelled'))
                    ELSE jsonb_build_object('node', p.workflow_node, 'status', p.status) END), '{}')
      INTO r
      FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
     WHERE e.child_id = parent_results.task_id;
    RETURN r;
END $$;

ALTER FUNCTION pgtasks.parent_results(task_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.pause_queue(queue text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    INSERT INTO pgtasks.queue_settings AS s (queue, paused) VALUES (pause_queue.queue, true)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE SET paused = true, updated_at = now();
END $$;

ALTER FUNCTION pgtasks.pause_queue(queue text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.pause_schedule(name text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    UPDATE pgtasks.schedule_defs d SET paused = true, revision = d.revision + 1, updated_at = now()
     WHERE d.name = pause_schedule.name;
END $$;

ALTER FUNCTION pgtasks.pause_schedule(name text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[]) RETURNS bigint[]
    LANGUAGE plpgsql SECURITY DEFINER
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    picked bigint[];
BEGIN
    IF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = pick_ready.queues[1]
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = ANY (pick_ready.queues)
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    RETURN picked;
END $$;

ALTER FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.prune_finished(older_than interval DEFAULT NULL::interval, max_tasks integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
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
    cutoff := now() - coalesce(older_than, (SELECT s.retention FROM pgtasks.settings s));
    -- Lets the append-only triggers through for this statement only (see 0004).
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
        -- task_events has no foreign key (see 0001), so its rows go here, not by cascade.
        DELETE FROM pgtasks.task_events e USING gone WHERE e.task_id = gone.id
    )
    SELECT count(*)::integer INTO n FROM gone;
    PERFORM set_config('pgtasks.pruning', '', true);
    PERFORM pgtasks.prune_flow_state(max_tasks);
    RETURN n;
END $$;

ALTER FUNCTION pgtasks.prune_finished(older_than interval, max_tasks integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.prune_flow_state(max_rows integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    -- A window whose reservation has passed is only ever taken over by the next submit of
    -- its key (submit_one); deleting it leaves the key free exactly as that would. SKIP
    -- LOCKED: a submit taking the row over right now keeps it.
    DELETE FROM pgtasks.unique_windows w
     WHERE w.unique_key IN (SELECT o.unique_key FROM pgtasks.unique_windows o
                             WHERE o.reserved_until < now()
                             LIMIT max_rows
                             FOR UPDATE SKIP LOCKED);
    -- Starts older than their queue's window count for nothing (claim_limited trims them
    -- itself, but only for queues it still claims from with a rate limit). A queue without
    -- settings or without a rate limit keeps none.
    DELETE FROM pgtasks.queue_starts s
     WHERE s.ctid IN (SELECT o.ctid FROM pgtasks.queue_starts o
                        LEFT JOIN pgtasks.queue_settings qs ON qs.queue = o.queue
                       WHERE qs.rate_limit IS NULL OR o.at < now() - qs.rate_period
                       LIMIT max_rows);
END $$;

ALTER FUNCTION pgtasks.prune_flow_state(max_rows integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.raise_unique_held(t pgtasks.tasks) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    holder bigint;
BEGIN
    SELECT o.id INTO holder FROM pgtasks.tasks o
     WHERE o.unique_key = t.unique_key AND o.status IN ('PENDING', 'COMMIT', 'RUNNING')
       AND o.id <> t.id
     LIMIT 1;
    RAISE EXCEPTION 'pgtasks: task % cannot be retried: its unique_key % is held by active task %',
            t.id, pg_catalog.quote_literal(t.unique_key), coalesce(holder::text, '(being submitted)')
        USING ERRCODE = 'PT306',
              HINT = 'Wait for the active task with that key to finish, or cancel it, then retry.';
END $$;

ALTER FUNCTION pgtasks.raise_unique_held(t pgtasks.tasks) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.record_failure(t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval) RETURNS pgtasks.status
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    next_status pgtasks.status;
BEGIN
    INSERT INTO pgtasks.task_errors (task_id, attempt, error, traceback)
    VALUES (t.id, t.attempt, error, traceback)
    ON CONFLICT ON CONSTRAINT task_errors_pkey DO NOTHING;

    IF retryable AND t.retry_count < t.max_retries THEN
        next_status := 'COMMIT';
        UPDATE pgtasks.tasks
           SET status = 'COMMIT', retry_count = retry_count + 1, error = record_failure.error,
               run_at = now() + coalesce(retry_delay, pgtasks.backoff(t.retry_count + 1, t.backoff_base)),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL
         WHERE id = t.id;
    ELSE
        next_status := 'FAILED';
        UPDATE pgtasks.tasks
           SET status = 'FAILED', error = record_failure.error, finished_at = now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL
         WHERE id = t.id;
    END IF;
    RETURN next_status;
END $$;

ALTER FUNCTION pgtasks.record_failure(t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.record_inserts() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    first_queue text;
    last_queue  text;
    first_id    bigint;
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
    SELECT n.id, n.attempt, NULL, n.status FROM new_rows n;

    IF current_setting('pgtasks.wake_workers', true) IS NOT DISTINCT FROM 'off' THEN
        RETURN NULL;
    END IF;
    SELECT min(n.queue), max(n.queue), min(n.id) INTO first_queue, last_queue, first_id
      FROM new_rows n
     WHERE n.run_at <= now() AND n.status IN ('PENDING', 'COMMIT');
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: a timer or a release wakes
    ELSIF first_queue = last_queue THEN
        IF NOT EXISTS (
               SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                               WHERE t.queue >= first_queue AND t.queue <= first_queue
                                 AND t.status IN ('PENDING', 'COMMIT')
                               ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                               LIMIT 1) head
                WHERE head.run_at <= now() AND head.id < first_id) THEN
            PERFORM pg_notify('pgtasks_wakeup', first_queue);
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', q.queue)
           FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
                  WHERE n.run_at <= now() AND n.status IN ('PENDING', 'COMMIT')
                  GROUP BY n.queue) q
          WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                                WHERE t.queue >= q.queue AND t.queue <= q.queue
                                  AND t.status IN ('PENDING', 'COMMIT')
                                ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                                LIMIT 1) head
                 WHERE head.run_at <= now() AND head.id < q.first_id);
    END IF;
    RETURN NULL;
END $$;

ALTER FUNCTION pgtasks.record_inserts() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.record_updates() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET enable_nestloop TO 'off'
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    ended bigint[];
    retried bigint[];
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
    SELECT n.id, n.attempt, o.status, n.status, coalesce(n.worker_id, o.worker_id)
      FROM new_rows n JOIN old_rows o USING (id)
     WHERE o.status <> n.status;

    -- Wake clients blocked in wait(), only for tasks someone watches.
    PERFORM pg_notify('pgtasks_done', n.id::text)
       FROM new_rows n
      WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')
        AND EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = n.id);

    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.has_dependents) THEN
        SELECT array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')),
               array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('PENDING', 'WAITING')
                                                       AND o.status IN ('FAILED', 'CANCELLED'))
          INTO ended, retried
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE n.has_dependents AND o.status <> n.status;
        IF ended IS NOT NULL THEN
            PERFORM pgtasks.release_children(ended);
        END IF;
        IF retried IS NOT NULL AND current_setting('pgtasks.reviving', true) IS DISTINCT FROM 'on' THEN
            PERFORM pgtasks.revive_children(retried);
        END IF;
    END IF;
    RETURN NULL;
END $$;

ALTER FUNCTION pgtasks.record_updates() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.register_task_type(task_type text, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, worker_id text DEFAULT NULL::text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_policy(task_type, queue, max_retries, timeout, backoff_base);
    INSERT INTO pgtasks.task_types AS t
           (task_type, queue, priority, max_retries, timeout, backoff_base, registered_by)
    VALUES (register_task_type.task_type, register_task_type.queue, register_task_type.priority,
            register_task_type.max_retries, register_task_type.timeout,
            register_task_type.backoff_base, register_task_type.worker_id)
    ON CONFLICT ON CONSTRAINT task_types_pkey DO UPDATE
       SET queue = excluded.queue, priority = excluded.priority, max_retries = excluded.max_retries,
           timeout = excluded.timeout, backoff_base = excluded.backoff_base,
           registered_by = excluded.registered_by, updated_at = now()
     WHERE (t.queue, t.priority, t.max_retries, t.timeout, t.backoff_base)
           IS DISTINCT FROM
           (excluded.queue, excluded.priority, excluded.max_retries, excluded.timeout, excluded.backoff_base);
END $$;

ALTER FUNCTION pgtasks.register_task_type(task_type text, queue text, priority integer, max_retries integer, timeout interval, backoff_base interval, worker_id text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.register_worker(worker_id text, host text, pid integer, queues text[] DEFAULT NULL::text[], concurrency integer DEFAULT 1, lease interval DEFAULT NULL::interval) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    IF pgtasks.is_blank(host) OR octet_length(host) > 255 OR pid IS NULL
       OR concurrency IS NULL OR concurrency < 1
       OR EXISTS (SELECT 1 FROM unnest(queues) q WHERE pgtasks.is_blank(q) OR octet_length(q) > 255) THEN
        RAISE EXCEPTION 'pgtasks: register_worker needs a host name, a pid, a concurrency of 1 or more '
                        'and non-blank queue names (got host %, pid %, concurrency %, queues %)',
                left(host, 40), pid, concurrency, left(queues::text, 80)
            USING ERRCODE = 'PT206', HINT = 'For example register_worker(''host:123:ab'', ''host'', 123, NULL, 10).';
    END IF;
    INSERT INTO pgtasks.worker_registry AS w (worker_id, host, pid, queues, concurrency, lease)
    VALUES (register_worker.worker_id, register_worker.host, register_worker.pid, register_worker.queues,
            register_worker.concurrency, pgtasks.lease_or_default(register_worker.lease))
    ON CONFLICT ON CONSTRAINT worker_registry_pkey DO UPDATE SET last_seen = now();
END $$;

ALTER FUNCTION pgtasks.register_worker(worker_id text, host text, pid integer, queues text[], concurrency integer, lease interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.reject_history_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF current_setting('pgtasks.pruning', true) = 'on'
       OR (TG_TABLE_NAME = 'task_errors' AND TG_OP = 'DELETE' AND pg_trigger_depth() > 1) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'pgtasks: %.% is append-only (% refused)', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'PT202',
              HINT = 'History goes with its task: pgtasks.prune_finished() deletes finished tasks '
                     'and their history after the retention.';
END $$;

ALTER FUNCTION pgtasks.reject_history_change() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.reject_transition() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF OLD.status <> NEW.status
       AND pgtasks.transition_reason(OLD.status, NEW.status) IS NULL THEN
        RAISE EXCEPTION 'pgtasks: task % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'PT001',
                  HINT = 'Allowed transitions are listed in pgtasks.transitions; use the '
                         'pgtasks functions (cancel_task, retry_task, ...) instead of UPDATE.';
    END IF;
    RAISE EXCEPTION 'pgtasks: task % (% -> %): attempt % -> %, worker % -> %, lease % -> %, deadline % -> % '
                    'is not a change the pgtasks functions make',
            OLD.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.worker_id, NEW.worker_id,
            OLD.lease_expires_at, NEW.lease_expires_at, OLD.deadline, NEW.deadline
        USING ERRCODE = 'PT201',
              HINT = 'attempt is the fencing token: it only grows by one when a task is claimed. '
                     'A running task keeps its worker and deadline; its lease never passes the deadline.';
END $$;

ALTER FUNCTION pgtasks.reject_transition() OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.release_children(parents bigint[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET enable_nestloop TO 'on'
    AS $$
DECLARE
    doomed bigint[];
    causes bigint[];
    kids bigint[];
    ended integer[];
    n integer;
BEGIN
    WITH RECURSIVE doom(id, cause) AS (
        SELECT e.child_id, p.id
          FROM pgtasks.tasks p
          JOIN pgtasks.task_edges e ON e.parent_id = p.id
          JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE p.id = ANY (parents) AND p.status IN ('FAILED', 'CANCELLED')
           AND c.status = 'WAITING' AND c.on_parent_failure = 'cancel'
        UNION
        SELECT e.child_id, d.cause
          FROM doom d
          JOIN pgtasks.task_edges e ON e.parent_id = d.id
          JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE c.status = 'WAITING' AND c.on_parent_failure = 'cancel'
    )
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.cause ORDER BY x.id) INTO doomed, causes
      FROM (SELECT DISTINCT ON (d.id) d.id, d.cause FROM doom d ORDER BY d.id, d.cause) x;
    IF doomed IS NOT NULL THEN
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (doomed) ORDER BY t.id FOR NO KEY UPDATE;
        UPDATE pgtasks.tasks c
           SET status = 'CANCELLED', finished_at = now(), cancelled_by = u.cause,
               error = pg_catalog.format('cancelled: parent task %s%s ended %s', u.cause,
                                         coalesce(' (' || p.workflow_node || ')', ''), p.status)
          FROM unnest(doomed, causes) AS u(id, cause)
          JOIN pgtasks.tasks p ON p.id = u.cause
         WHERE c.id = u.id AND c.status = 'WAITING';
    END IF;

    SELECT array_agg(k.child_id ORDER BY k.child_id), array_agg(k.n ORDER BY k.child_id) INTO kids, ended
      FROM (SELECT e.child_id, count(*)::integer AS n FROM pgtasks.task_edges e
             WHERE e.parent_id = ANY (parents) GROUP BY e.child_id) k;
    IF kids IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (kids) AND t.status = 'WAITING'
     ORDER BY t.id FOR NO KEY UPDATE;
    WITH released AS (
        UPDATE pgtasks.tasks c
           SET waiting_on = greatest(c.waiting_on - u.n, 0),
               status = CASE WHEN c.waiting_on - u.n <= 0 THEN 'PENDING'::pgtasks.status
                             ELSE 'WAITING'::pgtasks.status END
          FROM unnest(kids, ended) AS u(id, n)
         WHERE c.id = u.id AND c.status = 'WAITING'
        RETURNING c.queue, c.status, c.run_at
    )
    -- Honours 0008's off switch (pgtasks.wake_workers = off) like an insert does.
    SELECT count(pg_notify('pgtasks_wakeup', q.queue)) INTO n
      FROM (SELECT DISTINCT r.queue FROM released r
             WHERE r.status = 'PENDING' AND r.run_at <= now()
               AND current_setting('pgtasks.wake_workers', true) IS DISTINCT FROM 'off') q;
END $$;

ALTER FUNCTION pgtasks.release_children(parents bigint[]) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.report_progress(task_id bigint, attempt integer, current bigint, total bigint DEFAULT NULL::bigint, message text DEFAULT NULL::text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    IF current IS NULL OR current < 0 OR (total IS NOT NULL AND (total < 0 OR current > total)) THEN
        RAISE EXCEPTION 'pgtasks: progress % of % is out of bounds', current, total
            USING ERRCODE = 'PT110', HINT = 'Use 0 <= current <= total.';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_log_size(message, 'progress message');
    UPDATE pgtasks.tasks t
       SET progress_current = current, progress_total = total,
           progress_message = coalesce(message, t.progress_message)
     WHERE t.id = report_progress.task_id;
    PERFORM pgtasks.notify_watchers(task_id);
END $$;

ALTER FUNCTION pgtasks.report_progress(task_id bigint, attempt integer, current bigint, total bigint, message text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.rescue_expired(max_tasks integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    t pgtasks.tasks;
    n integer := 0;
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
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
    DELETE FROM pgtasks.worker_registry WHERE last_seen < now() - interval '10 minutes';
    -- Watch registrations of clients that went away without unwatching (killed mid-wait):
    -- they would only cost needless notifications, but they should not pile up.
    DELETE FROM pgtasks.task_waiters w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = w.pid);
    RETURN n;
END $$;

ALTER FUNCTION pgtasks.rescue_expired(max_tasks integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.rescue_one(t pgtasks.tasks) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    why text;
BEGIN
    BEGIN
        PERFORM pgtasks.record_failure(t, pgtasks.expiry_reason(t), NULL, true, NULL);
        RETURN 1;
    EXCEPTION WHEN OTHERS THEN
        why := SQLERRM;
    END;
    BEGIN
        PERFORM pgtasks.record_failure(
            t, pg_catalog.format('rescue failed (%s) after: %s', why, pgtasks.expiry_reason(t)),
            NULL, false, NULL);
        RAISE WARNING 'pgtasks: task % could not be rescued (%); marked FAILED', t.id, why;
        RETURN 1;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgtasks: task % could not be rescued nor failed (%); skipped', t.id, SQLERRM;
        RETURN 0;
    END;
END $$;

ALTER FUNCTION pgtasks.rescue_one(t pgtasks.tasks) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.resume_queue(queue text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    UPDATE pgtasks.queue_settings s SET paused = false, updated_at = now()
     WHERE s.queue = resume_queue.queue;
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    PERFORM pg_notify('pgtasks_wakeup', queue);
END $$;

ALTER FUNCTION pgtasks.resume_queue(queue text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.resume_schedule(name text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    s pgtasks.schedule_defs;
BEGIN
    s := pgtasks.lock_schedule(name);
    IF s.paused THEN
        UPDATE pgtasks.schedule_defs d
           SET paused = false, revision = d.revision + 1, updated_at = now(),
               next_run_at = CASE WHEN d.every IS NOT NULL THEN pgtasks.every_tick_after(d.every, now()) END
         WHERE d.name = resume_schedule.name;
    END IF;
END $$;

ALTER FUNCTION pgtasks.resume_schedule(name text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamp with time zone DEFAULT now()) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
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
         WHERE o.unique_key = t.unique_key AND o.status IN ('PENDING', 'COMMIT', 'RUNNING')
           AND o.id <> t.id) THEN
        PERFORM pgtasks.raise_unique_held(t);
    END IF;
    BEGIN
        UPDATE pgtasks.tasks
           SET status = 'PENDING', retry_count = 0, finished_at = NULL, result = NULL,
               run_at = coalesce(retry_task.run_at, now())
         WHERE id = t.id;
    EXCEPTION WHEN unique_violation THEN
        PERFORM pgtasks.raise_unique_held(t);
    END;
END $$;

ALTER FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamp with time zone) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.revive_children(parents bigint[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    SET enable_nestloop TO 'on'
    AS $$
DECLARE
    frontier bigint[] := parents;
BEGIN
    -- The revivals below are updates too; record_updates must not walk them again.
    PERFORM set_config('pgtasks.reviving', 'on', true);
    -- A child that runs on parent failure counted the failed parent as ended; if it still
    -- waits on others, it now waits for the retried one too.
    UPDATE pgtasks.tasks c SET waiting_on = c.waiting_on + k.n
      FROM (SELECT e.child_id, count(*)::integer AS n FROM pgtasks.task_edges e
             WHERE e.parent_id = ANY (parents) GROUP BY e.child_id) k
     WHERE c.id = k.child_id AND c.status = 'WAITING';
    LOOP
        SELECT array_agg(DISTINCT c.id ORDER BY c.id) INTO frontier
          FROM pgtasks.task_edges e JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE e.parent_id = ANY (frontier) AND c.status = 'CANCELLED' AND c.cancelled_by IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pgtasks.task_edges e2 JOIN pgtasks.tasks p ON p.id = e2.parent_id
                            WHERE e2.child_id = c.id AND p.status IN ('FAILED', 'CANCELLED'));
        EXIT WHEN frontier IS NULL;
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (frontier) ORDER BY t.id FOR NO KEY UPDATE;
        WITH revived AS (
            UPDATE pgtasks.tasks c
               SET status = 'WAITING', finished_at = NULL, error = NULL, cancelled_by = NULL,
                   waiting_on = (SELECT count(*) FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
                                  WHERE e.child_id = c.id AND p.status <> 'DONE')
             WHERE c.id = ANY (frontier) AND c.status = 'CANCELLED'
            RETURNING c.id
        )
        SELECT array_agg(r.id) INTO frontier FROM revived r;
        EXIT WHEN frontier IS NULL;
    END LOOP;
    PERFORM set_config('pgtasks.reviving', '', true);
END $$;

ALTER FUNCTION pgtasks.revive_children(parents bigint[]) OWNER TO pgtasks_owner;

CREATE PROCEDURE pgtasks.secure_objects()
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    o record;
BEGIN
    EXECUTE 'ALTER SCHEMA pgtasks OWNER TO pgtasks_owner';
    -- Tables, views and sequences not tied to a column (identity sequences follow their table).
    FOR o IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
              WHERE c.relnamespace = 'pgtasks'::regnamespace
                AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.deptype IN ('a', 'i'))
                AND pg_get_userbyid(c.relowner) <> 'pgtasks_owner'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO pgtasks_owner',
                       CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, o.rel);
    END LOOP;
    FOR o IN SELECT t.oid::regtype AS typ FROM pg_type t
              WHERE t.typnamespace = 'pgtasks'::regnamespace AND t.typtype IN ('e', 'd', 'c')
                AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
                AND pg_get_userbyid(t.typowner) <> 'pgtasks_owner'
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO pgtasks_owner', o.typ);
    END LOOP;
    -- Every function runs as its owner with a search_path nobody else can write to. Only
    -- this procedure stays SECURITY INVOKER (see above).
    FOR o IN SELECT p.oid::regprocedure AS fn, p.prokind FROM pg_proc p
              WHERE p.pronamespace = 'pgtasks'::regnamespace AND p.proname <> 'secure_objects'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO pgtasks_owner',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
        EXECUTE format('ALTER %s %s SECURITY DEFINER SET search_path = pg_catalog, pgtasks, pg_temp',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
        EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
    END LOOP;
    -- A function that turns a planner method off (enable_sort, enable_nestloop ...) also
    -- turns JIT off (0014: why).
    FOR o IN SELECT p.oid::regprocedure AS fn, p.prokind FROM pg_proc p
              WHERE p.pronamespace = 'pgtasks'::regnamespace
                AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'enable\_%=off')
                AND NOT 'jit=off' = ANY (p.proconfig)
    LOOP
        EXECUTE format('ALTER %s %s SET jit = off',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
    END LOOP;
    EXECUTE 'REVOKE ALL ON PROCEDURE pgtasks.secure_objects() FROM PUBLIC';
    -- Functions a later migration creates as pgtasks_owner start without PUBLIC EXECUTE.
    EXECUTE 'ALTER DEFAULT PRIVILEGES FOR ROLE pgtasks_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC';
    EXECUTE 'REVOKE ALL ON SCHEMA pgtasks FROM PUBLIC';
    EXECUTE 'GRANT USAGE ON SCHEMA pgtasks TO pgtasks_submitter, pgtasks_worker, pgtasks_reader, pgtasks_admin';
    CALL pgtasks.grant_roles();
END $$;

ALTER PROCEDURE pgtasks.secure_objects() OWNER TO postgres;

CREATE FUNCTION pgtasks.submit_dependent(p pgtasks.tasks, params jsonb, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    parents bigint[];
    found_ids bigint[];
    unmet integer;
    dead record;
    policy text := coalesce(on_parent_failure, 'cancel');
    new_id bigint;
BEGIN
    IF policy NOT IN ('cancel', 'run') THEN
        RAISE EXCEPTION 'pgtasks: on_parent_failure must be cancel or run, got %', quote_literal(on_parent_failure)
            USING ERRCODE = 'PT505',
                  HINT = 'cancel (the default): a failed parent cancels this task; run: it runs anyway and '
                         'parent_results() says which parents failed.';
    END IF;
    IF depends_on IS NULL OR array_position(depends_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgtasks: depends_on must be an array of task ids without NULLs'
            USING ERRCODE = 'PT503', HINT = 'For example depends_on => ARRAY[41, 42]::bigint[].';
    END IF;
    parents := ARRAY(SELECT DISTINCT u FROM unnest(depends_on) u ORDER BY u);
    IF cardinality(parents) = 0 THEN
        new_id := (SELECT s.id FROM pgtasks.submit_one(p, params, NULL, NULL, concurrency_key, concurrency_limit) s);
        RETURN new_id;
    END IF;
    SELECT array_agg(l.id ORDER BY l.id), count(*) FILTER (WHERE l.status NOT IN ('DONE', 'FAILED', 'CANCELLED'))
      INTO found_ids, unmet
      FROM (SELECT t.id, t.status FROM pgtasks.tasks t WHERE t.id = ANY (parents)
             ORDER BY t.id FOR NO KEY UPDATE) l;
    IF found_ids IS DISTINCT FROM parents THEN
        RAISE EXCEPTION 'pgtasks: depends_on names task % which does not exist',
                (SELECT u FROM unnest(parents) u WHERE u <> ALL (coalesce(found_ids, '{}')) LIMIT 1)
            USING ERRCODE = 'PT503', HINT = 'Name tasks that exist; finished tasks are pruned after their retention.';
    END IF;
    IF policy = 'cancel' THEN
        SELECT t.id, t.status INTO dead FROM pgtasks.tasks t
         WHERE t.id = ANY (parents) AND t.status IN ('FAILED', 'CANCELLED') ORDER BY t.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgtasks: parent task % already ended %; this task could never run', dead.id, dead.status
                USING ERRCODE = 'PT507',
                      HINT = 'Retry the parent first, or submit with on_parent_failure => ''run''.';
        END IF;
    END IF;
    UPDATE pgtasks.tasks t SET has_dependents = true
     WHERE t.id = ANY (parents) AND t.has_dependents IS NULL;
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                               backoff_base, concurrency_key, concurrency_limit, status,
                               waiting_on, on_parent_failure)
    VALUES (p.task_type, submit_dependent.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base, submit_dependent.concurrency_key, submit_dependent.concurrency_limit,
            CASE WHEN unmet > 0 THEN 'WAITING'::pgtasks.status ELSE 'PENDING'::pgtasks.status END,
            unmet, policy)
    RETURNING id INTO new_id;
    INSERT INTO pgtasks.task_edges (parent_id, child_id) SELECT u, new_id FROM unnest(parents) u;
    RETURN new_id;
END $$;

ALTER FUNCTION pgtasks.submit_dependent(p pgtasks.tasks, params jsonb, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.submit_one(p pgtasks.tasks, params jsonb, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, OUT id bigint, OUT created boolean) RETURNS record
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
#variable_conflict use_column
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
        INSERT INTO pgtasks.unique_windows AS w (unique_key, task_id, reserved_until)
        VALUES (submit_one.unique_key, NULL, now() + submit_one.unique_for)
        ON CONFLICT ON CONSTRAINT unique_windows_pkey DO UPDATE
           SET task_id = NULL, reserved_until = excluded.reserved_until
         WHERE w.reserved_until <= now()
        RETURNING true INTO took;
        IF took IS NULL THEN
            SELECT w.task_id INTO submit_one.id FROM pgtasks.unique_windows w
             WHERE w.unique_key = submit_one.unique_key;
            created := false;
            RETURN;
        END IF;
    END IF;

    LOOP
        INSERT INTO pgtasks.tasks AS t (task_type, params, queue, priority, run_at, max_retries, timeout,
                                        backoff_base, unique_key, concurrency_key, concurrency_limit)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.unique_key, submit_one.concurrency_key, submit_one.concurrency_limit)
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING')
        DO NOTHING
        RETURNING t.id INTO submit_one.id;
        IF FOUND THEN
            created := true;
            EXIT;
        END IF;
        SELECT t.id INTO submit_one.id FROM pgtasks.tasks t
         WHERE t.unique_key = submit_one.unique_key AND t.status IN ('PENDING', 'COMMIT', 'RUNNING');
        IF FOUND THEN
            created := false;
            EXIT;
        END IF;
    END LOOP;

    IF unique_for IS NOT NULL THEN
        UPDATE pgtasks.unique_windows w SET task_id = submit_one.id WHERE w.unique_key = submit_one.unique_key;
    END IF;
END $$;

ALTER FUNCTION pgtasks.submit_one(p pgtasks.tasks, params jsonb, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, OUT id bigint, OUT created boolean) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.submit_or_get(task_type text, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_key text DEFAULT NULL::text, unique_for interval DEFAULT NULL::interval, concurrency_key text DEFAULT NULL::text, concurrency_limit integer DEFAULT NULL::integer) RETURNS TABLE(id bigint, created boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    p pgtasks.tasks;
BEGIN
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
    PERFORM pgtasks.check_params(params);
    PERFORM pgtasks.check_flow_args(unique_key, unique_for, concurrency_key, concurrency_limit);
    RETURN QUERY
    SELECT s.id, s.created
      FROM pgtasks.submit_one(p, params, unique_key, unique_for, concurrency_key,
                              CASE WHEN concurrency_key IS NOT NULL THEN coalesce(concurrency_limit, 1) END) s;
END $$;

ALTER FUNCTION pgtasks.submit_or_get(task_type text, params jsonb, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.submit_policy(task_type text, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval) RETURNS pgtasks.tasks
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    r pgtasks.tasks;
BEGIN
    SELECT submit_policy.task_type,
           coalesce(submit_policy.queue, tt.queue, s.default_queue),
           coalesce(submit_policy.priority, tt.priority, s.default_priority),
           coalesce(submit_policy.run_at, now()),
           coalesce(submit_policy.max_retries, tt.max_retries, s.default_max_retries),
           coalesce(submit_policy.timeout, tt.timeout, s.default_timeout),
           coalesce(submit_policy.backoff_base, tt.backoff_base, s.default_backoff_base)
      INTO r.task_type, r.queue, r.priority, r.run_at, r.max_retries, r.timeout, r.backoff_base
      FROM pgtasks.settings s
      LEFT JOIN pgtasks.task_types tt ON tt.task_type = submit_policy.task_type;

    PERFORM pgtasks.check_policy(r.task_type, r.queue, r.max_retries, r.timeout, r.backoff_base);
    -- Infinite or far-off times crash clients that decode them (issue 9, defect 4: an idle
    -- Python worker died on 'infinity', `pgtasks stats` on '-infinity').
    IF NOT isfinite(r.run_at)
       OR r.run_at NOT BETWEEN now() - interval '100 years' AND now() + interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', r.run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
    RETURN r;
END $$;

ALTER FUNCTION pgtasks.submit_policy(task_type text, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.submit_task(task_type text, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_key text DEFAULT NULL::text, unique_for interval DEFAULT NULL::interval, concurrency_key text DEFAULT NULL::text, concurrency_limit integer DEFAULT NULL::integer, depends_on bigint[] DEFAULT NULL::bigint[], on_parent_failure text DEFAULT NULL::text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
BEGIN
    IF depends_on IS NOT NULL OR on_parent_failure IS NOT NULL THEN
        IF unique_key IS NOT NULL OR unique_for IS NOT NULL THEN
            RAISE EXCEPTION 'pgtasks: depends_on cannot be combined with unique_key'
                USING ERRCODE = 'PT506',
                      HINT = 'A unique key may return an existing task, which has parents of its own.';
        END IF;
        p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
        PERFORM pgtasks.check_params(params);
        PERFORM pgtasks.check_flow_args(NULL, NULL, concurrency_key, concurrency_limit);
        RETURN pgtasks.submit_dependent(
            p, params, concurrency_key,
            CASE WHEN concurrency_key IS NOT NULL THEN coalesce(concurrency_limit, 1) END,
            coalesce(depends_on, '{}'), on_parent_failure);
    END IF;
    IF unique_key IS NOT NULL OR unique_for IS NOT NULL OR concurrency_key IS NOT NULL
       OR concurrency_limit IS NOT NULL THEN
        SELECT s.id INTO new_id
          FROM pgtasks.submit_or_get(task_type, params, queue, priority, run_at, max_retries, timeout,
                                     backoff_base, unique_key, unique_for, concurrency_key,
                                     concurrency_limit) s;
        RETURN new_id;
    END IF;
    -- Without flow control: 0003's submit, no extra calls (enqueue_single is measured).
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
    PERFORM pgtasks.check_params(params);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout, backoff_base)
    VALUES (p.task_type, submit_task.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

ALTER FUNCTION pgtasks.submit_task(task_type text, params jsonb, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.submit_tasks(task_type text, params_list jsonb[], queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_keys text[] DEFAULT NULL::text[], unique_for interval DEFAULT NULL::interval, concurrency_keys text[] DEFAULT NULL::text[], concurrency_limit integer DEFAULT NULL::integer) RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    p pgtasks.tasks;
    n integer;
    i integer;
BEGIN
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
    PERFORM pgtasks.check_params_list(params_list);
    n := coalesce(cardinality(params_list), 0);
    IF (unique_keys IS NOT NULL AND cardinality(unique_keys) <> n)
       OR (concurrency_keys IS NOT NULL AND cardinality(concurrency_keys) <> n) THEN
        RAISE EXCEPTION 'pgtasks: submit_tasks needs one unique key and one concurrency key per item '
                        '(% items, % unique_keys, % concurrency_keys)',
                n, cardinality(unique_keys), cardinality(concurrency_keys)
            USING ERRCODE = 'PT305', HINT = 'Pass arrays as long as params_list, with NULL for items without a key.';
    END IF;
    -- Per item only when keys are given: a plain batch of 1,000 pays no function calls here
    -- (measured: the loop cut enqueue_batch from ~53,000 to ~18,000 tasks/s).
    IF unique_keys IS NOT NULL OR concurrency_keys IS NOT NULL THEN
        FOR i IN 1 .. n LOOP
            PERFORM pgtasks.check_flow_args(unique_keys[i], CASE WHEN unique_keys[i] IS NOT NULL THEN unique_for END,
                                            concurrency_keys[i],
                                            CASE WHEN concurrency_keys[i] IS NOT NULL THEN concurrency_limit END, i);
        END LOOP;
    END IF;
    IF concurrency_limit IS NOT NULL AND concurrency_keys IS NULL THEN
        PERFORM pgtasks.check_flow_args(NULL, NULL, NULL, concurrency_limit);
    END IF;
    IF unique_for IS NOT NULL AND unique_keys IS NULL THEN
        PERFORM pgtasks.check_flow_args(NULL, unique_for, NULL, NULL);
    END IF;

    IF unique_keys IS NULL THEN
        RETURN QUERY
        INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                   backoff_base, concurrency_key, concurrency_limit)
        SELECT p.task_type, u.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout, p.backoff_base,
               submit_tasks.concurrency_keys[u.ord],
               CASE WHEN submit_tasks.concurrency_keys[u.ord] IS NOT NULL
                    THEN coalesce(submit_tasks.concurrency_limit, 1) END
          FROM unnest(params_list) WITH ORDINALITY AS u(params, ord)
         ORDER BY u.ord
        RETURNING id;
        RETURN;
    END IF;
    -- Keyed items one by one (each may meet an existing task, or an earlier item's key).
    FOR i IN 1 .. n LOOP
        RETURN QUERY
        SELECT s.id FROM pgtasks.submit_one(
            p, params_list[i], unique_keys[i], CASE WHEN unique_keys[i] IS NOT NULL THEN unique_for END,
            concurrency_keys[i],
            CASE WHEN concurrency_keys[i] IS NOT NULL THEN coalesce(concurrency_limit, 1) END) s;
    END LOOP;
END $$;

ALTER FUNCTION pgtasks.submit_tasks(task_type text, params_list jsonb[], queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_keys text[], unique_for interval, concurrency_keys text[], concurrency_limit integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.submit_workflow(spec jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    nodes jsonb;
    n integer;
    names text[];
    bad record;
    e_par integer[];
    e_kid integer[];
    m integer;
    indeg integer[];
    first_kid integer[];
    kid_count integer[];
    n_parents integer[];
    kid_list integer[];
    fill integer[];
    queue_ integer[];
    head integer := 1;
    tail integer := 0;
    u integer;
    v integer;
    i integer;
    wf_id bigint;
    ids bigint[];
    out_nodes jsonb;
BEGIN
    IF spec IS NULL OR jsonb_typeof(spec) <> 'object' THEN
        RAISE EXCEPTION 'pgtasks: a workflow spec is a JSON object with a "nodes" list, got %',
                coalesce(jsonb_typeof(spec), 'NULL')
            USING ERRCODE = 'PT501', HINT = 'E.g. {"nodes": [{"name": "a", "type": "extract"}, '
                                            '{"name": "b", "type": "load", "after": ["a"]}]}.';
    END IF;
    IF spec ? 'name' AND jsonb_typeof(spec->'name') <> 'null'
       AND (jsonb_typeof(spec->'name') <> 'string' OR pgtasks.is_blank(spec->>'name')
            OR octet_length(spec->>'name') > 255) THEN
        RAISE EXCEPTION 'pgtasks: a workflow name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT501', HINT = 'Leave "name" out or name what the workflow does, e.g. "nightly-etl".';
    END IF;
    nodes := spec->'nodes';
    IF jsonb_typeof(nodes) = 'object' THEN
        nodes := (SELECT jsonb_agg(CASE WHEN jsonb_typeof(x.v) = 'object'
                                        THEN x.v || jsonb_build_object('name', x.k) ELSE x.v END
                                   ORDER BY x.k)
                    FROM jsonb_each(nodes) AS x(k, v));
    END IF;
    IF nodes IS NULL OR jsonb_typeof(nodes) <> 'array' OR jsonb_array_length(nodes) = 0 THEN
        RAISE EXCEPTION 'pgtasks: a workflow needs at least one node (spec->''nodes'' is %)',
                coalesce(jsonb_typeof(nodes), 'missing')
            USING ERRCODE = 'PT501', HINT = 'Pass "nodes": [{"name": ..., "type": ..., "after": [...]}, ...].';
    END IF;
    n := jsonb_array_length(nodes);

    -- Node shape: an object, a unique non-blank name, a type, known keys with JSON types
    -- that fit. The first bad node is named.
    SELECT x.ord, x.v INTO bad
      FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
     WHERE jsonb_typeof(x.v) <> 'object'
        OR jsonb_typeof(x.v->'name') IS DISTINCT FROM 'string'
        OR pgtasks.is_blank(x.v->>'name') OR octet_length(x.v->>'name') > 255
     ORDER BY x.ord LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node % of the workflow has no valid name (a non-blank string of at most 255 bytes)', bad.ord
            USING ERRCODE = 'PT502', HINT = 'Every node is an object with "name" and "type".';
    END IF;
    SELECT x.v->>'name' AS name INTO bad
      FROM jsonb_array_elements(nodes) AS x(v) GROUP BY x.v->>'name' HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node name % appears twice in the workflow', quote_literal(bad.name)
            USING ERRCODE = 'PT502', HINT = 'Node names are unique within a workflow.';
    END IF;
    SELECT x.v->>'name' AS name,
           CASE WHEN k.key NOT IN ('name', 'type', 'params', 'after', 'queue', 'priority', 'run_at',
                                   'max_retries', 'timeout', 'backoff_base', 'concurrency_key',
                                   'concurrency_limit', 'on_parent_failure')
                THEN pg_catalog.format('has an unknown key %s', quote_literal(k.key))
                ELSE pg_catalog.format('has %s of JSON type %s', k.key, jsonb_typeof(k.value)) END AS what
      INTO bad
      FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord), jsonb_each(x.v) AS k(key, value)
     WHERE jsonb_typeof(k.value) <> 'null' AND NOT CASE k.key
            WHEN 'name' THEN true
            WHEN 'type' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'params' THEN jsonb_typeof(k.value) = 'object'
            WHEN 'after' THEN jsonb_typeof(k.value) = 'array'
                         AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(k.value) a WHERE jsonb_typeof(a) <> 'string')
            WHEN 'queue' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'priority' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'run_at' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'max_retries' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'timeout' THEN jsonb_typeof(k.value) IN ('number', 'string')
            WHEN 'backoff_base' THEN jsonb_typeof(k.value) IN ('number', 'string')
            WHEN 'concurrency_key' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'concurrency_limit' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'on_parent_failure' THEN k.value #>> '{}' IN ('cancel', 'run')
            ELSE false END
     ORDER BY x.ord LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node % %', quote_literal(bad.name), bad.what
            USING ERRCODE = 'PT506',
                  HINT = 'Node keys: type (string), params (object), after (list of node names), queue, priority, '
                         'run_at, max_retries, timeout, backoff_base, concurrency_key, concurrency_limit, '
                         'on_parent_failure (cancel or run).';
    END IF;

    names := ARRAY(SELECT x.v->>'name' FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord) ORDER BY x.ord);

    -- Edges by node position; an unknown name is an error, a repeated one counts once.
    SELECT x.v->>'name' AS name, a.parent INTO bad
      FROM jsonb_array_elements(nodes) AS x(v), jsonb_array_elements_text(coalesce(x.v->'after', '[]')) AS a(parent)
     WHERE a.parent <> ALL (names) OR a.parent = x.v->>'name'
     LIMIT 1;
    IF FOUND THEN
        IF bad.parent = bad.name THEN
            RAISE EXCEPTION 'pgtasks: node % is after itself: a cycle', quote_literal(bad.name)
                USING ERRCODE = 'PT504', HINT = 'A workflow is a graph without cycles; remove the node from its own "after".';
        END IF;
        RAISE EXCEPTION 'pgtasks: node % is after %, which is not a node of this workflow',
                quote_literal(bad.name), quote_literal(bad.parent)
            USING ERRCODE = 'PT503', HINT = '"after" lists names of other nodes of the same spec.';
    END IF;
    SELECT coalesce(array_agg(pp.ord::integer ORDER BY pp.ord, x.ord), '{}'),
           coalesce(array_agg(x.ord::integer ORDER BY pp.ord, x.ord), '{}')
      INTO e_par, e_kid
      FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
     CROSS JOIN LATERAL (SELECT DISTINCT a.parent FROM jsonb_array_elements_text(coalesce(x.v->'after', '[]')) AS a(parent)) a
      JOIN unnest(names) WITH ORDINALITY AS pp(name, ord) ON pp.name = a.parent;
    m := cardinality(e_par);

    -- Kahn's algorithm on arrays (assignment to an element of a PL/pgSQL array is O(1)):
    -- O(nodes + edges), ~20 ms for a chord of 10,000.
    indeg := array_fill(0, ARRAY[n]);
    kid_count := array_fill(0, ARRAY[n]);
    FOR i IN 1 .. m LOOP
        indeg[e_kid[i]] := indeg[e_kid[i]] + 1;
        kid_count[e_par[i]] := kid_count[e_par[i]] + 1;
    END LOOP;
    n_parents := indeg;
    first_kid := array_fill(1, ARRAY[n]);
    FOR i IN 2 .. n LOOP
        first_kid[i] := first_kid[i - 1] + kid_count[i - 1];
    END LOOP;
    kid_list := e_kid;  -- sorted by parent: node u's children are kid_list[first_kid[u] ..]
    queue_ := array_fill(0, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        IF indeg[i] = 0 THEN
            tail := tail + 1;
            queue_[tail] := i;
        END IF;
    END LOOP;
    WHILE head <= tail LOOP
        u := queue_[head];
        head := head + 1;
        FOR i IN first_kid[u] .. first_kid[u] + kid_count[u] - 1 LOOP
            v := kid_list[i];
            indeg[v] := indeg[v] - 1;
            IF indeg[v] = 0 THEN
                tail := tail + 1;
                queue_[tail] := v;
            END IF;
        END LOOP;
    END LOOP;
    IF tail < n THEN
        RAISE EXCEPTION 'pgtasks: the workflow has a cycle through %',
                left((SELECT string_agg(quote_literal(names[i2]), ', ' ORDER BY i2) FROM generate_series(1, n) i2
                       WHERE indeg[i2] > 0), 300)
            USING ERRCODE = 'PT504', HINT = 'A workflow is a graph without cycles: check the "after" lists of these nodes.';
    END IF;

    INSERT INTO pgtasks.workflow_runs (name, nodes) VALUES (nullif(spec->>'name', ''), n)
    RETURNING id INTO wf_id;

    -- Values cast here; a text that is no interval, time or integer is PT506, not 22xxx.
    BEGIN
        -- Concurrency keys get submit_task's checks (PT304), once per distinct pair.
        PERFORM pgtasks.check_flow_args(NULL, NULL, f.k, f.l)
           FROM (SELECT DISTINCT x.v->>'concurrency_key' AS k, (x.v->>'concurrency_limit')::integer AS l
                   FROM jsonb_array_elements(nodes) AS x(v)
                  WHERE x.v->>'concurrency_key' IS NOT NULL OR x.v->>'concurrency_limit' IS NOT NULL) f;
        WITH parsed AS (
            SELECT x.ord::integer AS ord, x.v->>'name' AS name, x.v->>'type' AS task_type,
                   coalesce(x.v->'params', '{}') AS params,
                   x.v->>'queue' AS queue, (x.v->>'priority')::integer AS priority,
                   (x.v->>'run_at')::timestamptz AS run_at,
                   (x.v->>'max_retries')::integer AS max_retries,
                   CASE jsonb_typeof(x.v->'timeout') WHEN 'number' THEN make_interval(secs => (x.v->>'timeout')::float8)
                        WHEN 'string' THEN (x.v->>'timeout')::interval END AS timeout,
                   CASE jsonb_typeof(x.v->'backoff_base') WHEN 'number' THEN make_interval(secs => (x.v->>'backoff_base')::float8)
                        WHEN 'string' THEN (x.v->>'backoff_base')::interval END AS backoff_base,
                   x.v->>'concurrency_key' AS concurrency_key,
                   (x.v->>'concurrency_limit')::integer AS concurrency_limit,
                   coalesce(x.v->>'on_parent_failure', 'cancel') AS on_parent_failure
              FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
        ), keyed AS (
            SELECT p.*, jsonb_build_array(p.task_type, p.queue, p.priority, p.run_at, p.max_retries,
                                          p.timeout, p.backoff_base) AS policy_key
              FROM parsed p
        ), policy AS MATERIALIZED (
            SELECT g.policy_key,
                   pgtasks.submit_policy(g.task_type, g.queue, g.priority, g.run_at, g.max_retries,
                                         g.timeout, g.backoff_base) AS p
              FROM (SELECT DISTINCT ON (k.policy_key) k.* FROM keyed k ORDER BY k.policy_key) g
        ), ins AS (
            INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                       backoff_base, concurrency_key, concurrency_limit, status,
                                       workflow_id, workflow_node, waiting_on, has_dependents,
                                       on_parent_failure)
            SELECT (pol.p).task_type, k.params, (pol.p).queue, (pol.p).priority, (pol.p).run_at,
                   (pol.p).max_retries, (pol.p).timeout, (pol.p).backoff_base,
                   k.concurrency_key,
                   CASE WHEN k.concurrency_key IS NOT NULL THEN coalesce(k.concurrency_limit, 1) END,
                   CASE WHEN d.parents > 0 THEN 'WAITING'::pgtasks.status ELSE 'PENDING'::pgtasks.status END,
                   wf_id, k.name,
                   CASE WHEN d.parents > 0 THEN d.parents END,
                   CASE WHEN d.kids > 0 THEN true END,
                   CASE WHEN d.parents > 0 THEN k.on_parent_failure END
              FROM unnest(queue_) WITH ORDINALITY AS o(node, pos)
              JOIN keyed k ON k.ord = o.node
              JOIN policy pol ON pol.policy_key = k.policy_key
             CROSS JOIN LATERAL (SELECT n_parents[o.node] AS parents, kid_count[o.node] AS kids) d
             ORDER BY o.pos
            RETURNING id, workflow_node
        )
        SELECT array_agg(ins.id ORDER BY nm.ord), jsonb_object_agg(ins.workflow_node, ins.id)
          INTO ids, out_nodes
          FROM ins JOIN unnest(names) WITH ORDINALITY AS nm(name, ord) ON nm.name = ins.workflow_node;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'pgtasks: a workflow node has a value that does not fit: %', SQLERRM
            USING ERRCODE = 'PT506',
                  HINT = 'priority, max_retries and concurrency_limit are integers; run_at a timestamp; '
                         'timeout and backoff_base seconds or an interval such as ''5 minutes''.';
    END;
    PERFORM pgtasks.check_params_list(ARRAY(SELECT coalesce(x.v->'params', '{}')
                                              FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
                                             ORDER BY x.ord));
    INSERT INTO pgtasks.task_edges (parent_id, child_id)
    SELECT ids[e.p], ids[e.k] FROM unnest(e_par, e_kid) AS e(p, k);
    RETURN jsonb_build_object('workflow_id', wf_id, 'nodes', out_nodes);
END $$;

ALTER FUNCTION pgtasks.submit_workflow(spec jsonb) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.task_steps_of(task_id bigint, attempt integer) RETURNS TABLE(name text, result jsonb, db_now timestamp with time zone)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    RETURN QUERY
    SELECT s.name, s.result, now() FROM pgtasks.task_steps s
     WHERE s.task_id = task_steps_of.task_id
     ORDER BY s.at, s.name;
END $$;

ALTER FUNCTION pgtasks.task_steps_of(task_id bigint, attempt integer) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT CASE
        WHEN from_status = 'PENDING' AND to_status = 'RUNNING' THEN 'claimed by a worker'
        WHEN from_status = 'COMMIT'  AND to_status = 'RUNNING' THEN 'claimed again to continue from its checkpoints'
        WHEN from_status = 'RUNNING' AND to_status = 'COMMIT'
            THEN 'checkpoint and yield, retryable error, lease expired, or shutdown hand-back'
        WHEN from_status = 'RUNNING' AND to_status = 'DONE' THEN 'finished with a result'
        WHEN from_status = 'RUNNING' AND to_status = 'FAILED'
            THEN 'final error: retries used up or not retryable'
        WHEN from_status = 'PENDING' AND to_status = 'CANCELLED' THEN 'cancelled before it started'
        WHEN from_status = 'COMMIT'  AND to_status = 'CANCELLED' THEN 'cancelled while waiting to continue'
        WHEN from_status = 'RUNNING' AND to_status = 'CANCELLED'
            THEN 'cancelled while running; the worker is told and its writes are fenced off'
        WHEN from_status IN ('FAILED', 'CANCELLED') AND to_status = 'PENDING' THEN 'manual retry'
        WHEN from_status = 'WAITING' AND to_status = 'PENDING' THEN 'its last unfinished parent ended'
        WHEN from_status = 'WAITING' AND to_status = 'CANCELLED'
            THEN 'cancelled while waiting on its parents, or a parent failed or was cancelled'
        WHEN from_status IN ('FAILED', 'CANCELLED') AND to_status = 'WAITING'
            THEN 'retried (or a retried parent revived it) while parents are unfinished'
    END
$$;

ALTER FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.trigger_schedule(name text) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    s      pgtasks.schedule_defs;
    new_id bigint;
BEGIN
    s := pgtasks.lock_schedule(name);
    new_id := pgtasks.enqueue_tick(s, now());
    UPDATE pgtasks.schedule_defs d
       SET last_task_id = coalesce(new_id, d.last_task_id), last_run_at = now(), revision = d.revision + 1
     WHERE d.name = trigger_schedule.name;
    RETURN new_id;
END $$;

ALTER FUNCTION pgtasks.trigger_schedule(name text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.unregister_worker(worker_id text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    DELETE FROM pgtasks.worker_registry w WHERE w.worker_id = unregister_worker.worker_id;
$$;

ALTER FUNCTION pgtasks.unregister_worker(worker_id text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.unwatch_task(task_id bigint) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    DELETE FROM pgtasks.task_waiters w
     WHERE w.task_id = unwatch_task.task_id AND w.pid = pg_backend_pid();
$$;

ALTER FUNCTION pgtasks.unwatch_task(task_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.upsert_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval, origin text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    norm   text;
    first  timestamptz;
    n      integer;
BEGIN
    PERFORM pgtasks.check_schedule_name(name);
    norm := pgtasks.check_schedule(cron, every, timezone, overlap, catch_up);
    PERFORM pgtasks.check_policy(task_type, queue);
    PERFORM pgtasks.check_params(coalesce(params, '{}'));
    first := CASE WHEN every IS NOT NULL THEN pgtasks.every_tick_after(every, now()) END;
    INSERT INTO pgtasks.schedule_defs AS s
           (name, task_type, cron, every, params, queue, priority, timezone, overlap, catch_up,
            origin, next_run_at)
    VALUES (upsert_schedule.name, upsert_schedule.task_type, norm, upsert_schedule.every,
            coalesce(upsert_schedule.params, '{}'), upsert_schedule.queue, upsert_schedule.priority,
            upsert_schedule.timezone, upsert_schedule.overlap, upsert_schedule.catch_up,
            upsert_schedule.origin, first)
    ON CONFLICT ON CONSTRAINT schedule_defs_pkey DO UPDATE
       SET task_type = EXCLUDED.task_type, cron = EXCLUDED.cron, every = EXCLUDED.every,
           params = EXCLUDED.params, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
           timezone = EXCLUDED.timezone, overlap = EXCLUDED.overlap, catch_up = EXCLUDED.catch_up,
           origin = CASE WHEN EXCLUDED.origin = 'sql' THEN 'sql' ELSE s.origin END,
           next_run_at = CASE WHEN (s.cron, s.every, s.timezone) IS NOT DISTINCT FROM
                                   (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
                              THEN s.next_run_at ELSE EXCLUDED.next_run_at END,
           revision = s.revision + 1, updated_at = now()
     WHERE EXCLUDED.origin = 'sql' OR s.origin = 'code';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n = 1;
END $$;

ALTER FUNCTION pgtasks.upsert_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval, origin text) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.watch_task(task_id bigint) RETURNS pgtasks.status
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
DECLARE
    s pgtasks.status;
BEGIN
    SELECT status INTO s FROM pgtasks.tasks WHERE id = watch_task.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id USING ERRCODE = 'PT003';
    END IF;
    INSERT INTO pgtasks.task_waiters (task_id) VALUES (watch_task.task_id)
    ON CONFLICT ON CONSTRAINT task_waiters_pkey DO UPDATE SET since = now();
    RETURN s;
END $$;

ALTER FUNCTION pgtasks.watch_task(task_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.workflow_graph(workflow_id bigint) RETURNS TABLE(task_id bigint, node text, task_type text, status pgtasks.status, progress_current bigint, progress_total bigint, parent_ids bigint[])
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
    SELECT t.id, t.workflow_node, t.task_type, t.status, t.progress_current, t.progress_total,
           ARRAY(SELECT e.parent_id FROM pgtasks.task_edges e WHERE e.child_id = t.id ORDER BY e.parent_id)
      FROM pgtasks.tasks t
     WHERE t.workflow_id = workflow_graph.workflow_id
     ORDER BY t.id
$$;

ALTER FUNCTION pgtasks.workflow_graph(workflow_id bigint) OWNER TO pgtasks_owner;

CREATE FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamp with time zone DEFAULT now()) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
    AS $$
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    UPDATE pgtasks.tasks t
       SET status = 'COMMIT', run_at = coalesce(yield_task.run_at, now()),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE t.id = yield_task.task_id;
    IF yield_task.run_at IS NULL OR yield_task.run_at <= now() THEN
        PERFORM pg_notify('pgtasks_wakeup', (SELECT queue FROM pgtasks.tasks WHERE id = task_id));
    END IF;
END $$;

ALTER FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamp with time zone) OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_errors (
    task_id bigint NOT NULL,
    attempt integer NOT NULL,
    error text NOT NULL,
    traceback text,
    at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.task_errors OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.failed_tasks AS
 SELECT id,
    task_type,
    queue,
    attempt,
    error,
    finished_at,
    ( SELECT count(*) AS count
           FROM pgtasks.task_errors e
          WHERE (e.task_id = t.id)) AS error_count,
    ( SELECT e.traceback
           FROM pgtasks.task_errors e
          WHERE (e.task_id = t.id)
          ORDER BY e.attempt DESC
         LIMIT 1) AS last_traceback
   FROM pgtasks.tasks t
  WHERE (status = 'FAILED'::pgtasks.status);

ALTER VIEW pgtasks.failed_tasks OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.queue_stats AS
 SELECT queue,
    count(*) FILTER (WHERE (status = 'PENDING'::pgtasks.status)) AS pending,
    count(*) FILTER (WHERE (status = 'COMMIT'::pgtasks.status)) AS waiting,
    count(*) FILTER (WHERE (status = 'RUNNING'::pgtasks.status)) AS running,
    count(*) FILTER (WHERE (status = 'DONE'::pgtasks.status)) AS done,
    count(*) FILTER (WHERE (status = 'FAILED'::pgtasks.status)) AS failed,
    count(*) FILTER (WHERE (status = 'CANCELLED'::pgtasks.status)) AS cancelled,
    count(*) FILTER (WHERE ((status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])) AND (run_at <= now()))) AS ready,
    (now() - min(run_at) FILTER (WHERE ((status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])) AND (run_at <= now())))) AS oldest_ready_age,
    count(*) FILTER (WHERE ((status = 'DONE'::pgtasks.status) AND (finished_at > (now() - '00:01:00'::interval)))) AS done_last_minute,
    count(*) FILTER (WHERE (status = 'WAITING'::pgtasks.status)) AS waiting_on_parents
   FROM pgtasks.tasks t
  GROUP BY queue;

ALTER VIEW pgtasks.queue_stats OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.worker_registry (
    worker_id text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    queues text[],
    concurrency integer NOT NULL,
    lease interval DEFAULT (pgtasks.current_settings()).default_lease NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.worker_registry OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.workers AS
 SELECT worker_id,
    host,
    pid,
    queues,
    concurrency,
    started_at,
    last_seen,
    ((last_seen + lease) > now()) AS alive,
    ( SELECT count(*) AS count
           FROM pgtasks.tasks t
          WHERE ((t.status = 'RUNNING'::pgtasks.status) AND (t.worker_id = w.worker_id))) AS running
   FROM pgtasks.worker_registry w;

ALTER VIEW pgtasks.workers OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.metrics AS
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
    runtime_bounds
   FROM knobs k;

ALTER VIEW pgtasks.metrics OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.migrations OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.queue_settings (
    queue text NOT NULL,
    max_running integer,
    rate_limit integer,
    rate_period interval DEFAULT '00:00:01'::interval NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT queue_settings_max_running_check CHECK (((max_running IS NULL) OR (max_running >= 1))),
    CONSTRAINT queue_settings_rate_limit_check CHECK (((rate_limit IS NULL) OR (rate_limit >= 1))),
    CONSTRAINT queue_settings_rate_period_check CHECK ((rate_period > '00:00:00'::interval))
);

ALTER TABLE pgtasks.queue_settings OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.queue_starts (
    queue text NOT NULL,
    at timestamp with time zone NOT NULL
);

ALTER TABLE pgtasks.queue_starts OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.queues AS
 WITH waiting AS (
         SELECT t.queue,
            count(*) FILTER (WHERE (t.run_at <= now())) AS ready,
            count(*) FILTER (WHERE (t.run_at > now())) AS scheduled
           FROM pgtasks.tasks t
          WHERE (t.status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status]))
          GROUP BY t.queue
        ), running AS (
         SELECT t.queue,
            count(*) AS running
           FROM pgtasks.tasks t
          WHERE (t.lease_expires_at IS NOT NULL)
          GROUP BY t.queue
        ), on_parents AS (
         SELECT t.queue,
            count(*) AS waiting_on_parents
           FROM pgtasks.tasks t
          WHERE (t.status = 'WAITING'::pgtasks.status)
          GROUP BY t.queue
        ), active AS (
         SELECT COALESCE(w.queue, r.queue) AS queue,
            w.ready,
            w.scheduled,
            r.running
           FROM (waiting w
             FULL JOIN running r ON ((r.queue = w.queue)))
        ), live AS (
         SELECT COALESCE(a.queue, p.queue) AS queue,
            COALESCE(a.ready, (0)::bigint) AS ready,
            COALESCE(a.scheduled, (0)::bigint) AS scheduled,
            COALESCE(a.running, (0)::bigint) AS running,
            COALESCE(p.waiting_on_parents, (0)::bigint) AS waiting_on_parents
           FROM (active a
             FULL JOIN on_parents p ON ((p.queue = a.queue)))
        )
 SELECT COALESCE(s.queue, l.queue) AS queue,
    COALESCE(s.paused, false) AS paused,
    s.max_running,
    s.rate_limit,
        CASE
            WHEN (s.rate_limit IS NOT NULL) THEN s.rate_period
            ELSE NULL::interval
        END AS rate_period,
    COALESCE(l.ready, (0)::bigint) AS ready,
    COALESCE(l.scheduled, (0)::bigint) AS scheduled,
    COALESCE(l.running, (0)::bigint) AS running,
        CASE
            WHEN (s.rate_limit IS NOT NULL) THEN ( SELECT count(*) AS count
               FROM pgtasks.queue_starts q
              WHERE ((q.queue = s.queue) AND (q.at >= (now() - s.rate_period))))
            ELSE NULL::bigint
        END AS recent_starts,
    s.updated_at AS settings_updated_at,
    COALESCE(l.waiting_on_parents, (0)::bigint) AS waiting_on_parents
   FROM (pgtasks.queue_settings s
     FULL JOIN live l ON ((l.queue = s.queue)));

ALTER VIEW pgtasks.queues OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_types (
    task_type text NOT NULL,
    queue text,
    priority integer,
    max_retries integer,
    timeout interval,
    backoff_base interval,
    registered_by text,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT backoff_base_range CHECK (((backoff_base > '00:00:00'::interval) AND (backoff_base <= '1 day'::interval))),
    CONSTRAINT max_retries_range CHECK (((max_retries >= 0) AND (max_retries <= 1000))),
    CONSTRAINT queue_named CHECK (((queue IS NULL) OR ((NOT pgtasks.is_blank(queue)) AND (octet_length(queue) <= 255)))),
    CONSTRAINT task_type_named CHECK (((NOT pgtasks.is_blank(task_type)) AND (octet_length(task_type) <= 255))),
    CONSTRAINT timeout_range CHECK (((timeout > '00:00:00'::interval) AND (timeout <= '1 year'::interval)))
);

ALTER TABLE pgtasks.task_types OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.registered_types AS
 SELECT t.task_type,
    COALESCE(t.queue, s.default_queue) AS queue,
    COALESCE(t.priority, s.default_priority) AS priority,
    COALESCE(t.max_retries, s.default_max_retries) AS max_retries,
    COALESCE(t.timeout, s.default_timeout) AS timeout,
    COALESCE(t.backoff_base, s.default_backoff_base) AS backoff_base,
    t.registered_by,
    t.updated_at
   FROM (pgtasks.task_types t
     CROSS JOIN pgtasks.settings s);

ALTER VIEW pgtasks.registered_types OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.schedules AS
 SELECT d.name,
    d.task_type,
    d.cron,
    d.every,
    d.timezone,
    d.params,
    d.queue,
    d.priority,
    d.overlap,
    d.catch_up,
    d.paused,
    d.origin,
    d.next_run_at,
    d.last_tick,
    d.last_run_at,
    d.last_task_id,
    t.status AS last_status,
    d.skipped,
    d.skipped_overlap,
    d.fired_by,
    d.updated_at
   FROM (pgtasks.schedule_defs d
     LEFT JOIN pgtasks.tasks t ON ((t.id = d.last_task_id)));

ALTER VIEW pgtasks.schedules OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.task_attempt_errors AS
 SELECT task_id,
    attempt,
    error,
    traceback,
    at
   FROM pgtasks.task_errors e;

ALTER VIEW pgtasks.task_attempt_errors OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_edges (
    parent_id bigint NOT NULL,
    child_id bigint NOT NULL,
    CONSTRAINT edge_goes_forward CHECK ((parent_id < child_id))
);

ALTER TABLE pgtasks.task_edges OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_events (
    id bigint NOT NULL,
    task_id bigint NOT NULL,
    attempt integer NOT NULL,
    from_status pgtasks.status,
    to_status pgtasks.status NOT NULL,
    worker_id text,
    db_user text DEFAULT SESSION_USER NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.task_events OWNER TO pgtasks_owner;

ALTER TABLE pgtasks.task_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME pgtasks.task_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE VIEW pgtasks.task_history AS
 SELECT task_id,
    at,
    from_status,
    to_status,
    attempt,
    worker_id,
    db_user
   FROM pgtasks.task_events e;

ALTER VIEW pgtasks.task_history OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_logs (
    id bigint NOT NULL,
    task_id bigint NOT NULL,
    attempt integer NOT NULL,
    level text NOT NULL,
    message text NOT NULL,
    logger text,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL
);

ALTER TABLE pgtasks.task_logs OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.task_log_lines AS
 SELECT id,
    task_id,
    attempt,
    level,
    message,
    logger,
    at
   FROM pgtasks.task_logs l;

ALTER VIEW pgtasks.task_log_lines OWNER TO pgtasks_owner;

ALTER TABLE pgtasks.task_logs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME pgtasks.task_logs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE VIEW pgtasks.task_overview AS
 SELECT id,
    task_type,
    queue,
    status,
    priority,
    attempt,
    retry_count,
    max_retries,
        CASE
            WHEN (progress_total > 0) THEN round(((100.0 * (progress_current)::numeric) / (progress_total)::numeric), 1)
            ELSE NULL::numeric
        END AS percent,
    progress_current,
    progress_total,
    run_at,
    created_at,
    started_at,
    finished_at
   FROM pgtasks.tasks t;

ALTER VIEW pgtasks.task_overview OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.task_status AS
 SELECT id,
    task_type,
    queue,
    status,
    priority,
    attempt,
    ((retry_count || '/'::text) || max_retries) AS retries,
        CASE
            WHEN (progress_total > 0) THEN round(((100.0 * (progress_current)::numeric) / (progress_total)::numeric), 1)
            ELSE NULL::numeric
        END AS percent,
    progress_current,
    progress_total,
    progress_message,
    worker_id,
    run_at,
    created_at,
    started_at,
    finished_at,
    (COALESCE(finished_at, now()) - started_at) AS elapsed,
    result,
    error,
    params,
    schedule,
    schedule_tick,
    workflow_id,
    workflow_node
   FROM pgtasks.tasks t;

ALTER VIEW pgtasks.task_status OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_steps (
    task_id bigint NOT NULL,
    name text NOT NULL,
    result jsonb,
    attempt integer NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.task_steps OWNER TO pgtasks_owner;

CREATE VIEW pgtasks.task_step_names AS
 SELECT task_id,
    name,
    attempt,
    at,
    result
   FROM pgtasks.task_steps s;

ALTER VIEW pgtasks.task_step_names OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.task_waiters (
    task_id bigint NOT NULL,
    pid integer DEFAULT pg_backend_pid() NOT NULL,
    since timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.task_waiters OWNER TO pgtasks_owner;

ALTER TABLE pgtasks.tasks ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME pgtasks.tasks_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE VIEW pgtasks.transitions AS
 SELECT f.f AS from_status,
    t.t AS to_status,
    pgtasks.transition_reason(f.f, t.t) AS why
   FROM unnest(enum_range(NULL::pgtasks.status)) f(f),
    unnest(enum_range(NULL::pgtasks.status)) t(t)
  WHERE (pgtasks.transition_reason(f.f, t.t) IS NOT NULL);

ALTER VIEW pgtasks.transitions OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.unique_windows (
    unique_key text NOT NULL,
    task_id bigint,
    reserved_until timestamp with time zone NOT NULL
);

ALTER TABLE pgtasks.unique_windows OWNER TO pgtasks_owner;

CREATE TABLE pgtasks.workflow_runs (
    id bigint NOT NULL,
    name text,
    nodes integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE pgtasks.workflow_runs OWNER TO pgtasks_owner;

ALTER TABLE pgtasks.workflow_runs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME pgtasks.workflow_runs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE VIEW pgtasks.workflows AS
 SELECT w.id,
    w.name,
    w.created_at,
        CASE
            WHEN (((c.waiting + c.pending) + c.running) > 0) THEN 'running'::text
            WHEN c.sinks_done THEN 'done'::text
            WHEN (c.failed > 0) THEN 'failed'::text
            ELSE 'cancelled'::text
        END AS state,
    c.total,
    c.waiting,
    c.pending,
    c.running,
    c.done,
    c.failed,
    c.cancelled
   FROM (pgtasks.workflow_runs w
     CROSS JOIN LATERAL ( SELECT (count(*))::integer AS total,
            (count(*) FILTER (WHERE (t.status = 'WAITING'::pgtasks.status)))::integer AS waiting,
            (count(*) FILTER (WHERE (t.status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status]))))::integer AS pending,
            (count(*) FILTER (WHERE (t.status = 'RUNNING'::pgtasks.status)))::integer AS running,
            (count(*) FILTER (WHERE (t.status = 'DONE'::pgtasks.status)))::integer AS done,
            (count(*) FILTER (WHERE (t.status = 'FAILED'::pgtasks.status)))::integer AS failed,
            (count(*) FILTER (WHERE (t.status = 'CANCELLED'::pgtasks.status)))::integer AS cancelled,
            COALESCE(bool_and((t.status = 'DONE'::pgtasks.status)) FILTER (WHERE (t.has_dependents IS NULL)), true) AS sinks_done
           FROM pgtasks.tasks t
          WHERE (t.workflow_id = w.id)) c);

ALTER VIEW pgtasks.workflows OWNER TO pgtasks_owner;

ALTER TABLE ONLY pgtasks.migrations
    ADD CONSTRAINT migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY pgtasks.queue_settings
    ADD CONSTRAINT queue_settings_pkey PRIMARY KEY (queue);

ALTER TABLE ONLY pgtasks.schedule_defs
    ADD CONSTRAINT schedule_defs_pkey PRIMARY KEY (name);

ALTER TABLE ONLY pgtasks.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (id);

ALTER TABLE ONLY pgtasks.task_edges
    ADD CONSTRAINT task_edges_pkey PRIMARY KEY (parent_id, child_id);

ALTER TABLE ONLY pgtasks.task_errors
    ADD CONSTRAINT task_errors_pkey PRIMARY KEY (task_id, attempt);

ALTER TABLE ONLY pgtasks.task_events
    ADD CONSTRAINT task_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY pgtasks.task_logs
    ADD CONSTRAINT task_logs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY pgtasks.task_steps
    ADD CONSTRAINT task_steps_pkey PRIMARY KEY (task_id, name);

ALTER TABLE ONLY pgtasks.task_types
    ADD CONSTRAINT task_types_pkey PRIMARY KEY (task_type);

ALTER TABLE ONLY pgtasks.task_waiters
    ADD CONSTRAINT task_waiters_pkey PRIMARY KEY (task_id, pid);

ALTER TABLE ONLY pgtasks.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);

ALTER TABLE ONLY pgtasks.unique_windows
    ADD CONSTRAINT unique_windows_pkey PRIMARY KEY (unique_key);

ALTER TABLE ONLY pgtasks.worker_registry
    ADD CONSTRAINT worker_registry_pkey PRIMARY KEY (worker_id);

ALTER TABLE ONLY pgtasks.workflow_runs
    ADD CONSTRAINT workflow_runs_pkey PRIMARY KEY (id);

CREATE INDEX queue_starts_queue_at ON pgtasks.queue_starts USING btree (queue, at);

CREATE INDEX schedule_defs_due ON pgtasks.schedule_defs USING btree (next_run_at NULLS FIRST) WHERE (NOT paused);

CREATE INDEX task_edges_child ON pgtasks.task_edges USING btree (child_id, parent_id);

CREATE INDEX task_events_task ON pgtasks.task_events USING btree (task_id, id);

CREATE INDEX task_logs_task ON pgtasks.task_logs USING btree (task_id, id);

CREATE INDEX tasks_claimable ON pgtasks.tasks USING btree (priority DESC, run_at, id) WHERE (status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status]));

CREATE INDEX tasks_claimable_queue ON pgtasks.tasks USING btree (queue, priority DESC, run_at, id) WHERE (status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status]));

CREATE INDEX tasks_failed ON pgtasks.tasks USING btree (task_type, id) INCLUDE (queue) WHERE (status = 'FAILED'::pgtasks.status);

CREATE INDEX tasks_finished_at ON pgtasks.tasks USING btree (finished_at) WHERE (status = ANY (ARRAY['DONE'::pgtasks.status, 'FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status]));

CREATE INDEX tasks_keyed_ready ON pgtasks.tasks USING btree (run_at) WHERE ((concurrency_key IS NOT NULL) AND (status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])));

CREATE INDEX tasks_keyed_running ON pgtasks.tasks USING btree (concurrency_key) WHERE ((concurrency_key IS NOT NULL) AND (status = 'RUNNING'::pgtasks.status));

CREATE INDEX tasks_lease ON pgtasks.tasks USING btree (queue, lease_expires_at) WHERE (lease_expires_at IS NOT NULL);

CREATE INDEX tasks_next_run_at ON pgtasks.tasks USING btree (run_at) WHERE (status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status]));

CREATE UNIQUE INDEX tasks_schedule_tick ON pgtasks.tasks USING btree (schedule, schedule_tick) WHERE (schedule IS NOT NULL);

CREATE UNIQUE INDEX tasks_unique_active ON pgtasks.tasks USING btree (unique_key) WHERE ((unique_key IS NOT NULL) AND (status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status, 'RUNNING'::pgtasks.status])));

CREATE INDEX tasks_waiting ON pgtasks.tasks USING btree (queue, id) WHERE (status = 'WAITING'::pgtasks.status);

CREATE INDEX tasks_workflow ON pgtasks.tasks USING btree (workflow_id, id) WHERE (workflow_id IS NOT NULL);

CREATE TRIGGER settings_keep_row BEFORE DELETE OR TRUNCATE ON pgtasks.settings FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.keep_settings_row();

CREATE TRIGGER task_errors_append_only BEFORE DELETE OR UPDATE OR TRUNCATE ON pgtasks.task_errors FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.reject_history_change();

CREATE TRIGGER task_events_append_only BEFORE DELETE OR UPDATE OR TRUNCATE ON pgtasks.task_events FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.reject_history_change();

CREATE TRIGGER tasks_await_parents BEFORE UPDATE ON pgtasks.tasks FOR EACH ROW WHEN (((old.status = ANY (ARRAY['FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status])) AND (new.status = 'PENDING'::pgtasks.status) AND (old.waiting_on IS NOT NULL))) EXECUTE FUNCTION pgtasks.await_parents();

CREATE TRIGGER tasks_check_insert BEFORE INSERT ON pgtasks.tasks FOR EACH ROW WHEN (((new.status <> ALL (ARRAY['PENDING'::pgtasks.status, 'WAITING'::pgtasks.status])) OR (new.attempt <> 0))) EXECUTE FUNCTION pgtasks.check_insert();

CREATE TRIGGER tasks_check_transition BEFORE UPDATE ON pgtasks.tasks FOR EACH ROW WHEN (((old.status <> new.status) AND (NOT (((old.status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])) AND (new.status = ANY (ARRAY['RUNNING'::pgtasks.status, 'CANCELLED'::pgtasks.status]))) OR ((old.status = 'RUNNING'::pgtasks.status) AND (new.status = ANY (ARRAY['COMMIT'::pgtasks.status, 'DONE'::pgtasks.status, 'FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status]))) OR ((old.status = ANY (ARRAY['FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status])) AND (new.status = ANY (ARRAY['PENDING'::pgtasks.status, 'WAITING'::pgtasks.status]))) OR ((old.status = 'WAITING'::pgtasks.status) AND (new.status = ANY (ARRAY['PENDING'::pgtasks.status, 'CANCELLED'::pgtasks.status]))))))) EXECUTE FUNCTION pgtasks.reject_transition();

CREATE TRIGGER tasks_check_update AFTER UPDATE ON pgtasks.tasks FOR EACH ROW WHEN ((((old.status <> new.status) AND (NOT (((old.status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])) AND (new.status = ANY (ARRAY['RUNNING'::pgtasks.status, 'CANCELLED'::pgtasks.status]))) OR ((old.status = 'RUNNING'::pgtasks.status) AND (new.status = ANY (ARRAY['COMMIT'::pgtasks.status, 'DONE'::pgtasks.status, 'FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status]))) OR ((old.status = ANY (ARRAY['FAILED'::pgtasks.status, 'CANCELLED'::pgtasks.status])) AND (new.status = ANY (ARRAY['PENDING'::pgtasks.status, 'WAITING'::pgtasks.status]))) OR ((old.status = 'WAITING'::pgtasks.status) AND (new.status = ANY (ARRAY['PENDING'::pgtasks.status, 'CANCELLED'::pgtasks.status])))))) OR (new.attempt <> (old.attempt +
        CASE
            WHEN ((old.status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])) AND (new.status = 'RUNNING'::pgtasks.status)) THEN 1
            ELSE 0
        END)) OR ((old.status = 'RUNNING'::pgtasks.status) AND (new.status = 'RUNNING'::pgtasks.status) AND ((new.worker_id <> old.worker_id) OR (new.deadline <> old.deadline))) OR (new.lease_expires_at > new.deadline))) EXECUTE FUNCTION pgtasks.reject_transition();

CREATE TRIGGER tasks_record_inserts AFTER INSERT ON pgtasks.tasks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_inserts();

CREATE TRIGGER tasks_record_updates AFTER UPDATE ON pgtasks.tasks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_updates();

ALTER TABLE ONLY pgtasks.task_edges
    ADD CONSTRAINT task_edges_child_id_fkey FOREIGN KEY (child_id) REFERENCES pgtasks.tasks(id) ON DELETE CASCADE;

ALTER TABLE ONLY pgtasks.task_edges
    ADD CONSTRAINT task_edges_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES pgtasks.tasks(id) ON DELETE CASCADE;

ALTER TABLE ONLY pgtasks.task_errors
    ADD CONSTRAINT task_errors_task_id_fkey FOREIGN KEY (task_id) REFERENCES pgtasks.tasks(id) ON DELETE CASCADE;

ALTER TABLE ONLY pgtasks.task_logs
    ADD CONSTRAINT task_logs_task_id_fkey FOREIGN KEY (task_id) REFERENCES pgtasks.tasks(id) ON DELETE CASCADE;

ALTER TABLE ONLY pgtasks.task_steps
    ADD CONSTRAINT task_steps_task_id_fkey FOREIGN KEY (task_id) REFERENCES pgtasks.tasks(id) ON DELETE CASCADE;

ALTER TABLE ONLY pgtasks.task_waiters
    ADD CONSTRAINT task_waiters_task_id_fkey FOREIGN KEY (task_id) REFERENCES pgtasks.tasks(id) ON DELETE CASCADE;

GRANT USAGE ON SCHEMA pgtasks TO pgtasks_submitter;
GRANT USAGE ON SCHEMA pgtasks TO pgtasks_worker;
GRANT USAGE ON SCHEMA pgtasks TO pgtasks_reader;
GRANT USAGE ON SCHEMA pgtasks TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.await_parents() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.backoff(retry_count integer, base interval) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.cancel_task(task_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.cancel_task(task_id bigint) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.cancel_workflow(workflow_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.cancel_workflow(workflow_id bigint) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.check_batch(what text, task_ids bigint[], attempts integer[], results jsonb[], with_results boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_cron(cron text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_cron_field(field text, what text, lo integer, hi integer, names text[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_flow_args(unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, item integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_insert() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_log_size(message text, what text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_max_tasks(max_tasks integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_params(params jsonb, item integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_params_list(params_list jsonb[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_policy(task_type text, queue text, max_retries integer, timeout interval, backoff_base interval, type_required boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_queue_name(queue text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_result_size(result jsonb, what text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_run_at(run_at timestamp with time zone) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_schedule(cron text, every interval, timezone text, overlap text, catch_up interval) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_schedule_name(name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.check_worker_id(worker_id text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], OUT picked bigint[], OUT started timestamp with time zone) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.claim_tasks(worker_id text, queues text[], max_tasks integer, lease interval, task_types text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.claim_tasks(worker_id text, queues text[], max_tasks integer, lease interval, task_types text[]) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.clip_text(value text, max_chars integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.is_blank(value text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.configure(default_queue text, default_priority integer, default_max_retries integer, default_timeout interval, default_backoff_base interval, max_backoff interval, default_lease interval, retention interval, max_params_bytes integer, max_result_bytes integer, max_log_bytes integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.configure(default_queue text, default_priority integer, default_max_retries integer, default_timeout interval, default_backoff_base interval, max_backoff interval, default_lease interval, retention interval, max_params_bytes integer, max_result_bytes integer, max_log_bytes integer) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.configure_queue(queue text, max_running integer, rate_limit integer, rate_period interval) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.configure_queue(queue text, max_running integer, rate_limit integer, rate_period interval) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.create_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.create_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.current_settings() FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.current_settings() TO pgtasks_worker;
GRANT ALL ON FUNCTION pgtasks.current_settings() TO pgtasks_reader;

REVOKE ALL ON FUNCTION pgtasks.declare_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.declare_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) TO pgtasks_worker;
GRANT ALL ON FUNCTION pgtasks.declare_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.drop_idle_queue_settings(queue text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.drop_schedule(name text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.drop_schedule(name text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.due_schedules(max_schedules integer, claim interval, worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.due_schedules(max_schedules integer, claim interval, worker_id text) TO pgtasks_worker;
GRANT ALL ON FUNCTION pgtasks.due_schedules(max_schedules integer, claim interval, worker_id text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.enqueue_tick(s pgtasks.schedule_defs, tick timestamp with time zone) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.every_tick_after(every interval, after timestamp with time zone) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.expiry_reason(t pgtasks.tasks) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.fail_task(task_id bigint, attempt integer, error text, traceback text, retryable boolean, retry_delay interval) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.fail_task(task_id bigint, attempt integer, error text, traceback text, retryable boolean, retry_delay interval) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer, queues text[], lease interval, task_types text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer, queues text[], lease interval, task_types text[]) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[]) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[]) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.fire_every_schedules(max_schedules integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.fire_every_schedules(max_schedules integer) TO pgtasks_worker;
GRANT ALL ON FUNCTION pgtasks.fire_every_schedules(max_schedules integer) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[], next_run_at timestamp with time zone, skipped_before bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[], next_run_at timestamp with time zone, skipped_before bigint) TO pgtasks_worker;
GRANT ALL ON FUNCTION pgtasks.fire_schedule(name text, revision bigint, ticks timestamp with time zone[], next_run_at timestamp with time zone, skipped_before bigint) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.flow_control_in_use(queues text[]) FROM PUBLIC;

REVOKE ALL ON PROCEDURE pgtasks.grant_roles() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.heartbeat(worker_id text, task_ids bigint[], attempts integer[], lease interval) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.heartbeat(worker_id text, task_ids bigint[], attempts integer[], lease interval) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.keep_settings_row() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.lease_or_default(lease interval) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.lock_expired(max_tasks integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.lock_owned_task(task_id bigint, attempt integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.lock_schedule(name text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.lock_task(task_id bigint) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.log_many(task_id bigint, attempt integer, levels text[], messages text[], ats timestamp with time zone[], loggers text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.log_many(task_id bigint, attempt integer, levels text[], messages text[], ats timestamp with time zone[], loggers text[]) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.maintain(max_tasks integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.maintain(max_tasks integer) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.next_run_at(queues text[], task_types text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.next_run_at(queues text[], task_types text[]) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.notify_watchers(task_id bigint) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.parent_results(task_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.parent_results(task_id bigint) TO pgtasks_worker;
GRANT ALL ON FUNCTION pgtasks.parent_results(task_id bigint) TO pgtasks_reader;

REVOKE ALL ON FUNCTION pgtasks.pause_queue(queue text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.pause_queue(queue text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.pause_schedule(name text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.pause_schedule(name text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.prune_finished(older_than interval, max_tasks integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.prune_finished(older_than interval, max_tasks integer) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.prune_flow_state(max_rows integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.raise_unique_held(t pgtasks.tasks) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.record_failure(t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.record_inserts() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.record_updates() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.register_task_type(task_type text, queue text, priority integer, max_retries integer, timeout interval, backoff_base interval, worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.register_task_type(task_type text, queue text, priority integer, max_retries integer, timeout interval, backoff_base interval, worker_id text) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.register_worker(worker_id text, host text, pid integer, queues text[], concurrency integer, lease interval) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.register_worker(worker_id text, host text, pid integer, queues text[], concurrency integer, lease interval) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.reject_history_change() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.reject_transition() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.release_children(parents bigint[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.report_progress(task_id bigint, attempt integer, current bigint, total bigint, message text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.report_progress(task_id bigint, attempt integer, current bigint, total bigint, message text) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.rescue_expired(max_tasks integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.rescue_expired(max_tasks integer) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.rescue_one(t pgtasks.tasks) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.resume_queue(queue text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.resume_queue(queue text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.resume_schedule(name text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.resume_schedule(name text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamp with time zone) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.revive_children(parents bigint[]) FROM PUBLIC;

REVOKE ALL ON PROCEDURE pgtasks.secure_objects() FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.submit_dependent(p pgtasks.tasks, params jsonb, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.submit_one(p pgtasks.tasks, params jsonb, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, OUT id bigint, OUT created boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.submit_or_get(task_type text, params jsonb, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.submit_or_get(task_type text, params jsonb, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer) TO pgtasks_submitter;

REVOKE ALL ON FUNCTION pgtasks.submit_policy(task_type text, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.submit_task(task_type text, params jsonb, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.submit_task(task_type text, params jsonb, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text) TO pgtasks_submitter;

REVOKE ALL ON FUNCTION pgtasks.submit_tasks(task_type text, params_list jsonb[], queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_keys text[], unique_for interval, concurrency_keys text[], concurrency_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.submit_tasks(task_type text, params_list jsonb[], queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, unique_keys text[], unique_for interval, concurrency_keys text[], concurrency_limit integer) TO pgtasks_submitter;

REVOKE ALL ON FUNCTION pgtasks.submit_workflow(spec jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.submit_workflow(spec jsonb) TO pgtasks_submitter;

REVOKE ALL ON FUNCTION pgtasks.task_steps_of(task_id bigint, attempt integer) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.task_steps_of(task_id bigint, attempt integer) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status) TO pgtasks_submitter;
GRANT ALL ON FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status) TO pgtasks_reader;

REVOKE ALL ON FUNCTION pgtasks.trigger_schedule(name text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.trigger_schedule(name text) TO pgtasks_admin;

REVOKE ALL ON FUNCTION pgtasks.unregister_worker(worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.unregister_worker(worker_id text) TO pgtasks_worker;

REVOKE ALL ON FUNCTION pgtasks.unwatch_task(task_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.unwatch_task(task_id bigint) TO pgtasks_submitter;

REVOKE ALL ON FUNCTION pgtasks.upsert_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval, origin text) FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtasks.watch_task(task_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.watch_task(task_id bigint) TO pgtasks_submitter;

REVOKE ALL ON FUNCTION pgtasks.workflow_graph(workflow_id bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.workflow_graph(workflow_id bigint) TO pgtasks_reader;

REVOKE ALL ON FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamp with time zone) TO pgtasks_worker;

GRANT SELECT ON TABLE pgtasks.failed_tasks TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.queue_stats TO pgtasks_submitter;
GRANT SELECT ON TABLE pgtasks.queue_stats TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.workers TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.metrics TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.queues TO pgtasks_reader;
GRANT SELECT ON TABLE pgtasks.queues TO pgtasks_submitter;

GRANT SELECT ON TABLE pgtasks.registered_types TO pgtasks_submitter;
GRANT SELECT ON TABLE pgtasks.registered_types TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.schedules TO pgtasks_reader;
GRANT SELECT ON TABLE pgtasks.schedules TO pgtasks_admin;

GRANT SELECT ON TABLE pgtasks.task_attempt_errors TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.task_history TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.task_log_lines TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.task_overview TO pgtasks_submitter;
GRANT SELECT ON TABLE pgtasks.task_overview TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.task_status TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.task_step_names TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.transitions TO pgtasks_submitter;
GRANT SELECT ON TABLE pgtasks.transitions TO pgtasks_reader;

GRANT SELECT ON TABLE pgtasks.workflows TO pgtasks_reader;
