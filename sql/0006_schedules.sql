-- pgtasks 0006: schedules. Cron and `every` schedules that enqueue exactly one
-- task per tick, however many workers fire them, with time zones, a catch-up window for
-- missed ticks and an overlap policy.
--
-- Model:
--   * pgtasks.schedule_defs holds one row per schedule: its definition, next_run_at (the
--     first tick not yet fired) and what firing decided (last task, skipped counts).
--   * Every task a schedule creates carries (schedule, schedule_tick), and a partial UNIQUE
--     index makes that pair unique: a second worker, a restart or a retry that fires the
--     same tick again inserts nothing (ON CONFLICT DO NOTHING). That index, not a lock, is
--     the exactly-once guarantee; the locks below only keep workers from doing the work twice.
--   * Who computes ticks: `every` schedules entirely in SQL (date_bin on fixed durations).
--     Cron ticks need a cron parser and time-zone/DST arithmetic, which the Python worker
--     does with croniter + zoneinfo (a maintained library, not ours) and hands to
--     fire_schedule; SQL validates the expression (fields, ranges, names) so psql cannot
--     store one the workers cannot parse, and checks every tick it is handed.
--   * Firing: due_schedules() claims due schedules for a few seconds (FOR UPDATE SKIP
--     LOCKED, so each one goes to one worker per round), fire_schedule() applies the
--     missed-tick and overlap policies, inserts the tick tasks and advances next_run_at,
--     compare-and-set on the revision due_schedules returned. One round trip per due schedule.
--
-- Independent of 0005 (written at the same time): it touches no object 0005 creates.
--
-- SQLSTATEs added (docs/sql-api.md), each with a HINT:
--   PT401 invalid cron expression            PT402 unknown time zone
--   PT403 every not a positive fixed duration PT404 not exactly one of cron / every
--   PT405 unknown overlap policy             PT406 catch_up negative or > 1 year
--   PT407 schedule not found                 PT408 schedule name blank or > 255 bytes
--   PT409 fire_schedule given ticks it cannot accept (outside [next_run_at, now],
--         next_run_at not after them, or no ticks for a cron schedule)

------------------------------------------------------------------------------------------
-- 1. Tables

CREATE TABLE pgtasks.schedule_defs (
    name          text PRIMARY KEY,
    task_type     text NOT NULL,
    cron          text,               -- normalized 5-field expression
    every         interval,
    params        jsonb NOT NULL DEFAULT '{}',
    queue         text,               -- NULL: the type's policy, else settings (as submit_task)
    priority      integer,
    timezone      text NOT NULL DEFAULT 'UTC',
    overlap       text NOT NULL DEFAULT 'allow',
    catch_up      interval NOT NULL DEFAULT interval '0',
    paused        boolean NOT NULL DEFAULT false,
    -- 'sql' (create_schedule: psql, CLI, Client) or 'code' (a worker's declarations). A
    -- worker's upsert never overwrites a schedule made through SQL or the CLI.
    origin        text NOT NULL DEFAULT 'sql',
    -- The first tick not yet fired. NULL: to be computed (a new or changed cron schedule;
    -- the next firing round sets it without firing anything).
    next_run_at   timestamptz,
    last_tick     timestamptz,
    last_run_at   timestamptz,        -- when the last task was enqueued
    last_task_id  bigint,             -- no foreign key: pruning deletes finished tasks
    skipped       bigint NOT NULL DEFAULT 0,  -- missed ticks older than the catch-up window
    skipped_overlap bigint NOT NULL DEFAULT 0, -- ticks not enqueued because of overlap 'skip'
    -- Bumped on every change and every firing: fire_schedule compares it, so a worker that
    -- computed ticks from an old definition or an old next_run_at writes nothing.
    revision      bigint NOT NULL DEFAULT 0,
    claimed_until timestamptz,        -- a worker is firing it (due_schedules); expires by itself
    fired_by      text,               -- the worker that claimed it last (operators, tests)
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT one_of_cron_every CHECK ((cron IS NULL) <> (every IS NULL)),
    CONSTRAINT overlap_known CHECK (overlap IN ('allow', 'skip', 'cancel_previous')),
    CONSTRAINT origin_known CHECK (origin IN ('sql', 'code')),
    CONSTRAINT every_positive CHECK (every > interval '0'),
    CONSTRAINT catch_up_in_range CHECK (catch_up >= interval '0' AND catch_up <= interval '1 year')
);

-- The firing query's walk: unpaused schedules by next_run_at.
CREATE INDEX schedule_defs_due ON pgtasks.schedule_defs (next_run_at NULLS FIRST) WHERE NOT paused;

-- Nullable without default: adding them rewrites no row. The CHECK is added NOT VALID and
-- validated separately, so the scan of existing tasks (all NULL, all valid) holds only a
-- SHARE UPDATE EXCLUSIVE lock instead of blocking writes for its duration.
ALTER TABLE pgtasks.tasks ADD COLUMN schedule text, ADD COLUMN schedule_tick timestamptz;
ALTER TABLE pgtasks.tasks ADD CONSTRAINT schedule_has_tick
    CHECK ((schedule IS NULL) = (schedule_tick IS NULL)) NOT VALID;
ALTER TABLE pgtasks.tasks VALIDATE CONSTRAINT schedule_has_tick;

-- Exactly once per tick, enforced by the database. Partial: ordinary tasks (schedule NULL)
-- are not in it and pay nothing for it on insert; fire_schedule's ON CONFLICT names it.
CREATE UNIQUE INDEX tasks_schedule_tick ON pgtasks.tasks (schedule, schedule_tick) WHERE schedule IS NOT NULL;

------------------------------------------------------------------------------------------
-- 2. Validation

CREATE FUNCTION pgtasks.check_schedule_name(name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
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
-- differently from other crons.
CREATE FUNCTION pgtasks.check_cron_field(field text, what text, lo integer, hi integer, names text[])
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- Returns the expression normalized (macros expanded, single spaces, lower case), or
-- raises PT401. Python's croniter parses every expression this accepts.
CREATE FUNCTION pgtasks.check_cron(cron text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
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

CREATE FUNCTION pgtasks.check_schedule(
    cron text, every interval, timezone text, overlap text, catch_up interval
) RETURNS text   -- the normalized cron expression (NULL for an every schedule)
LANGUAGE plpgsql STABLE
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
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT date_bin(every, after, timestamptz '1970-01-01 00:00:00+00') + every
$$;

------------------------------------------------------------------------------------------
-- 3. Operator functions (pgtasks_admin)

-- The shared upsert. `origin` 'code' (a worker's declarations) never overwrites a schedule
-- made through SQL; a changed timing recomputes next_run_at from now (no backfill).
CREATE FUNCTION pgtasks.upsert_schedule(
    name text, task_type text, cron text, every interval, params jsonb, queue text,
    priority integer, timezone text, overlap text, catch_up interval, origin text
) RETURNS boolean  -- false: kept as it was (a SQL-made schedule a worker declared too)
LANGUAGE plpgsql
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
    catch_up  interval DEFAULT interval '0'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                    timezone, overlap, catch_up, 'sql');
END $$;

-- A worker's declarations (@task_register(schedule=...), pgtasks.schedule(...)).
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
    catch_up  interval DEFAULT interval '0'
) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    RETURN pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                   timezone, overlap, catch_up, 'code');
END $$;

CREATE FUNCTION pgtasks.lock_schedule(name text) RETURNS pgtasks.schedule_defs
LANGUAGE plpgsql
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

-- Tasks already enqueued stay; finished ones keep their schedule name and tick.
CREATE FUNCTION pgtasks.drop_schedule(name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    DELETE FROM pgtasks.schedule_defs d WHERE d.name = drop_schedule.name;
END $$;

CREATE FUNCTION pgtasks.pause_schedule(name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.lock_schedule(name);
    UPDATE pgtasks.schedule_defs d SET paused = true, revision = d.revision + 1, updated_at = now()
     WHERE d.name = pause_schedule.name;
END $$;

-- Ticks that passed while paused are not fired: the schedule continues from now.
CREATE FUNCTION pgtasks.resume_schedule(name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- Inserts the task of one tick; NULL when that tick already has its task (the UNIQUE index).
CREATE FUNCTION pgtasks.enqueue_tick(s pgtasks.schedule_defs, tick timestamptz) RETURNS bigint
LANGUAGE plpgsql
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
                               backoff_base, schedule, schedule_tick)
    VALUES (p.task_type, s.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
            p.backoff_base, s.name, tick)
    ON CONFLICT (schedule, schedule_tick) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- Run now, once, whatever the overlap policy (an operator asked). The tick is now().
CREATE FUNCTION pgtasks.trigger_schedule(name text) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

------------------------------------------------------------------------------------------
-- 4. Firing (pgtasks_worker)

-- Claims up to max_schedules due schedules for `claim` (default 3 s): each goes to one
-- worker per round, so a fleet sends one fire_schedule per due schedule, not one per
-- worker. A worker that dies holding a claim delays the tick by the claim at most; its
-- ticks are still fired once (the catch-up window decides about the ones it missed).
-- Also returns the schedules whose next_run_at is still to be computed (NULL).
CREATE FUNCTION pgtasks.due_schedules(
    max_schedules integer  DEFAULT 100,
    claim         interval DEFAULT interval '3 seconds',
    worker_id     text     DEFAULT NULL
)
RETURNS TABLE (name text, cron text, every interval, timezone text, catch_up interval,
               next_run_at timestamptz, revision bigint, db_now timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- Fires one schedule's due ticks and advances it. `ticks` are the due ticks the caller
-- computed (cron schedules; every schedules pass NULL and SQL computes them), oldest first
-- or in any order, each in [the schedule's next_run_at, now]; `next_run_at` the first tick
-- after now; `skipped_before` how many older due ticks the caller left out of `ticks`.
--
-- Missed ticks: the latest due tick always runs; with catch_up > 0, so does every tick
-- within catch_up of now, oldest first. The others are counted in `skipped`. A tick at most
-- 2 seconds old is late, not missed, whatever catch_up says: workers fire about every
-- second with jitter, so without this grace an every-second schedule with catch_up 0
-- would lose a tick whenever a round came 1.2 s after the previous one.
-- Overlap, per tick: allow enqueues; skip enqueues nothing while the schedule's last task
-- is PENDING, RUNNING or COMMIT (counted in skipped_overlap); cancel_previous cancels it first.
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
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- For deployments without a Python worker: fires every due `every` schedule, computed in
-- SQL. Call it about once a second (a loop in your worker, or pg_cron). Cron schedules
-- still need ticks from a cron library (fire_schedule with ticks).
CREATE FUNCTION pgtasks.fire_every_schedules(max_schedules integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql
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

------------------------------------------------------------------------------------------
-- 5. The view

CREATE VIEW pgtasks.schedules AS
SELECT d.name, d.task_type, d.cron, d.every, d.timezone, d.params, d.queue, d.priority,
       d.overlap, d.catch_up, d.paused, d.origin, d.next_run_at, d.last_tick, d.last_run_at,
       d.last_task_id, t.status AS last_status, d.skipped, d.skipped_overlap, d.fired_by,
       d.updated_at
  FROM pgtasks.schedule_defs d
  LEFT JOIN pgtasks.tasks t ON t.id = d.last_task_id;

------------------------------------------------------------------------------------------
-- 6. Security. Explicit grants instead of re-creating grant_roles(): 0005 is written at the
-- same time and may re-create it; a copy here would drop its names. Grants survive later
-- secure_objects() calls (it revokes from PUBLIC only).

CALL pgtasks.secure_objects();

GRANT EXECUTE ON FUNCTION
    pgtasks.create_schedule(text, text, text, interval, jsonb, text, integer, text, text, interval),
    pgtasks.drop_schedule(text), pgtasks.pause_schedule(text), pgtasks.resume_schedule(text),
    pgtasks.trigger_schedule(text)
    TO pgtasks_admin;
GRANT EXECUTE ON FUNCTION
    pgtasks.declare_schedule(text, text, text, interval, jsonb, text, integer, text, text, interval),
    pgtasks.due_schedules(integer, interval, text),
    pgtasks.fire_schedule(text, bigint, timestamptz[], timestamptz, bigint),
    pgtasks.fire_every_schedules(integer)
    TO pgtasks_worker, pgtasks_admin;
GRANT SELECT ON pgtasks.schedules TO pgtasks_reader, pgtasks_admin;
