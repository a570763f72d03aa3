-- Durable waits: events (send_event, wait_for_event) and snoozes (snooze_task), with the
-- event_inbox and task_pauses tables behind them, the settings.max_snoozes cap (configure
-- gains its argument), and the history's note. New tables and a settings column with a
-- constant default (no rewrite); the hot tasks table is not touched.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE TABLE pgtasks.event_inbox (
    task_id    bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    name       text NOT NULL,
    payload    jsonb,
    sent_at    timestamptz,
    sent_by    text,
    waited_at  timestamptz,
    wait_until timestamptz,
    PRIMARY KEY (task_id, name),
    CONSTRAINT sent_or_waited CHECK (sent_at IS NOT NULL OR waited_at IS NOT NULL),
    CONSTRAINT sent_has_sender CHECK ((sent_at IS NULL) = (sent_by IS NULL)),
    CONSTRAINT waited_has_deadline CHECK ((waited_at IS NULL) = (wait_until IS NULL))
);

CREATE TABLE pgtasks.task_pauses (
    task_id    bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    kind       text NOT NULL,
    event_name text,
    until      timestamptz NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt),
    CONSTRAINT kind_known CHECK (kind IN ('snooze', 'event')),
    CONSTRAINT event_has_name CHECK ((kind = 'event') = (event_name IS NOT NULL))
);

-- The one-row settings table: a constant default adds the column without a rewrite, and
-- the check scans one row under a lock nobody waits long for.
ALTER TABLE pgtasks.settings
    ADD COLUMN max_snoozes integer NOT NULL DEFAULT 100,
    -- squawk-ignore constraint-missing-not-valid
    ADD CONSTRAINT max_snoozes_range CHECK (max_snoozes BETWEEN 0 AND 1000000);

-- configure gains max_snoozes at the end, so every call by name or by position keeps working.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.configure(text,integer,integer,interval,interval,interval,interval,interval,integer,integer,integer,interval,integer);

CREATE OR REPLACE FUNCTION pgtasks.check_event_name(name text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF pgtasks.is_blank(name) OR octet_length(name) > 255 THEN
        RAISE EXCEPTION 'pgtasks: event name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT126', HINT = 'Name the event, e.g. wait_for_event(''approved'', ...).';
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.configure(default_queue text DEFAULT NULL::text, default_priority integer DEFAULT NULL::integer, default_max_retries integer DEFAULT NULL::integer, default_timeout interval DEFAULT NULL::interval, default_backoff_base interval DEFAULT NULL::interval, max_backoff interval DEFAULT NULL::interval, default_lease interval DEFAULT NULL::interval, retention interval DEFAULT NULL::interval, max_params_bytes integer DEFAULT NULL::integer, max_result_bytes integer DEFAULT NULL::integer, max_log_bytes integer DEFAULT NULL::integer, schedule_min_every interval DEFAULT NULL::interval, schedule_max_ticks integer DEFAULT NULL::integer, max_snoozes integer DEFAULT NULL::integer)
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.send_event(task_id bigint, name text, payload jsonb DEFAULT NULL::jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    t pgtasks.tasks;
    e pgtasks.event_inbox;
    now_ timestamptz := pgtasks.now();
BEGIN
    PERFORM pgtasks.check_event_name(name);
    PERFORM pgtasks.check_result_size(payload, 'event payload');
    t := pgtasks.lock_task(task_id);
    IF t.status IN ('DONE', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % already finished as %; it waits for no event', task_id, t.status
            USING ERRCODE = 'PT128', HINT = 'Send events to a task before it ends; retry_task() runs it again.';
    END IF;
    INSERT INTO pgtasks.event_inbox AS i (task_id, name, payload, sent_at, sent_by)
    VALUES (t.id, send_event.name, send_event.payload, now_, session_user)
    ON CONFLICT ON CONSTRAINT event_inbox_pkey DO UPDATE
       SET payload = excluded.payload, sent_at = excluded.sent_at, sent_by = excluded.sent_by
     WHERE i.sent_at IS NULL
    RETURNING * INTO e;
    IF NOT FOUND THEN
        RETURN false;                     -- delivered before: the first event is kept
    END IF;
    IF t.status = 'COMMIT' AND e.wait_until IS NOT NULL AND t.run_at = e.wait_until AND t.run_at > now_ THEN
        UPDATE pgtasks.tasks k SET run_at = now_ WHERE k.id = t.id;
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(t.queue));
    END IF;
    RETURN true;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.snooze_task(task_id bigint, lease_token text, delay interval DEFAULT '00:00:00'::interval)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    t pgtasks.tasks;
    cap integer := (SELECT s.max_snoozes FROM pgtasks.settings s);
    taken bigint;
    wake timestamptz;
BEGIN
    IF delay IS NULL OR NOT (delay >= interval '0' AND delay <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: snooze delay must be between 0 and 1 year, got %', coalesce(delay::text, 'NULL')
            USING ERRCODE = 'PT127', HINT = 'For example delay => interval ''60 seconds''.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    SELECT count(*) INTO taken FROM pgtasks.task_pauses p
     WHERE p.task_id = snooze_task.task_id AND p.kind = 'snooze';
    IF taken >= cap THEN
        RETURN pgtasks.record_failure(
            t, pg_catalog.format('pgtasks: task snoozed %s times, the most settings.max_snoozes (%s) allows; '
                                 'raise it with pgtasks.configure(max_snoozes => ...) if the task is meant to wait longer',
                                 taken, cap),
            NULL, false, NULL);
    END IF;
    wake := pgtasks.now() + delay;
    INSERT INTO pgtasks.task_pauses (task_id, attempt, kind, until, at)
    VALUES (t.id, t.attempt, 'snooze', wake, pgtasks.now());
    UPDATE pgtasks.tasks k
       SET status = 'COMMIT', run_at = wake,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE k.id = t.id;
    IF delay = interval '0' THEN
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(t.queue));
    END IF;
    RETURN 'COMMIT';
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.wait_for_event(task_id bigint, lease_token text, name text, timeout interval DEFAULT NULL::interval)
 RETURNS TABLE(state text, payload jsonb)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    t pgtasks.tasks;
    e pgtasks.event_inbox;
    now_ timestamptz := pgtasks.now();
BEGIN
    PERFORM pgtasks.check_event_name(name);
    IF timeout IS NOT NULL AND NOT (timeout > interval '0' AND timeout <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: event timeout must be positive and at most 1 year, got %', timeout
            USING ERRCODE = 'PT127', HINT = 'For example timeout => interval ''1 hour''; NULL waits without one.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    -- The task's row lock (above) orders this with send_event, which locks it too.
    SELECT * INTO e FROM pgtasks.event_inbox i
     WHERE i.task_id = wait_for_event.task_id AND i.name = wait_for_event.name;
    IF FOUND AND e.sent_at IS NOT NULL THEN
        RETURN QUERY SELECT 'received'::text, e.payload;
        RETURN;
    END IF;
    IF FOUND AND e.wait_until <= now_ THEN
        RETURN QUERY SELECT 'timeout'::text, NULL::jsonb;
        RETURN;
    END IF;
    IF NOT FOUND THEN
        e.wait_until := now_ + coalesce(timeout, interval '100 years');
        INSERT INTO pgtasks.event_inbox (task_id, name, waited_at, wait_until)
        VALUES (t.id, wait_for_event.name, now_, e.wait_until);
    END IF;
    INSERT INTO pgtasks.task_pauses (task_id, attempt, kind, event_name, until, at)
    VALUES (t.id, t.attempt, 'event', wait_for_event.name, e.wait_until, now_);
    UPDATE pgtasks.tasks k
       SET status = 'COMMIT', run_at = e.wait_until,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE k.id = t.id;
    RETURN QUERY SELECT 'waiting'::text, NULL::jsonb;
END $function$;
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
        END AS note
   FROM (pgtasks.task_events e
     LEFT JOIN pgtasks.task_pauses p ON (((p.task_id = e.task_id) AND (p.attempt = e.attempt) AND (e.from_status = 'RUNNING'::pgtasks.status) AND (e.to_status = 'COMMIT'::pgtasks.status))));
CREATE OR REPLACE VIEW pgtasks.task_inbox AS
 SELECT task_id,
    name,
    payload,
    sent_at,
    sent_by,
    waited_at,
        CASE
            WHEN (wait_until < (waited_at + '99 years'::interval)) THEN wait_until
            ELSE NULL::timestamp with time zone
        END AS wait_until
   FROM pgtasks.event_inbox i;
GRANT EXECUTE ON FUNCTION pgtasks.configure(text,integer,integer,interval,interval,interval,interval,interval,integer,integer,integer,interval,integer,integer) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.configure(text,integer,integer,interval,interval,interval,interval,interval,integer,integer,integer,interval,integer,integer) IS 'Changes the deployment-wide defaults and limits (pgtasks.settings); each argument given replaces its value, NULL keeps it. Returns the new settings row.';
GRANT EXECUTE ON FUNCTION pgtasks.send_event(bigint,text,jsonb) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.send_event(bigint,text,jsonb) IS 'Delivers a named event with its payload to a task, kept until the task waits for it; a task parked waiting for it is claimable at once. Returns false when an event of that name was already delivered (the first is kept). PT128 for a finished task.';
GRANT EXECUTE ON FUNCTION pgtasks.snooze_task(bigint,text,interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.snooze_task(bigint,text,interval) IS 'Puts a running attempt''s task back for delay without spending a retry (RUNNING -> COMMIT, checkpoints kept, recorded as a snooze); FAILED instead once the task snoozed settings.max_snoozes times. Returns the new status.';
GRANT EXECUTE ON FUNCTION pgtasks.wait_for_event(bigint,text,text,interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.wait_for_event(bigint,text,text,interval) IS 'Waits for the named event: returns (received, payload) when it was sent, (timeout, NULL) when an earlier wait ran out, else ends the attempt without spending a retry ((waiting, NULL): RUNNING -> COMMIT until the event or the timeout).';
COMMENT ON VIEW pgtasks.task_history IS 'Every status change of every task: when, from and to which status, in which attempt, by which worker and login role; note says when the change was a snooze or a wait for an event.';
GRANT SELECT ON TABLE pgtasks.task_inbox TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_inbox IS 'Events sent to every task (sent_at, sent_by, payload) and its waits for them (waited_at, wait_until: when the wait times out; NULL without a timeout).';
COMMENT ON TABLE pgtasks.event_inbox IS 'Events sent to tasks (send_event) and the tasks'' waits for them (wait_for_event): one row per task and event name. Pruned with its task.';
COMMENT ON TABLE pgtasks.task_pauses IS 'One row per attempt that ended in a snooze or a wait for an event: what it waits for and until when. Pruned with its task.';
COMMENT ON COLUMN pgtasks.event_inbox.sent_at IS 'When the event arrived; NULL while the task waits for it.';
COMMENT ON COLUMN pgtasks.event_inbox.wait_until IS 'When the wait times out (the task''s run_at while it waits); NULL if the task never waited.';

-- retry_task forgets waits for events that never came (see its comment in 06_finish.sql).
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
    DELETE FROM pgtasks.event_inbox i WHERE i.task_id = t.id AND i.sent_at IS NULL;
END $function$;
