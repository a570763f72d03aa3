-- pgtasks 0004: safe by construction.
--
-- What this file adds, in order:
--   1. Least-privilege roles: NOLOGIN pgtasks_owner owns every object; pgtasks_submitter,
--      pgtasks_worker, pgtasks_reader and pgtasks_admin get EXECUTE on the functions of
--      their job and SELECT on views. Nobody but the owner touches a table.
--   2. Every function runs as the owner (SECURITY DEFINER) with a pinned search_path, so a
--      function or operator planted in another schema is never called.
--   3. The table rules hold for hand-written SQL too: the transition rule
--      whatever columns an UPDATE names, the fencing columns only change the ways the
--      functions change them, and the history is append-only except for pruning.
--   4. Size limits on results, step results and log lines (params are 0003's).
--   5. The cancel NOTIFY carries the attempt: payload '<task_id>:<attempt>'.
--   6. Fixes for what the fuzzer (tests/sql/test_fuzz.py) found.
-- The ownership pass (2) comes last, so it covers every function created above.
--
-- SQLSTATEs added here (docs/sql-api.md):
--   PT201 a fencing column (attempt, worker_id, lease_expires_at, deadline) changed in a
--         way no pgtasks function changes it
--   PT202 history (task_events, task_errors) is append-only
--   PT203 result or step result larger than settings.max_result_bytes
--   PT204 log line, level, logger or progress message larger than settings.max_log_bytes
--   PT205 the migrating role cannot create the pgtasks roles (needs CREATEROLE) or hand
--         objects to pgtasks_owner (needs membership in it)
--   PT206 register_worker: host blank or NULL, pid NULL, concurrency below 1, blank queue
--
-- Everything below is written so it can run again on a cluster where the roles already
-- exist (roles are cluster-wide; each new database migrates on its own).

-- Names in this file resolve in pg_catalog first, whatever the migrating session set; the
-- trigger WHEN clauses below are parsed now, with this path, and stored resolved.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;

------------------------------------------------------------------------------------------
-- 1. Roles

DO $roles$
DECLARE
    wanted constant text[] := ARRAY['pgtasks_owner', 'pgtasks_submitter', 'pgtasks_worker',
                                    'pgtasks_reader', 'pgtasks_admin'];
    r text;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(wanted) w WHERE w NOT IN (SELECT rolname FROM pg_roles))
       AND NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'pgtasks: migration 0004 creates the roles %, and % may not create roles',
                array_to_string(wanted, ', '), current_user
            USING ERRCODE = 'PT205',
                  HINT = 'Run `pgtasks migrate` once as a superuser or a role with CREATEROLE, '
                         'or have an administrator run: CREATE ROLE pgtasks_owner NOLOGIN; '
                         'CREATE ROLE pgtasks_submitter NOLOGIN; CREATE ROLE pgtasks_worker NOLOGIN; '
                         'CREATE ROLE pgtasks_reader NOLOGIN; CREATE ROLE pgtasks_admin NOLOGIN; '
                         'GRANT pgtasks_owner TO <migrating role>;';
    END IF;
    FOREACH r IN ARRAY wanted LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of this cluster migrating at the same moment made it
            END;
        END IF;
    END LOOP;
END $roles$;

-- Role membership: a worker submits follow-up tasks; an admin can do all the others can.
-- Granted once: GRANT of an existing membership is harmless, but two databases migrating
-- at once may collide on the catalog row, so each grant tolerates that.
DO $members$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM (VALUES ('pgtasks_submitter', 'pgtasks_worker'),
                                   ('pgtasks_worker', 'pgtasks_admin'),
                                   ('pgtasks_reader', 'pgtasks_admin')) AS v(grp, member)
    LOOP
        IF NOT pg_has_role(g.member, g.grp, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', g.grp, g.member);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL;
            END;
        END IF;
    END LOOP;
    -- A migrating role that is not a superuser hands the objects to pgtasks_owner, which
    -- needs membership in it, and the schema's new owner needs CREATE on the database.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        IF NOT pg_has_role(current_user, 'pgtasks_owner', 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT pgtasks_owner TO %I', current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                -- The roles exist but another role created them (PostgreSQL 16+: only
                -- their creator or a superuser may grant them).
                RAISE EXCEPTION 'pgtasks: % must be a member of pgtasks_owner to hand it the pgtasks objects',
                        current_user
                    USING ERRCODE = 'PT205',
                          HINT = format('An administrator runs: GRANT pgtasks_owner TO %I; then migrate again.',
                                        current_user);
            END;
        END IF;
        EXECUTE format('GRANT CREATE ON DATABASE %I TO pgtasks_owner', current_database());
    END IF;
END $members$;

------------------------------------------------------------------------------------------
-- 3. Table rules for hand-written SQL (before the ownership pass, so these new functions
--    are secured with the rest)

-- task_events.db_user: the login role that caused the change. Functions now run as
-- pgtasks_owner, so current_user would always say pgtasks_owner.
ALTER TABLE pgtasks.task_events ALTER COLUMN db_user SET DEFAULT session_user;

-- One function for every way an UPDATE can break the rules, called only for rows that do
-- (the WHEN clauses below), so a legal batch claim runs no PL/pgSQL.
CREATE OR REPLACE FUNCTION pgtasks.reject_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
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

-- The transition rule, written out rather than calling transition_reason(): a WHEN clause
-- is parsed once, here, so its operators are resolved now (in pg_catalog) and stored as
-- OIDs, while a SQL function inlined into it would be re-parsed under the caller's
-- search_path at run time. tests/sql/test_state_machine.py checks this list
-- against pgtasks.transitions for all 36 pairs. Now on every UPDATE, whatever columns it
-- names: BEFORE, so an illegal transition is PT001 before any CHECK constraint looks at it.
DROP TRIGGER tasks_check_transition ON pgtasks.tasks;
CREATE TRIGGER tasks_check_transition
    BEFORE UPDATE ON pgtasks.tasks
    FOR EACH ROW
    WHEN (OLD.status <> NEW.status AND NOT (
              (OLD.status IN ('PENDING', 'COMMIT') AND NEW.status IN ('RUNNING', 'CANCELLED'))
           OR (OLD.status = 'RUNNING' AND NEW.status IN ('COMMIT', 'DONE', 'FAILED', 'CANCELLED'))
           OR (OLD.status IN ('FAILED', 'CANCELLED') AND NEW.status = 'PENDING')))
    EXECUTE FUNCTION pgtasks.reject_transition();

-- The whole rule once more AFTER the row is written. BEFORE triggers run in name order, so
-- one added later (by an extension, or by hand) could change status or attempt after ours
-- checked; an AFTER ROW trigger sees the row as stored. Its WHEN clause is evaluated as the
-- row is written and queues nothing for a legal row, so legal updates pay the comparisons
-- only, no PL/pgSQL. Besides the transitions it holds the fencing columns to what the
-- functions do: attempt grows by one exactly when a task is claimed and never otherwise
-- (so `SET attempt = 0` cannot revive a stale token); a running task keeps its worker and
-- deadline; a lease never outlives the deadline.
CREATE TRIGGER tasks_check_update
    AFTER UPDATE ON pgtasks.tasks
    FOR EACH ROW
    WHEN ((OLD.status <> NEW.status AND NOT (
              (OLD.status IN ('PENDING', 'COMMIT') AND NEW.status IN ('RUNNING', 'CANCELLED'))
           OR (OLD.status = 'RUNNING' AND NEW.status IN ('COMMIT', 'DONE', 'FAILED', 'CANCELLED'))
           OR (OLD.status IN ('FAILED', 'CANCELLED') AND NEW.status = 'PENDING')))
       OR (NEW.attempt <> OLD.attempt + CASE WHEN OLD.status IN ('PENDING', 'COMMIT')
                                              AND NEW.status = 'RUNNING' THEN 1 ELSE 0 END)
       OR (OLD.status = 'RUNNING' AND NEW.status = 'RUNNING'
           AND (NEW.worker_id <> OLD.worker_id OR NEW.deadline <> OLD.deadline))
       OR NEW.lease_expires_at > NEW.deadline)
    EXECUTE FUNCTION pgtasks.reject_transition();

-- The insert rule, with the same reasoning: a new task starts PENDING at attempt 0.
CREATE OR REPLACE FUNCTION pgtasks.check_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'PENDING' THEN
        RAISE EXCEPTION 'pgtasks: a new task must start PENDING, not %', NEW.status
            USING ERRCODE = 'PT001',
                  HINT = 'Submit with pgtasks.submit_task(); the workers move it on.';
    END IF;
    RAISE EXCEPTION 'pgtasks: a new task starts at attempt 0, not %', NEW.attempt
        USING ERRCODE = 'PT201', HINT = 'Submit with pgtasks.submit_task(); claims count attempts.';
END $$;

DROP TRIGGER tasks_check_insert ON pgtasks.tasks;
CREATE TRIGGER tasks_check_insert
    BEFORE INSERT ON pgtasks.tasks
    FOR EACH ROW WHEN (NEW.status <> 'PENDING' OR NEW.attempt <> 0)
    EXECUTE FUNCTION pgtasks.check_insert();

-- History is append-only. Only pruning deletes it: prune_finished sets the
-- transaction-local setting pgtasks.pruning = on around its DELETE (below),
-- and task_errors rows also go when their task is deleted (the foreign key's cascade runs
-- inside the key's trigger, hence pg_trigger_depth() > 1). This guards against mistakes by
-- the owner; against everyone else the guard is that only the owner may write the tables.
-- Per statement, so pruning 1,000 tasks pays one call.
CREATE FUNCTION pgtasks.reject_history_change() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE TRIGGER task_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON pgtasks.task_events
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.reject_history_change();
CREATE TRIGGER task_errors_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON pgtasks.task_errors
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.reject_history_change();

-- Only pruning may delete history: 0003's prune_finished, plus the flag around its one
-- DELETE statement. (Not a SET clause on the function: only a superuser may attach a
-- custom setting to a function, and the migration must run without one.)
CREATE OR REPLACE FUNCTION pgtasks.prune_finished(
    older_than interval DEFAULT NULL,    -- NULL: settings.retention
    max_tasks  integer  DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql
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
    -- Lets the append-only triggers through for this statement only (see above).
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
    RETURN n;
END $$;

------------------------------------------------------------------------------------------
-- 4. Size limits. Sizes are bytes of JSON or log text, as 0003 measures params:
--    what a worker or client receives. Limits live in pgtasks.settings (configure()).

-- Raises PT203 when a result (or a step's result) is over settings.max_result_bytes.
CREATE FUNCTION pgtasks.check_result_size(result jsonb, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
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

-- Raises PT204 when a log line (or progress message) is over settings.max_log_bytes.
CREATE FUNCTION pgtasks.check_log_size(message text, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    max_bytes integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    IF octet_length(message) > max_bytes THEN
        RAISE EXCEPTION 'pgtasks: % of % bytes is larger than max_log_bytes (%)', what, octet_length(message), max_bytes
            USING ERRCODE = 'PT204',
                  HINT = 'Log less per line, or raise the limit: SELECT pgtasks.configure(max_log_bytes => ...).';
    END IF;
END $$;

-- As 0002, plus the result limit: PT203, and the task stays RUNNING for the worker to fail.
CREATE OR REPLACE FUNCTION pgtasks.finish_task(task_id bigint, attempt integer, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_result_size(result, 'result');
    UPDATE pgtasks.tasks t
       SET status = 'DONE', result = finish_task.result, finished_at = now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL,
           progress_current = coalesce(t.progress_total, t.progress_current)
     WHERE t.id = finish_task.task_id;
END $$;

-- As 0003, plus the result limit without failing the batch (STYLE §7: no single row makes
-- a statement fail for the others): a task whose result is over the limit is FAILED, not
-- retryable (the same code would produce the same result), with the PT203 message as its
-- error, and comes back in rejected_task_id like a stale attempt; the rest are finished.
-- The completer's poison-batch splitting never sees a PT203 from here.
CREATE OR REPLACE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[])
RETURNS TABLE (rejected_task_id bigint)
LANGUAGE plpgsql AS $$
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

-- As 0002, plus the step result limit (PT203).
CREATE OR REPLACE FUNCTION pgtasks.checkpoint(task_id bigint, attempt integer, step text, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
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

-- As 0002, plus the message limit (PT204).
CREATE OR REPLACE FUNCTION pgtasks.report_progress(
    task_id bigint, attempt integer, current bigint, total bigint DEFAULT NULL, message text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
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

-- As 0002, plus the line limit (PT204).
CREATE OR REPLACE FUNCTION pgtasks.log(task_id bigint, attempt integer, level text, message text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    PERFORM pgtasks.check_log_size(message, 'log line');
    PERFORM pgtasks.check_log_size(level, 'log level');
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message)
    VALUES (task_id, attempt, upper(coalesce(level, 'INFO')), coalesce(message, ''));
    PERFORM pgtasks.notify_watchers(task_id);
END $$;

-- As 0002, plus the line limit. One line over it rejects the whole call with PT204 and
-- writes nothing, rather than truncating: the caller (the Python worker buffers lines)
-- knows which line and can shorten it; a silently cut line could hide the part that mattered.
CREATE OR REPLACE FUNCTION pgtasks.log_many(
    task_id  bigint,
    attempt  integer,
    levels   text[],
    messages text[],
    ats      timestamptz[] DEFAULT NULL,   -- NULL: now
    loggers  text[]        DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql AS $$
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

------------------------------------------------------------------------------------------
-- 6. What the fuzzer found (tests/sql/test_fuzz.py keeps each as an @example)

-- run_at of yield_task and retry_task: the same rule as submit's (0003), so no infinite or
-- far-off time reaches a row a client decodes. NULL means now.
CREATE FUNCTION pgtasks.check_run_at(run_at timestamptz) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF run_at IS NOT NULL AND (NOT isfinite(run_at)
       OR run_at NOT BETWEEN now() - interval '100 years' AND now() + interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pgtasks.yield_task(task_id bigint, attempt integer, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    t := pgtasks.lock_task(task_id);
    IF t.status NOT IN ('FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % is %; only FAILED or CANCELLED tasks can be retried', task_id, t.status
            USING ERRCODE = 'PT001', HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    UPDATE pgtasks.tasks
       SET status = 'PENDING', retry_count = 0, finished_at = NULL, result = NULL,
           run_at = coalesce(retry_task.run_at, now())
     WHERE id = t.id;
END $$;

-- A worker id of a megabyte passed check_worker_id and then failed the registry's index
-- with 54000 (index row too big): names are bounded like task types and queues (0003).
CREATE OR REPLACE FUNCTION pgtasks.check_worker_id(worker_id text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF pgtasks.is_blank(worker_id) OR octet_length(worker_id) > 255 THEN
        RAISE EXCEPTION 'pgtasks: worker_id must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT121', HINT = 'Use a name unique to the worker process, e.g. host:pid:random.';
    END IF;
END $$;

-- register_worker: a NULL host or pid was a NOT NULL violation (23502), a blank or huge
-- host or a concurrency below 1 went in. PT206, one code for the registry's columns.
CREATE OR REPLACE FUNCTION pgtasks.register_worker(
    worker_id text, host text, pid integer, queues text[] DEFAULT NULL, concurrency integer DEFAULT 1,
    lease interval DEFAULT NULL    -- NULL: settings.default_lease
) RETURNS void
LANGUAGE plpgsql AS $$
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

------------------------------------------------------------------------------------------
-- 5. The cancel NOTIFY carries the attempt, so a worker stops the run that was cancelled
--    and not a later one (docs/worker-protocol.md). Payload: '<task_id>:<attempt>'.

CREATE OR REPLACE FUNCTION pgtasks.cancel_task(task_id bigint) RETURNS pgtasks.status
LANGUAGE plpgsql AS $$
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

------------------------------------------------------------------------------------------
-- A view for submitters: the status of every task, without params, results or errors
-- (which often quote the params). Readers see task_status, which has them.

CREATE VIEW pgtasks.task_overview AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority,
       t.attempt, t.retry_count, t.max_retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total,
       t.run_at, t.created_at, t.started_at, t.finished_at
  FROM pgtasks.tasks t;

-- Readers see everything, params included: task_status gains them (appended, as CREATE OR
-- REPLACE VIEW requires; the columns before are 0002's).
CREATE OR REPLACE VIEW pgtasks.task_status AS
SELECT t.id, t.task_type, t.queue, t.status, t.priority,
       t.attempt, t.retry_count || '/' || t.max_retries AS retries,
       CASE WHEN t.progress_total > 0
            THEN round(100.0 * t.progress_current / t.progress_total, 1) END AS percent,
       t.progress_current, t.progress_total, t.progress_message,
       t.worker_id, t.run_at, t.created_at, t.started_at, t.finished_at,
       coalesce(t.finished_at, now()) - t.started_at AS elapsed,
       t.result, t.error, t.params
  FROM pgtasks.tasks t;

------------------------------------------------------------------------------------------
-- 2. Ownership, SECURITY DEFINER, pinned search_path, no EXECUTE for PUBLIC.
--
-- One procedure does it for every object of the schema, so a later migration ends with
-- `CALL pgtasks.secure_objects();` instead of repeating the list (tests/sql/test_roles.py
-- fails the suite for any function that misses it). It runs as the migrating role
-- (SECURITY INVOKER on purpose: it changes owners, which the owner itself could not).

CREATE PROCEDURE pgtasks.secure_objects()
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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
    EXECUTE 'REVOKE ALL ON PROCEDURE pgtasks.secure_objects() FROM PUBLIC';
    -- Functions a later migration creates as pgtasks_owner start without PUBLIC EXECUTE.
    EXECUTE 'ALTER DEFAULT PRIVILEGES FOR ROLE pgtasks_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC';
    EXECUTE 'REVOKE ALL ON SCHEMA pgtasks FROM PUBLIC';
    EXECUTE 'GRANT USAGE ON SCHEMA pgtasks TO pgtasks_submitter, pgtasks_worker, pgtasks_reader, pgtasks_admin';
    CALL pgtasks.grant_roles();
END $$;

-- Who may call what. Functions are granted by name (all overloads), views by name; a name
-- that does not exist (yet) is skipped, so later migrations can call this again.
CREATE PROCEDURE pgtasks.grant_roles()
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

CALL pgtasks.secure_objects();
