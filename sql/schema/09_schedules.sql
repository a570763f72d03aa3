-- Schedules: cron and `every` schedules that enqueue exactly one task per tick, however
-- many workers fire them, with time zones, a catch-up window for missed ticks and an
-- overlap policy. docs/schedules.md is the guide.
--
-- The model:
--   * schedule_defs (01_tables.sql) holds one row per schedule: its definition,
--     next_run_at (the first tick not yet fired) and what firing decided (last task,
--     skipped counts).
--   * Every task a schedule creates carries (schedule, schedule_tick), and the partial
--     UNIQUE index tasks_schedule_tick makes that pair unique: a second worker, a restart
--     or a retry that fires the same tick again inserts nothing (ON CONFLICT DO NOTHING).
--     That index, not a lock, is the exactly-once guarantee; the locks below only keep
--     workers from doing the work twice.
--   * Who computes ticks: `every` schedules entirely in SQL (date_bin on fixed durations).
--     Cron ticks need a cron parser and time-zone and DST arithmetic, which the Python
--     worker does with croniter and zoneinfo (maintained libraries, not ours) and hands to
--     fire_schedule; SQL validates the expression (fields, ranges, names) so psql cannot
--     store one the workers cannot parse, and checks every tick it is handed.
--   * Firing: due_schedules() claims due schedules for a few seconds (FOR UPDATE SKIP
--     LOCKED, so each one goes to one worker per round), fire_schedule() applies the
--     missed-tick and overlap policies, inserts the tick tasks and advances next_run_at,
--     compare-and-set on the revision due_schedules returned. One round trip per due
--     schedule.
--   * Schedules made through SQL (create_schedule: psql, the CLI, the client) have origin
--     'sql'; a worker's declarations (declare_schedule) have origin 'code' and never
--     overwrite a schedule made through SQL.
--
-- SQLSTATEs (docs/sql-api.md), each with a HINT:
--   PT401 invalid cron expression, or one that never fires (a day no month has)
--   PT402 unknown time zone
--   PT403 every not a fixed duration between settings.schedule_min_every and 366 days
--   PT404 not exactly one of cron / every
--   PT405 unknown overlap policy              PT406 catch_up negative or > 1 year
--   PT407 schedule not found                  PT408 schedule name blank or > 255 bytes
--   PT409 fire_schedule given ticks it cannot accept (outside [next_run_at, now],
--         next_run_at not after them, or no ticks for a cron schedule)

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- Validation

CREATE FUNCTION pgtasks.check_schedule_name(name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.is_blank(name) OR octet_length(name) > 255 THEN
        RAISE EXCEPTION 'pgtasks: schedule name must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(name, 40)), 'NULL')
            USING ERRCODE = 'PT408', HINT = 'Name the schedule after what it does, e.g. ''nightly-report''.';
    END IF;
END $$;

-- One cron field: a comma list of `*`, `N`, `N-M`, each optionally `/step`. Names (jan..dec,
-- sun..sat) in the month and day-of-week fields. Returns the field lower-cased, or raises
-- PT401 naming the field. Standard syntax only: no L, W, # or ?, which croniter reads
-- differently from other crons. A range of one value ('5-5', 'feb-feb', with or without a
-- step) is returned as that value: croniter reads it as '*', so '0 5-5 * * *' fired every
-- hour instead of at 05:00.
CREATE FUNCTION pgtasks.check_cron_field(
    field text, what text, lo integer, hi integer, names text[]
) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- The values of one cron field that check_cron_field accepted, e.g. '1-10/3,20' -> {1,4,7,10,20}
-- (N/step runs from N to the field's last value, as in croniter).
CREATE FUNCTION pgtasks.cron_field_values(field text, lo integer, hi integer, names text[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
$$;

-- Returns the expression normalized (macros expanded, single spaces, lower case), or
-- raises PT401. Python's croniter parses every expression this accepts, and finds a tick
-- for each: an expression whose days of the month fall in none of its months ('0 0 30 2 *',
-- '0 0 31 4,6,9,11 *') never fires, and croniter refuses it whatever the day-of-week field
-- says, so every worker would warn about it every round, forever (PT401 at declare time
-- instead). February counts 29 days: '0 0 29 2 *' fires in leap years.
CREATE FUNCTION pgtasks.check_cron(cron text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- The whole timing of a schedule, checked the same way for create_schedule and
-- declare_schedule. date_bin computes every-ticks and bins only fixed durations, so a
-- month is refused for `every` (cron '0 0 1 * *' says it); more than 366 days between
-- ticks is a typo, and less than settings.schedule_min_every (1 second) makes every firing
-- a burst: workers fire about once a second.
CREATE FUNCTION pgtasks.check_schedule(
    cron text, every interval, timezone text, overlap text, catch_up interval
) RETURNS text   -- the normalized cron expression (NULL for an every schedule)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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
END $$;

-- The first every-tick after `after`: ticks are multiples of `every` since the Unix epoch
-- (every 5 minutes fires at :00, :05, ...; every 1 day at 00:00 UTC), so all workers and
-- restarts agree on them without storing an anchor.
CREATE FUNCTION pgtasks.every_tick_after(every interval, after timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT date_bin(every, after, timestamptz '1970-01-01 00:00:00+00') + every
$$;

------------------------------------------------------------------------------------------
-- Defining schedules

-- The shared upsert of create_schedule and declare_schedule. `origin` 'code' (a worker's
-- declarations) never overwrites a schedule made through SQL; a changed timing recomputes
-- next_run_at from now (no backfill); every change bumps the revision, so a worker that
-- computed ticks from the old definition writes nothing.
CREATE FUNCTION pgtasks.upsert_schedule(
    name text, task_type text, cron text, every interval, params jsonb, queue text,
    priority integer, timezone text, overlap text, catch_up interval, origin text,
    misfire_grace interval
) RETURNS boolean  -- false: kept as it was (a SQL-made schedule a worker declared too)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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
    -- NULL: no grace. At least 2 seconds, the lateness every tick may have (fire_schedule):
    -- workers fire about once a second with jitter, so a shorter grace would skip ticks that
    -- were merely fired on time. More than a year is a typo.
    IF misfire_grace IS NOT NULL AND NOT (misfire_grace >= interval '2 seconds'
                                          AND misfire_grace <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: misfire_grace must be between 2 seconds and 1 year, got %', misfire_grace
            USING ERRCODE = 'PT410',
                  HINT = 'misfire_grace => ''5 minutes'' skips a tick found more than 5 minutes late; NULL never skips the latest.';
    END IF;
    first := CASE WHEN every IS NOT NULL THEN pgtasks.every_tick_after(every, pgtasks.now()) END;
    INSERT INTO pgtasks.schedule_defs AS s
           (name, task_type, cron, every, params, queue, priority, timezone, overlap, catch_up,
            origin, next_run_at, misfire_grace)
    VALUES (upsert_schedule.name, upsert_schedule.task_type, norm, upsert_schedule.every,
            coalesce(upsert_schedule.params, '{}'), upsert_schedule.queue, upsert_schedule.priority,
            upsert_schedule.timezone, upsert_schedule.overlap, upsert_schedule.catch_up,
            upsert_schedule.origin, first, upsert_schedule.misfire_grace)
    ON CONFLICT ON CONSTRAINT schedule_defs_pkey DO UPDATE
       SET task_type = EXCLUDED.task_type, cron = EXCLUDED.cron, every = EXCLUDED.every,
           params = EXCLUDED.params, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
           timezone = EXCLUDED.timezone, overlap = EXCLUDED.overlap, catch_up = EXCLUDED.catch_up,
           misfire_grace = EXCLUDED.misfire_grace,
           origin = CASE WHEN EXCLUDED.origin = 'sql' THEN 'sql' ELSE s.origin END,
           next_run_at = CASE WHEN (s.cron, s.every, s.timezone) IS NOT DISTINCT FROM
                                   (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
                              THEN s.next_run_at ELSE EXCLUDED.next_run_at END,
           revision = s.revision + 1, updated_at = pgtasks.now()
     WHERE EXCLUDED.origin = 'sql' OR s.origin = 'code';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n = 1;
END $$;

-- Creates or replaces a schedule from psql, the CLI or the client (origin 'sql').
CREATE FUNCTION pgtasks.create_schedule(
    name      text,
    task_type text,
    cron      text     DEFAULT NULL,
    every     interval DEFAULT NULL,
    params    jsonb    DEFAULT '{}',
    queue     text     DEFAULT NULL,   -- NULL: the type's registered queue, else settings
    priority  integer  DEFAULT NULL,
    timezone  text     DEFAULT 'UTC',
    overlap   text     DEFAULT 'allow',
    catch_up  interval DEFAULT interval '0',
    misfire_grace interval DEFAULT NULL   -- NULL: the latest missed tick always runs
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                    timezone, overlap, catch_up, 'sql', misfire_grace);
END $$;
GRANT EXECUTE ON FUNCTION
    pgtasks.create_schedule(text, text, text, interval, jsonb, text, integer, text, text,
                            interval, interval)
    TO pgtasks_admin;
COMMENT ON FUNCTION
    pgtasks.create_schedule(text, text, text, interval, jsonb, text, integer, text, text,
                            interval, interval) IS
    'Creates or replaces a schedule: exactly one of cron (5 fields, in timezone) or every (a '
    'fixed interval), the task it enqueues per tick, its catch_up window and overlap '
    'policy, and its misfire_grace (a tick found later than that is skipped and counted).';

-- A worker's declarations (@task_register(schedule=...), pgtasks.schedule(...)). Returns
-- false when it left the schedule as it was, because it was made through SQL.
CREATE FUNCTION pgtasks.declare_schedule(
    name      text,
    task_type text,
    cron      text     DEFAULT NULL,
    every     interval DEFAULT NULL,
    params    jsonb    DEFAULT '{}',
    queue     text     DEFAULT NULL,
    priority  integer  DEFAULT NULL,
    timezone  text     DEFAULT 'UTC',
    overlap   text     DEFAULT 'allow',
    catch_up  interval DEFAULT interval '0',
    misfire_grace interval DEFAULT NULL   -- NULL: the latest missed tick always runs
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    RETURN pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                   timezone, overlap, catch_up, 'code', misfire_grace);
END $$;
GRANT EXECUTE ON FUNCTION
    pgtasks.declare_schedule(text, text, text, interval, jsonb, text, integer, text, text,
                             interval, interval)
    TO pgtasks_worker, pgtasks_admin;
COMMENT ON FUNCTION
    pgtasks.declare_schedule(text, text, text, interval, jsonb, text, integer, text, text,
                             interval, interval) IS
    'A worker''s schedule declaration: like create_schedule, but it never overwrites a '
    'schedule made through SQL (then it returns false).';

-- Locks one schedule's row for a change, or raises PT407.
CREATE FUNCTION pgtasks.lock_schedule(name text) RETURNS pgtasks.schedule_defs
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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

------------------------------------------------------------------------------------------
-- Operating schedules (pgtasks_admin)

-- Tasks already enqueued stay; finished ones keep their schedule name and tick.
CREATE FUNCTION pgtasks.drop_schedule(name text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    DELETE FROM pgtasks.schedule_defs d WHERE d.name = drop_schedule.name;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.drop_schedule(text) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.drop_schedule(text) IS
    'Deletes a schedule; the tasks it enqueued stay.';

CREATE FUNCTION pgtasks.pause_schedule(name text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    UPDATE pgtasks.schedule_defs d SET paused = true, revision = d.revision + 1, updated_at = pgtasks.now()
     WHERE d.name = pause_schedule.name;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.pause_schedule(text) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.pause_schedule(text) IS
    'Stops a schedule from firing until resume_schedule.';

-- Ticks that passed while paused are not fired: the schedule continues from now.
CREATE FUNCTION pgtasks.resume_schedule(name text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    s pgtasks.schedule_defs;
BEGIN
    s := pgtasks.lock_schedule(name);
    IF s.paused THEN
        UPDATE pgtasks.schedule_defs d
           SET paused = false, revision = d.revision + 1, updated_at = pgtasks.now(),
               next_run_at = CASE WHEN d.every IS NOT NULL THEN pgtasks.every_tick_after(d.every, pgtasks.now()) END
         WHERE d.name = resume_schedule.name;
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.resume_schedule(text) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.resume_schedule(text) IS
    'Lets a paused schedule fire again from now on; the ticks that passed while it was paused '
    'are not fired.';

-- Inserts the task of one tick; NULL when that tick already has its task (the UNIQUE
-- index tasks_schedule_tick).
CREATE FUNCTION pgtasks.enqueue_tick(s pgtasks.schedule_defs, tick timestamptz) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p      pgtasks.tasks;
    new_id bigint;
BEGIN
    -- The same policy resolution as submit_task (type's policy, else settings), but an
    -- INSERT of our own: ON CONFLICT needs to name the (schedule, tick) index.
    p := pgtasks.submit_policy(s.task_type, s.queue, s.priority, NULL, NULL, NULL, NULL);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                               backoff_base, schedule, schedule_tick, soft_timeout)
    VALUES (p.task_type, s.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
            p.backoff_base, s.name, tick, p.soft_timeout)
    ON CONFLICT (schedule, schedule_tick) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- Run now, once, whatever the overlap policy (an operator asked). The tick is pgtasks.now().
CREATE FUNCTION pgtasks.trigger_schedule(name text) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    s      pgtasks.schedule_defs;
    new_id bigint;
BEGIN
    s := pgtasks.lock_schedule(name);
    new_id := pgtasks.enqueue_tick(s, pgtasks.now());
    UPDATE pgtasks.schedule_defs d
       SET last_task_id = coalesce(new_id, d.last_task_id), last_run_at = pgtasks.now(), revision = d.revision + 1
     WHERE d.name = trigger_schedule.name;
    RETURN new_id;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.trigger_schedule(text) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.trigger_schedule(text) IS
    'Enqueues a schedule''s task now, once, whatever its overlap policy; returns the task id.';

------------------------------------------------------------------------------------------
-- Firing (pgtasks_worker)

-- Claims up to max_schedules due schedules for `claim` (default 3 s): each goes to one
-- worker per round, so a fleet sends one fire_schedule per due schedule, not one per
-- worker. A worker that dies holding a claim delays the tick by the claim at most; its
-- ticks are still fired once (the catch-up window decides about the ones it missed).
-- Also returns the schedules whose next_run_at is still to be computed (NULL).
-- A claim is at most 30 seconds (PT114): firing a claimed schedule takes milliseconds, and
-- a longer claim let one worker hold every schedule back (due_schedules(1000, '1 hour')
-- stopped them all for an hour).
CREATE FUNCTION pgtasks.due_schedules(
    max_schedules integer  DEFAULT 100,
    claim         interval DEFAULT interval '3 seconds',
    worker_id     text     DEFAULT NULL
)
RETURNS TABLE (name text, cron text, every interval, timezone text, catch_up interval,
               next_run_at timestamptz, revision bigint, db_now timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.due_schedules(integer, interval, text)
    TO pgtasks_worker, pgtasks_admin;
COMMENT ON FUNCTION pgtasks.due_schedules(integer, interval, text) IS
    'Claims up to max_schedules due schedules for a few seconds, so each goes to one worker '
    'per round; returns what that worker needs to fire them.';

-- Fires one schedule's due ticks and advances it. `ticks` are the due ticks the caller
-- computed (cron schedules; every schedules pass NULL and SQL computes them), in any order,
-- each in [the schedule's next_run_at, now]; `next_run_at` the first tick after now;
-- `skipped_before` how many older due ticks the caller left out of `ticks`.
--
-- Missed ticks: the latest due tick always runs; with catch_up > 0, so does every tick
-- within catch_up of now, oldest first, but at most settings.schedule_max_ticks of them (the
-- newest): one firing after an outage of a day of an every-second schedule would otherwise
-- insert 86,400 tasks in one transaction. The others are counted in `skipped` (a WARNING
-- in the server log says when the cap cut a firing short). A tick at most
-- 2 seconds old is late, not missed, whatever catch_up says: workers fire about every
-- second with jitter, so without this grace an every-second schedule with catch_up 0
-- would lose a tick whenever a round came 1.2 s after the previous one.
-- With misfire_grace, a chosen tick (the latest included) older than the grace is
-- skipped and counted in skipped_misfire instead.
-- Overlap, per tick: allow enqueues; skip enqueues nothing while the schedule's last task
-- is PENDING, RUNNING or COMMIT (counted in skipped_overlap); cancel_previous cancels it
-- first.
--
-- Returns the task ids enqueued (none when `revision` is stale: someone else fired it or
-- the definition changed; the caller just tries again next round).
CREATE FUNCTION pgtasks.fire_schedule(
    name           text,
    revision       bigint,
    ticks          timestamptz[] DEFAULT NULL,
    next_run_at    timestamptz   DEFAULT NULL,
    skipped_before bigint        DEFAULT 0
) RETURNS SETOF bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    s         pgtasks.schedule_defs;
    due       timestamptz[];
    run       timestamptz[];
    nxt       timestamptz := fire_schedule.next_run_at;
    missed    bigint := coalesce(skipped_before, 0);
    n_overlap bigint := 0;
    n_misfire bigint := 0;
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
    -- The misfire grace, after the catch-up policy chose the ticks: whichever of them is
    -- older than the grace (the latest included) is skipped and counted, not run. catch_up
    -- says which missed ticks are wanted; misfire_grace says how late one may still run.
    IF s.misfire_grace IS NOT NULL THEN
        run := ARRAY(SELECT u FROM unnest(due) u WHERE u >= pgtasks.now() - s.misfire_grace ORDER BY u);
        n_misfire := cardinality(due) - cardinality(run);
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
           skipped_overlap = d.skipped_overlap + n_overlap,
           skipped_misfire = d.skipped_misfire + n_misfire
     WHERE d.name = s.name;
END $$;
GRANT EXECUTE ON FUNCTION
    pgtasks.fire_schedule(text, bigint, timestamptz[], timestamptz, bigint)
    TO pgtasks_worker, pgtasks_admin;
COMMENT ON FUNCTION pgtasks.fire_schedule(text, bigint, timestamptz[], timestamptz, bigint) IS
    'Fires one schedule''s due ticks (computed here for every schedules, passed in for cron '
    'ones), applying its catch-up and overlap policies, and advances it; returns the task ids '
    'enqueued.';

-- For deployments without a Python worker: fires every due `every` schedule, computed in
-- SQL. Call it about once a second (a loop in your worker, or pg_cron). Cron schedules
-- still need ticks from a cron library (fire_schedule with ticks).
CREATE FUNCTION pgtasks.fire_every_schedules(max_schedules integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
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
GRANT EXECUTE ON FUNCTION pgtasks.fire_every_schedules(integer)
    TO pgtasks_worker, pgtasks_admin;
COMMENT ON FUNCTION pgtasks.fire_every_schedules(integer) IS
    'Fires every due `every` schedule entirely in SQL, for deployments without a Python worker '
    '(call it about once a second); returns how many tasks it enqueued.';

------------------------------------------------------------------------------------------
-- The view

-- One row per schedule, with the status of the last task it enqueued.
CREATE VIEW pgtasks.schedules AS
SELECT d.name, d.task_type, d.cron, d.every, d.timezone, d.params, d.queue, d.priority,
       d.overlap, d.catch_up, d.paused, d.origin, d.next_run_at, d.last_tick, d.last_run_at,
       d.last_task_id, t.status AS last_status, d.skipped, d.skipped_overlap, d.fired_by,
       d.updated_at, d.misfire_grace, d.skipped_misfire
  FROM pgtasks.schedule_defs d
  LEFT JOIN pgtasks.tasks t ON t.id = d.last_task_id;
GRANT SELECT ON pgtasks.schedules TO pgtasks_reader, pgtasks_admin;
COMMENT ON VIEW pgtasks.schedules IS
    'Every schedule: its definition, when it fires next, what it last enqueued and that '
    'task''s status, and how many ticks it skipped (missed, overlapping or past the misfire grace).';
