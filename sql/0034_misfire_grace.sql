-- Misfire grace for schedules: schedule_defs gains misfire_grace (a tick found later than
-- it is skipped, not run) and skipped_misfire (how many were), fire_schedule applies it after
-- the catch-up policy, create_schedule and declare_schedule take it (a new trailing argument
-- with a default), and the schedules view appends both columns. The topic files'
-- definitions (sql/schema/01_tables.sql, sql/schema/09_schedules.sql).
-- Locks: the ALTER holds schedule_defs (never pgtasks.tasks), which only schedule firing
-- and the schedule functions read, for this short transaction.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

-- A constant default and a nullable column: no rewrite. The CHECK comes with its new
-- column, NULL in every row, so there is nothing to refuse and no validation to split off.
ALTER TABLE pgtasks.schedule_defs
    ADD COLUMN misfire_grace interval CONSTRAINT misfire_grace_in_range
        CHECK (misfire_grace > interval '0' AND misfire_grace <= interval '1 year'),
    ADD COLUMN skipped_misfire bigint NOT NULL DEFAULT 0;

-- The signatures gain a trailing argument with a default, so a call of the old ones (a
-- worker of the release before, named arguments) resolves to the new one; keeping both
-- would make every such call ambiguous.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.create_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.declare_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.upsert_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval,text);

CREATE OR REPLACE FUNCTION pgtasks.create_schedule(name text, task_type text, cron text DEFAULT NULL::text, every interval DEFAULT NULL::interval, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, timezone text DEFAULT 'UTC'::text, overlap text DEFAULT 'allow'::text, catch_up interval DEFAULT '00:00:00'::interval, misfire_grace interval DEFAULT NULL::interval)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                    timezone, overlap, catch_up, 'sql', misfire_grace);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.declare_schedule(name text, task_type text, cron text DEFAULT NULL::text, every interval DEFAULT NULL::interval, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, timezone text DEFAULT 'UTC'::text, overlap text DEFAULT 'allow'::text, catch_up interval DEFAULT '00:00:00'::interval, misfire_grace interval DEFAULT NULL::interval)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    RETURN pgtasks.upsert_schedule(name, task_type, cron, every, params, queue, priority,
                                   timezone, overlap, catch_up, 'code', misfire_grace);
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.upsert_schedule(name text, task_type text, cron text, every interval, params jsonb, queue text, priority integer, timezone text, overlap text, catch_up interval, origin text, misfire_grace interval)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE VIEW pgtasks.schedules AS
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
    d.updated_at,
    d.misfire_grace,
    d.skipped_misfire
   FROM (pgtasks.schedule_defs d
     LEFT JOIN pgtasks.tasks t ON ((t.id = d.last_task_id)));
GRANT EXECUTE ON FUNCTION pgtasks.create_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval,interval) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.create_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval,interval) IS 'Creates or replaces a schedule: exactly one of cron (5 fields, in timezone) or every (a fixed interval), the task it enqueues per tick, its catch_up window and overlap policy, and its misfire_grace (a tick found later than that is skipped and counted).';
GRANT EXECUTE ON FUNCTION pgtasks.declare_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval,interval) TO pgtasks_admin;
GRANT EXECUTE ON FUNCTION pgtasks.declare_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval,interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.declare_schedule(text,text,text,interval,jsonb,text,integer,text,text,interval,interval) IS 'A worker''s schedule declaration: like create_schedule, but it never overwrites a schedule made through SQL (then it returns false).';
COMMENT ON VIEW pgtasks.schedules IS 'Every schedule: its definition, when it fires next, what it last enqueued and that task''s status, and how many ticks it skipped (missed, overlapping or past the misfire grace).';
COMMENT ON COLUMN pgtasks.schedule_defs.misfire_grace IS 'A tick found more than this late is skipped (counted in skipped_misfire), not run; NULL: the latest tick always runs.';
COMMENT ON COLUMN pgtasks.schedule_defs.skipped_misfire IS 'Ticks skipped because they were found later than misfire_grace.';
