-- pgtasks argument checks, limits and settings, shared by every entry point, so a value is
-- accepted or refused the same way (and with the same SQLSTATE) wherever it is given: in
-- submit_task or submit_tasks, register_task_type, configure or a schedule.
--
-- Each bad argument has its own SQLSTATE (PT1xx; PT2xx for the size limits), so callers
-- can tell them apart without parsing messages, and a HINT that says what to pass. NULL
-- means "not given" and passes; callers decide what a missing value means. No role may
-- call the checks themselves: the granted functions call them. configure, which changes
-- the settings, is pgtasks_admin's.
--
-- JSON values a client stores (params, results, step results, schedule params) must also
-- be decodable by every client that reads them back (json_shape_error, PT123), and names
-- of every kind go through is_blank. Time arguments stay within 100 years of now (PT105).
--
-- Two helpers live in 01_tables.sql because table constraints and defaults call them:
-- is_blank (the one test for an empty or invisible name) and current_settings (the
-- settings row).

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- Time

-- Every function of the schema reads the time through this one, so a test can move the
-- time every rule decides by (leases, backoff, run_at, schedules, retention, unique windows)
-- instead of sleeping, the way Absurd's test clock does. It costs one lookup in an empty
-- table per call, about 0.2 us.
CREATE FUNCTION pgtasks.now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT pg_catalog.now() + coalesce((SELECT c.shift FROM pgtasks.clock c), interval '0')
$$;
COMMENT ON FUNCTION pgtasks.now() IS
    'The time pgtasks decides by: now() plus the test clock''s shift (zero outside tests).';

-- Moves the clock forward by `by`, for tests. Granted to no role: only pgtasks_owner (and a
-- superuser) may call it, so a worker can never fake time to rescue or fire early. Forward
-- only, as real time moves: a deadline that has passed stays passed (PT122).
CREATE FUNCTION pgtasks.advance_clock(by interval) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF by IS NULL OR by <= interval '0' OR by > interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: the clock moves forward only, by more than 0 and at most 100 years (got %)', by
            USING ERRCODE = 'PT122',
                  HINT = 'Pass a positive interval, e.g. interval ''31 seconds''.';
    END IF;
    INSERT INTO pgtasks.clock AS c (shift) VALUES (by)
        ON CONFLICT (only_row) DO UPDATE SET shift = c.shift + excluded.shift;
    RETURN pgtasks.now();
END $$;
COMMENT ON FUNCTION pgtasks.advance_clock(interval) IS
    'Tests only: moves pgtasks.now() forward by the interval and returns the new time. Owner only.';

------------------------------------------------------------------------------------------
-- JSON a client can decode

-- Why a JSON value (of size_bytes bytes as text) is one the clients cannot decode, or NULL
-- when it is fine. PostgreSQL accepts JSON nested thousands deep and integers of any
-- length, but Python's json raises RecursionError near 1,000 levels and ValueError past
-- 4,300 integer digits (int's limit on string conversion), so one such row failed every
-- batch, list and page that held it. Two limits, fixed here rather than settings: they
-- protect the decoders, and a setting raised past what Python decodes would bring the
-- failures back.
--   * nesting: no value more than 100 levels below the top-level one. Far above what
--     real payloads use, far below Python's recursion limit even when the decoding code
--     is itself deep in a call stack (serde_json stops at 128 by default, for the same
--     reason).
--   * numbers: magnitude below 1e4000, so an integer part has at most 4,000 digits.
-- Both walks are skipped when the text is too short to hold the problem: a value 101
-- levels deep needs 101 enclosing pairs of brackets (over 202 bytes), a number of 1e4000
-- is written with over 4,000 digits (jsonb prints numbers without exponent). Small values,
-- the common case, pay one comparison; a 1 KiB object pays one walk of ~10 us.
CREATE FUNCTION pgtasks.json_shape_error(value jsonb, size_bytes bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE
        WHEN size_bytes > 202 AND jsonb_path_exists(value, 'strict $.**{101}')
            THEN 'JSON nested more than 100 levels deep'
        WHEN size_bytes > 4000 AND jsonb_path_exists(value, 'strict $.** ? (@.abs() >= 1e4000)')
            THEN 'JSON with a number of 1e4000 or more (over 4,000 digits)'
    END
$$;

------------------------------------------------------------------------------------------
-- Params

-- Params are a JSON object of at most settings.max_params_bytes (PT102, PT113) that every
-- client can decode (PT123). item names the list position when a batch is checked.
CREATE FUNCTION pgtasks.check_params(params jsonb, item integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- A whole list checked in one statement; the first bad item raises through check_params,
-- so its message names the item.
CREATE FUNCTION pgtasks.check_params_list(params_list jsonb[]) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

------------------------------------------------------------------------------------------
-- Batches, names, times and policies

-- Batches are parallel arrays; unnest() pads a short one with NULLs, which would finish a
-- task with a NULL result. Every batch function checks lengths here (PT116).
CREATE FUNCTION pgtasks.check_batch(what text, task_ids bigint[], lease_tokens text[], results jsonb[] DEFAULT NULL,
                                    with_results boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF coalesce(cardinality(task_ids), 0) <> coalesce(cardinality(lease_tokens), 0)
       OR (with_results AND coalesce(cardinality(task_ids), 0) <> coalesce(cardinality(results), 0)) THEN
        RAISE EXCEPTION 'pgtasks: % needs arrays of one length (% task_ids, % lease_tokens%)', what,
                coalesce(cardinality(task_ids), 0), coalesce(cardinality(lease_tokens), 0),
                CASE WHEN with_results THEN pg_catalog.format(', %s results', coalesce(cardinality(results), 0)) ELSE '' END
            USING ERRCODE = 'PT116', HINT = 'Pass one lease token (and result) per task id, in the same order.';
    END IF;
END $$;

-- Maintenance batch sizes (PT115).
CREATE FUNCTION pgtasks.check_max_tasks(max_tasks integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Maintenance works in batches; 1000 is a good size.';
    END IF;
END $$;

-- The policy of a task or a type: task_type, queue, max_retries, timeout, backoff_base.
-- Shared by submit_policy, register_task_type and configure (for the defaults).
CREATE FUNCTION pgtasks.check_policy(
    task_type     text,
    queue         text     DEFAULT NULL,
    max_retries   integer  DEFAULT NULL,
    timeout       interval DEFAULT NULL,
    backoff_base  interval DEFAULT NULL,
    type_required boolean  DEFAULT true   -- false: configure checks defaults, no type
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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
    -- A claim computes pgtasks.now() + timeout; past a year that is a typo, and '300000 years' made
    -- every claim that reached the task fail with `timestamp out of range`.
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

-- The soft time limit of a task or a type, against the hard one it must come before
-- (timeout NULL: a type without a timeout policy, checked at submit against the timeout the
-- task resolves to). `what` says where the pair came from, for the message.
CREATE FUNCTION pgtasks.check_soft_timeout(soft_timeout interval, timeout interval, what text DEFAULT 'the task')
RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF soft_timeout IS NOT NULL AND NOT (soft_timeout > interval '0' AND soft_timeout < interval '1 year'
                                         AND (timeout IS NULL OR soft_timeout < timeout)) THEN
        RAISE EXCEPTION 'pgtasks: soft_timeout must be positive and less than the timeout of % (%), got %',
                what, coalesce(timeout::text, 'NULL'), soft_timeout
            USING ERRCODE = 'PT129',
                  HINT = 'The soft limit warns the task before the hard one stops it, e.g. soft_timeout => ''55 minutes'', timeout => ''1 hour''.';
    END IF;
END $$;

-- run_at of yield_task and retry_task: the same rule as a submit's (submit_policy), so no
-- infinite or far-off time reaches a row a client decodes. NULL means now.
CREATE FUNCTION pgtasks.check_run_at(run_at timestamptz) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF run_at IS NOT NULL AND (NOT isfinite(run_at)
       OR run_at NOT BETWEEN pgtasks.now() - interval '100 years' AND pgtasks.now() + interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
END $$;

-- Queue names given on their own (queue settings), checked like a submit's queue (PT103).
CREATE FUNCTION pgtasks.check_queue_name(queue text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.is_blank(queue) OR octet_length(queue) > 255 THEN
        RAISE EXCEPTION 'pgtasks: queue must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(queue, 40)), 'NULL')
            USING ERRCODE = 'PT103', HINT = 'Name the queue, e.g. configure_queue(''imports'', max_running => 2).';
    END IF;
END $$;

-- Worker ids are bounded like task types and queues: a worker id of a megabyte would fail
-- the registry's index with 54000 (index row too big) instead of a PT SQLSTATE.
CREATE FUNCTION pgtasks.check_worker_id(worker_id text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.is_blank(worker_id) OR octet_length(worker_id) > 255 THEN
        RAISE EXCEPTION 'pgtasks: worker_id must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT121', HINT = 'Use a name unique to the worker process, e.g. host:pid:random.';
    END IF;
END $$;

-- The caller's rights, for the few rules that depend on them (register_task_type,
-- prune_finished): true when the login role (session_user: the functions run as
-- pgtasks_owner, so current_user would always be that) is a member of pgtasks_admin or
-- pgtasks_owner, or a superuser. Membership, not inheritance: an admin who SET ROLE to a
-- worker role is still an admin.
CREATE FUNCTION pgtasks.caller_is_admin() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT pg_catalog.pg_has_role(session_user, 'pgtasks_admin', 'MEMBER')
        OR pg_catalog.pg_has_role(session_user, 'pgtasks_owner', 'MEMBER')
$$;

-- The names and times of log lines (log, log_many): a level or logger given (not NULL) is
-- not blank (PT124), and each time is within 100 years of now like a run_at (PT105): the
-- clients that read task_logs decode it (Python's datetime stops at year 9999; 'infinity'
-- was accepted). Distinct names only go through is_blank: a batch of 100 lines usually
-- carries one or two levels and loggers.
CREATE FUNCTION pgtasks.check_log_lines(levels text[], loggers text[], ats timestamptz[]) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

------------------------------------------------------------------------------------------
-- Size limits. Sizes are bytes of JSON or log text, what a worker or client receives;
-- the limits live in pgtasks.settings (configure).

-- Raises PT204 when a log line (or progress message) is over settings.max_log_bytes.
CREATE FUNCTION pgtasks.check_log_size(message text, what text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- Raises PT203 when a result (or a step's result) is over settings.max_result_bytes, and
-- PT123 when clients could not decode it (json_shape_error).
CREATE FUNCTION pgtasks.check_result_size(result jsonb, what text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- A failure's error and traceback cannot be refused like an oversized log line (the
-- attempt has ended either way, and refusing would lose the failure itself), so fail_task
-- keeps them within settings.max_log_bytes with this: the start and the end (a Python
-- traceback ends with the innermost frames and the exception) and a marker saying how many
-- characters were left out between them. The limit counts characters, which is what
-- length() and left() measure; for text in ASCII, bytes.
CREATE FUNCTION pgtasks.clip_text(value text, max_chars integer) RETURNS text
LANGUAGE sql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE WHEN value IS NULL OR length(value) <= max_chars THEN value
                ELSE left(value, max_chars / 2)
                     || format(E'\n[... %s characters left out ...]\n', length(value) - max_chars)
                     || right(value, max_chars - max_chars / 2) END
$$;

------------------------------------------------------------------------------------------
-- Settings

-- Changes the settings row (01_tables.sql): each argument given replaces its value, NULL
-- keeps it. The defaults get the same checks (and SQLSTATEs) as the arguments they stand
-- in for; the table's CHECK constraints hold the same ranges for hand-written UPDATEs.
CREATE FUNCTION pgtasks.configure(
    default_queue        text     DEFAULT NULL,
    default_priority     integer  DEFAULT NULL,
    default_max_retries  integer  DEFAULT NULL,
    default_timeout      interval DEFAULT NULL,
    default_backoff_base interval DEFAULT NULL,
    max_backoff          interval DEFAULT NULL,
    default_lease        interval DEFAULT NULL,
    retention            interval DEFAULT NULL,
    max_params_bytes     integer  DEFAULT NULL,
    max_result_bytes     integer  DEFAULT NULL,
    max_log_bytes        integer  DEFAULT NULL,
    schedule_min_every   interval DEFAULT NULL,
    schedule_max_ticks   integer  DEFAULT NULL,
    max_snoozes          integer  DEFAULT NULL
) RETURNS pgtasks.settings
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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
    IF NOT (schedule_min_every > interval '0' AND schedule_min_every <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: schedule_min_every must be positive and at most 1 day, got %', schedule_min_every
            USING ERRCODE = 'PT118', HINT = 'Workers fire schedules about once a second; 1 second suits them.';
    END IF;
    IF schedule_max_ticks NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'pgtasks: schedule_max_ticks must be between 1 and 100000, got %', schedule_max_ticks
            USING ERRCODE = 'PT118', HINT = 'The most tasks one firing of a schedule enqueues, e.g. 100.';
    END IF;
    IF max_snoozes NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'pgtasks: max_snoozes must be between 0 and 1000000, got %', max_snoozes
            USING ERRCODE = 'PT118', HINT = 'The most snoozes one task may take before it fails, e.g. 100.';
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
           schedule_max_ticks   = coalesce(configure.schedule_max_ticks, t.schedule_max_ticks),
           max_snoozes          = coalesce(configure.max_snoozes, t.max_snoozes)
    RETURNING t.* INTO s;
    RETURN s;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.configure(text, integer, integer, interval, interval, interval, interval, interval, integer, integer, integer, interval, integer, integer) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.configure(text, integer, integer, interval, interval, interval, interval, interval, integer, integer, integer, interval, integer, integer) IS
    'Changes the deployment-wide defaults and limits (pgtasks.settings); each argument given replaces its value, NULL keeps it. Returns the new settings row.';

-- A lease as given, or settings.default_lease when NULL. A zero or negative lease would
-- make every claimed task instantly rescuable (PT114).
CREATE FUNCTION pgtasks.lease_or_default(lease interval) RETURNS interval
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- Exponential backoff with jitter: about base, 2 base, 4 base ... (+-20%), capped at
-- settings.max_backoff. Computed in float seconds with the exponent capped, so no retry
-- count can overflow it: an interval product overflowed at retry ~44 and made every
-- rescue_expired call abort. NULL base: settings.default_backoff_base.
CREATE FUNCTION pgtasks.backoff(retry_count integer, base interval DEFAULT NULL)
RETURNS interval
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT pg_catalog.make_interval(secs => least(
               greatest(pg_catalog.date_part('epoch', coalesce(backoff.base, s.default_backoff_base)), 0)
               -- 2^62 times any base already exceeds every allowed max_backoff.
               * pg_catalog.power(2::float8, least(greatest(coalesce(backoff.retry_count, 1) - 1, 0), 62)::float8)
               * (0.8 + 0.4 * pg_catalog.random()),
               pg_catalog.date_part('epoch', s.max_backoff)))
      FROM pgtasks.settings s
$$;
