-- pgtasks 0003: policies live in the database, and no input can break the API.
--
-- Overview of what changes, and why:
--   * pgtasks.settings: one typed row holding every deployment-wide default and limit. Each
--     default is written once, there; functions read it (before it, the 60 s lease was
--     written in six places, max_retries and timeout in four).
--   * pgtasks.task_types: per-type policies that workers register at start. submit_task
--     resolves an omitted argument as explicit value > the type's policy > settings, so a
--     psql submit behaves like a Python one (`submit_task('resize')` once landed in the
--     wrong queue and no worker ever ran it).
--   * tasks.backoff_base: the backoff policy lives on the row, so fail_task and rescue
--     retry after the same delay (rescue once used 1 s where the type said 60 s).
--   * Every argument is range-checked with its own SQLSTATE, backoff cannot overflow, and
--     no single row can make rescue fail for the others (params limits here; 0004 enforces the result and log-line limits of the settings row).
--   * maintain(), finish_and_claim(), task_steps_of() and two read views, so workers in
--     any language need neither a Python process nor direct table reads.
--
-- New SQLSTATEs (PT101..PT111 keep their meaning, see 0001/0002 and docs/sql-api.md):
--   PT112 backoff_base out of range          PT113 params larger than max_params_bytes
--   PT114 lease out of range                 PT115 max_tasks / claim_max out of range
--   PT116 batch arrays of different lengths  PT117 attempt (fencing token) is NULL
--   PT118 setting out of range               PT119 retry_delay out of range
--   PT120 older_than out of range            PT121 worker_id NULL or blank
--
-- Every function created here pins `search_path = pg_catalog, pgtasks, pg_temp`: with
-- pg_catalog first, a function planted in `public` can never shadow a
-- built-in we call. Overloadable built-ins are schema-qualified as well.

------------------------------------------------------------------------------------------
-- Blank names

-- True for NULL and for text made only of whitespace, control or invisible characters.
-- btrim() and [[:space:]] only know ASCII (and, with a C locale, nothing else), so a queue
-- named '\t' or U+3000 passed the old check. The class lists every
-- Unicode White_Space character plus the zero-width ones that render as nothing.
CREATE FUNCTION pgtasks.is_blank(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT value IS NULL
        OR value ~ '^[[:space:][:cntrl:]\u0085\u00a0\u1680\u180e\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]*$'
$$;

------------------------------------------------------------------------------------------
-- Settings: one row, typed columns, each default written once (here)

CREATE TABLE pgtasks.settings (
    -- Always true: the primary key admits exactly one row.
    id                   boolean PRIMARY KEY DEFAULT true CHECK (id),
    default_queue        text     NOT NULL DEFAULT 'default',
    default_priority     integer  NOT NULL DEFAULT 0,
    default_max_retries  integer  NOT NULL DEFAULT 3,
    default_timeout      interval NOT NULL DEFAULT interval '4 hours',
    default_backoff_base interval NOT NULL DEFAULT interval '1 second',
    max_backoff          interval NOT NULL DEFAULT interval '1 hour',
    default_lease        interval NOT NULL DEFAULT interval '60 seconds',
    retention            interval NOT NULL DEFAULT interval '7 days',
    -- Sizes are of the JSON text (what a worker receives and decodes). 1 MiB of params suits
    -- a queue; bigger payloads belong in storage the task reads (255 MB
    -- of params were accepted and one worker grew to 844 MB).
    max_params_bytes     integer  NOT NULL DEFAULT 1048576,
    max_result_bytes     integer  NOT NULL DEFAULT 1048576,
    max_log_bytes        integer  NOT NULL DEFAULT 65536,

    -- The same ranges configure() and submit_task() check, as a backstop for hand-written
    -- UPDATEs. The upper bounds keep now() + value far from timestamp overflow.
    CONSTRAINT default_queue_named CHECK (NOT pgtasks.is_blank(default_queue)
                                          AND octet_length(default_queue) <= 255),
    CONSTRAINT default_max_retries_range CHECK (default_max_retries BETWEEN 0 AND 1000),
    CONSTRAINT default_timeout_range CHECK (default_timeout > interval '0'
                                            AND default_timeout <= interval '1 year'),
    CONSTRAINT default_backoff_base_range CHECK (default_backoff_base > interval '0'
                                                 AND default_backoff_base <= interval '1 day'),
    CONSTRAINT max_backoff_range CHECK (max_backoff > interval '0' AND max_backoff <= interval '1 year'),
    CONSTRAINT default_lease_range CHECK (default_lease > interval '0' AND default_lease <= interval '1 day'),
    CONSTRAINT retention_range CHECK (retention > interval '0' AND retention <= interval '100 years'),
    -- jsonb values stop at 255 MB anyway; the bound only keeps the setting meaningful.
    CONSTRAINT max_params_bytes_range CHECK (max_params_bytes BETWEEN 2 AND 268435455),
    CONSTRAINT max_result_bytes_range CHECK (max_result_bytes BETWEEN 1 AND 268435455),
    CONSTRAINT max_log_bytes_range CHECK (max_log_bytes BETWEEN 1 AND 268435455)
);
INSERT INTO pgtasks.settings DEFAULT VALUES;

-- Every function reads the row, so it must always exist.
CREATE FUNCTION pgtasks.keep_settings_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pgtasks: the settings row cannot be deleted'
        USING ERRCODE = 'PT118', HINT = 'Change values with pgtasks.configure(name => value).';
END $$;

CREATE TRIGGER settings_keep_row
    BEFORE DELETE OR TRUNCATE ON pgtasks.settings
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.keep_settings_row();

-- The settings row, for column defaults and for callers that want all of it at once.
CREATE FUNCTION pgtasks.current_settings() RETURNS pgtasks.settings
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT s FROM pgtasks.settings s
$$;

------------------------------------------------------------------------------------------
-- Policy checks, shared by submit_task(s), register_task_type and configure, so a value
-- is accepted or refused the same way (and with the same SQLSTATE) wherever it is given.
-- NULL means "not given" and passes; callers decide what a missing value means.

CREATE FUNCTION pgtasks.check_policy(
    task_type     text,
    queue         text     DEFAULT NULL,
    max_retries   integer  DEFAULT NULL,
    timeout       interval DEFAULT NULL,
    backoff_base  interval DEFAULT NULL,
    type_required boolean  DEFAULT true
) RETURNS void
LANGUAGE plpgsql IMMUTABLE
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
    -- A claim computes now() + timeout; past a year that is a typo, and '300000 years' made
    -- every claim that reached the task fail.
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

-- A lease as given, or settings.default_lease when NULL. Zero or negative leases were
-- accepted before and made every claimed task instantly rescuable.
CREATE FUNCTION pgtasks.lease_or_default(lease interval) RETURNS interval
LANGUAGE plpgsql STABLE
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

CREATE FUNCTION pgtasks.check_worker_id(worker_id text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.is_blank(worker_id) THEN
        RAISE EXCEPTION 'pgtasks: worker_id must be a non-blank string'
            USING ERRCODE = 'PT121', HINT = 'Use a name unique to the worker process, e.g. host:pid:random.';
    END IF;
END $$;

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
    max_log_bytes        integer  DEFAULT NULL
) RETURNS pgtasks.settings
LANGUAGE plpgsql
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

------------------------------------------------------------------------------------------
-- Task types: the policies workers register, applied to every submit

CREATE TABLE pgtasks.task_types (
    task_type     text PRIMARY KEY,
    -- NULL in a policy column: this type has no policy there; settings apply.
    queue         text,
    priority      integer,
    max_retries   integer,
    timeout       interval,
    backoff_base  interval,
    registered_by text,                   -- worker_id of the last registration that changed it
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT task_type_named CHECK (NOT pgtasks.is_blank(task_type) AND octet_length(task_type) <= 255),
    CONSTRAINT queue_named CHECK (queue IS NULL OR (NOT pgtasks.is_blank(queue) AND octet_length(queue) <= 255)),
    CONSTRAINT max_retries_range CHECK (max_retries BETWEEN 0 AND 1000),
    CONSTRAINT timeout_range CHECK (timeout > interval '0' AND timeout <= interval '1 year'),
    CONSTRAINT backoff_base_range CHECK (backoff_base > interval '0' AND backoff_base <= interval '1 day')
);

-- Upsert of one type's whole policy: the latest registration wins, NULLs included (a
-- worker whose code dropped `queue=` clears it). An unchanged policy is not rewritten, so
-- a fleet restarting does not churn the row or its updated_at.
CREATE FUNCTION pgtasks.register_task_type(
    task_type    text,
    queue        text     DEFAULT NULL,
    priority     integer  DEFAULT NULL,
    max_retries  integer  DEFAULT NULL,
    timeout      interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL,
    worker_id    text     DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- What a submit of each registered type gets when the caller leaves an argument out.
CREATE VIEW pgtasks.registered_types AS
SELECT t.task_type,
       coalesce(t.queue, s.default_queue)               AS queue,
       coalesce(t.priority, s.default_priority)         AS priority,
       coalesce(t.max_retries, s.default_max_retries)   AS max_retries,
       coalesce(t.timeout, s.default_timeout)           AS timeout,
       coalesce(t.backoff_base, s.default_backoff_base) AS backoff_base,
       t.registered_by, t.updated_at
  FROM pgtasks.task_types t CROSS JOIN pgtasks.settings s;

------------------------------------------------------------------------------------------
-- Tasks carry their backoff policy

-- The constant fills existing rows without a table rewrite; new rows get the value from
-- submit_task, and a raw INSERT from the settings (default below).
ALTER TABLE pgtasks.tasks
    ADD COLUMN backoff_base interval NOT NULL DEFAULT interval '1 second';

-- Rows submitted before 0003 may hold values no claim can use: a '300000 years' timeout
-- made every claim that reached the row fail with `timestamp out of range`, and infinite
-- run_at values crash clients. Clamp them to the bounds submit
-- now enforces, then let the table refuse such values whoever writes them (one scan for
-- the three constraints).
UPDATE pgtasks.tasks SET timeout = interval '1 year' WHERE timeout > interval '1 year';
UPDATE pgtasks.tasks
   SET run_at = CASE WHEN run_at < now() THEN created_at ELSE now() + interval '100 years' END
 WHERE NOT isfinite(run_at);
ALTER TABLE pgtasks.tasks
    ADD CONSTRAINT backoff_base_positive CHECK (backoff_base > interval '0'),
    ADD CONSTRAINT timeout_at_most_a_year CHECK (timeout <= interval '1 year'),
    ADD CONSTRAINT run_at_finite CHECK (isfinite(run_at));

-- A hand-written INSERT gets the deployment's defaults, not the constants 0001 wrote.
ALTER TABLE pgtasks.tasks
    ALTER COLUMN queue        SET DEFAULT (pgtasks.current_settings()).default_queue,
    ALTER COLUMN priority     SET DEFAULT (pgtasks.current_settings()).default_priority,
    ALTER COLUMN max_retries  SET DEFAULT (pgtasks.current_settings()).default_max_retries,
    ALTER COLUMN timeout      SET DEFAULT (pgtasks.current_settings()).default_timeout,
    ALTER COLUMN backoff_base SET DEFAULT (pgtasks.current_settings()).default_backoff_base;

ALTER TABLE pgtasks.worker_registry
    ALTER COLUMN lease SET DEFAULT (pgtasks.current_settings()).default_lease;

-- Functions may become SECURITY DEFINER (0004): current_user would then be their owner,
-- session_user is still who logged in.
ALTER TABLE pgtasks.task_events ALTER COLUMN db_user SET DEFAULT session_user;

------------------------------------------------------------------------------------------
-- Submitting

-- The row a submit inserts, minus params: each omitted (NULL) argument resolved as the
-- type's registered policy, else the settings default, then every value checked.
-- One index probe on task_types and one read of settings per call, whatever the batch.
CREATE FUNCTION pgtasks.submit_policy(
    task_type    text,
    queue        text,
    priority     integer,
    run_at       timestamptz,
    max_retries  integer,
    timeout      interval,
    backoff_base interval
) RETURNS pgtasks.tasks
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgtasks, pg_temp
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
    -- Infinite or far-off times crash clients that decode them (an idle
    -- Python worker died on 'infinity', `pgtasks stats` on '-infinity').
    IF NOT isfinite(r.run_at)
       OR r.run_at NOT BETWEEN now() - interval '100 years' AND now() + interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', r.run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
    RETURN r;
END $$;

-- Same signature as 0002's: only the size limit is new.
CREATE OR REPLACE FUNCTION pgtasks.check_params(params jsonb, item integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- A whole list checked in one statement; the first bad item raises through check_params,
-- so its message names the item.
CREATE FUNCTION pgtasks.check_params_list(params_list jsonb[]) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- The argument lists change (backoff_base, NULL defaults), so the old ones go first:
-- CREATE OR REPLACE would add overloads that make every call ambiguous.
DROP FUNCTION pgtasks.submit_task(text, jsonb, text, integer, timestamptz, integer, interval);
DROP FUNCTION pgtasks.submit_tasks(text, jsonb[], text, integer, timestamptz, integer, interval);
DROP FUNCTION pgtasks.check_submit_args(text, text, integer, timestamptz, integer, interval);

CREATE FUNCTION pgtasks.submit_task(
    task_type    text,
    params       jsonb       DEFAULT '{}',
    queue        text        DEFAULT NULL,   -- NULL: the type's policy, else settings
    priority     integer     DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,   -- NULL: now
    max_retries  integer     DEFAULT NULL,
    timeout      interval    DEFAULT NULL,
    backoff_base interval    DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
BEGIN
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
    PERFORM pgtasks.check_params(params);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout, backoff_base)
    VALUES (p.task_type, submit_task.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- Many tasks of one type in one statement: one round trip, one NOTIFY per queue.
CREATE FUNCTION pgtasks.submit_tasks(
    task_type    text,
    params_list  jsonb[],
    queue        text        DEFAULT NULL,
    priority     integer     DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    max_retries  integer     DEFAULT NULL,
    timeout      interval    DEFAULT NULL,
    backoff_base interval    DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p pgtasks.tasks;
BEGIN
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base);
    PERFORM pgtasks.check_params_list(params_list);
    RETURN QUERY
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout, backoff_base)
    SELECT p.task_type, u.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout, p.backoff_base
      FROM unnest(params_list) WITH ORDINALITY AS u(params, ord)
     ORDER BY u.ord
    RETURNING id;
END $$;

------------------------------------------------------------------------------------------
-- Claiming and leases

-- Only the lease default (settings) and the argument checks are new; see 0002 for the
-- plan notes. The static per-case statements stay: each is an index walk in claim order.
DROP FUNCTION pgtasks.claim_tasks(text, text[], integer, interval, text[]);

CREATE FUNCTION pgtasks.claim_tasks(
    worker_id  text,
    queues     text[]   DEFAULT NULL,    -- NULL: every queue
    max_tasks  integer  DEFAULT 1,
    lease      interval DEFAULT NULL,    -- NULL: settings.default_lease
    task_types text[]   DEFAULT NULL     -- NULL: every type; workers pass the types they know
) RETURNS TABLE (
    id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean
)
LANGUAGE plpgsql
-- Stale statistics must not turn the pick into bitmap + sort (see 0002).
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    picked bigint[];
    lease_for interval;
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL used to mean "no LIMIT": claim_tasks(max_tasks => NULL) took all 500 ready tasks.
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Claim as many tasks as the worker has free slots.';
    END IF;
    lease_for := pgtasks.lease_or_default(lease);

    IF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND (claim_tasks.task_types IS NULL OR t.task_type = ANY (claim_tasks.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = claim_tasks.queues[1]
               AND (claim_tasks.task_types IS NULL OR t.task_type = ANY (claim_tasks.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()
               AND t.queue = ANY (claim_tasks.queues)
               AND (claim_tasks.task_types IS NULL OR t.task_type = ANY (claim_tasks.task_types))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    IF picked IS NULL THEN
        RETURN;
    END IF;

    -- Rows come back in claim order (the order of picked).
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgtasks.tasks t
           SET status = 'RUNNING',
               worker_id = claim_tasks.worker_id,
               attempt = t.attempt + 1,
               started_at = coalesce(t.started_at, now()),
               deadline = now() + t.timeout,
               lease_expires_at = least(now() + lease_for, now() + t.timeout)
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps
    )
    SELECT c.* FROM claimed c
      JOIN unnest(picked) WITH ORDINALITY AS p(id, ord) ON p.id = c.id
     ORDER BY p.ord;
END $$;

-- Batches are parallel arrays; unnest() pads a short one with NULLs, which finished a task
-- with a NULL result. Every batch function checks lengths here.
CREATE FUNCTION pgtasks.check_batch(what text, task_ids bigint[], attempts integer[], results jsonb[] DEFAULT NULL,
                                    with_results boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
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

DROP FUNCTION pgtasks.heartbeat(text, bigint[], integer[], interval);

-- Extends the leases of all of a worker's running tasks in one statement and reports the
-- ones it no longer owns (cancelled, rescued), so the worker can stop them.
CREATE FUNCTION pgtasks.heartbeat(
    worker_id text,
    task_ids  bigint[],
    attempts  integer[],
    lease     interval DEFAULT NULL    -- NULL: settings.default_lease
) RETURNS TABLE (lost_task_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- register_worker's lease default comes from settings too (same signature otherwise).
DROP FUNCTION pgtasks.register_worker(text, text, integer, text[], integer, interval);

CREATE FUNCTION pgtasks.register_worker(
    worker_id text, host text, pid integer, queues text[] DEFAULT NULL, concurrency integer DEFAULT 1,
    lease interval DEFAULT NULL    -- NULL: settings.default_lease
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    INSERT INTO pgtasks.worker_registry AS w (worker_id, host, pid, queues, concurrency, lease)
    VALUES (register_worker.worker_id, register_worker.host, register_worker.pid, register_worker.queues,
            register_worker.concurrency, pgtasks.lease_or_default(register_worker.lease))
    ON CONFLICT ON CONSTRAINT worker_registry_pkey DO UPDATE SET last_seen = now();
END $$;

------------------------------------------------------------------------------------------
-- Fencing

-- Same as 0002, plus: a NULL attempt compared as "unknown", which IF treats as false, so
-- finish_task(id, NULL, ...) finished a task another worker owned.
-- Every fenced function goes through here, so all of them refuse a missing token.
CREATE OR REPLACE FUNCTION pgtasks.lock_owned_task(task_id bigint, attempt integer)
RETURNS pgtasks.tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- A resumed attempt's completed steps, read through the fence: a worker that lost the
-- task gets PT002 instead of steps it must not act on. db_now lets the worker relate its
-- clock to the database's (sleep_until deadlines are database time).
CREATE FUNCTION pgtasks.task_steps_of(task_id bigint, attempt integer)
RETURNS TABLE (name text, result jsonb, db_now timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, attempt);
    RETURN QUERY
    SELECT s.name, s.result, now() FROM pgtasks.task_steps s
     WHERE s.task_id = task_steps_of.task_id
     ORDER BY s.at, s.name;
END $$;

------------------------------------------------------------------------------------------
-- Finishing

DROP FUNCTION pgtasks.finish_tasks(bigint[], integer[], jsonb[]);

-- The batched completer: many results in one statement. Never raises for a stale
-- attempt; it returns the ids it did not finish so the worker can log them.
-- plpgsql only for the length check; the work is the one statement of 0002.
CREATE FUNCTION pgtasks.finish_tasks(task_ids bigint[], attempts integer[], results jsonb[])
RETURNS TABLE (rejected_task_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);
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
    -- NOT EXISTS, not NOT IN: see heartbeat (a NULL attempt must come back rejected).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.attempt = batch.attempt);
END $$;

-- "Results in, work out" in one round trip: finishes the batch exactly like finish_tasks,
-- then claims exactly like claim_tasks (same plans: it calls it). Rejected finishes come
-- first, as rows with only rejected_task_id set; then the claimed tasks in claim order,
-- with rejected_task_id NULL. claim_max 0 only finishes.
CREATE FUNCTION pgtasks.finish_and_claim(
    worker_id  text,
    task_ids   bigint[],
    attempts   integer[],
    results    jsonb[],
    claim_max  integer  DEFAULT 0,
    queues     text[]   DEFAULT NULL,
    lease      interval DEFAULT NULL,
    task_types text[]   DEFAULT NULL
) RETURNS TABLE (
    rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    -- Checked before finishing, so a bad claim argument does not roll back a good batch
    -- after the fact: the whole call fails before writing anything.
    IF claim_max IS NULL OR claim_max < 0 THEN
        RAISE EXCEPTION 'pgtasks: claim_max must be 0 or more, got %', coalesce(claim_max::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Pass the number of free slots; 0 only finishes the batch.';
    END IF;
    PERFORM pgtasks.check_worker_id(worker_id);
    PERFORM pgtasks.lease_or_default(lease);

    RETURN QUERY
    SELECT f.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
      FROM pgtasks.finish_tasks(task_ids, attempts, results) f;
    IF claim_max > 0 THEN
        RETURN QUERY
        SELECT NULL::bigint, c.* FROM pgtasks.claim_tasks(worker_id, queues, claim_max, lease, task_types) c;
    END IF;
END $$;

-- Exponential backoff with jitter: about base, 2 base, 4 base ... (+-20%), capped at
-- settings.max_backoff. Computed in float seconds with the exponent capped, so no retry
-- count can overflow it: the interval version overflowed at retry ~44 and made every
-- rescue_expired call abort. NULL base: settings.default_backoff_base.
DROP FUNCTION pgtasks.backoff(integer, interval);

CREATE FUNCTION pgtasks.backoff(retry_count integer, base interval DEFAULT NULL)
RETURNS interval
LANGUAGE sql VOLATILE
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

-- Shared by fail_task and rescue: writes the attempt's error, then moves the task on.
-- Same as 0002 except that the backoff comes from the row's own backoff_base.
CREATE OR REPLACE FUNCTION pgtasks.record_failure(
    t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval
) RETURNS pgtasks.status
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- The backoff_base argument is gone: the row carries the type's base (see submit_policy).
DROP FUNCTION pgtasks.fail_task(bigint, integer, text, text, boolean, interval, interval);

CREATE FUNCTION pgtasks.fail_task(
    task_id     bigint,
    attempt     integer,
    error       text,
    traceback   text     DEFAULT NULL,
    retryable   boolean  DEFAULT true,
    retry_delay interval DEFAULT NULL       -- exact delay (Retry(delay=...)); else backoff
) RETURNS pgtasks.status
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    -- run_at becomes now() + retry_delay: the same 100-year bound as a submit's run_at.
    IF retry_delay IS NOT NULL
       AND NOT (retry_delay >= interval '0' AND retry_delay <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: retry_delay must be between 0 and 100 years, got %', retry_delay
            USING ERRCODE = 'PT119', HINT = 'Leave retry_delay out (NULL) for the task''s backoff.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, attempt);
    RETURN pgtasks.record_failure(t, coalesce(nullif(error, ''), 'unknown error'), traceback,
                                  coalesce(retryable, true), retry_delay);
END $$;

------------------------------------------------------------------------------------------
-- Maintenance: one call any worker, in any language, makes on a timer

CREATE FUNCTION pgtasks.check_max_tasks(max_tasks integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Maintenance works in batches; 1000 is a good size.';
    END IF;
END $$;

-- The message rescue records for an expired attempt.
CREATE FUNCTION pgtasks.expiry_reason(t pgtasks.tasks) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE WHEN t.deadline < now()
                THEN pg_catalog.format('timed out: ran past its %s time limit (worker %s)', t.timeout, t.worker_id)
                ELSE pg_catalog.format('lease expired: worker %s stopped heartbeating', t.worker_id) END
$$;

-- Locks up to max_tasks expired tasks, oldest expiry first, skipping any another rescuer
-- holds. lease_expires_at never exceeds deadline, so this also catches overrun deadlines.
CREATE FUNCTION pgtasks.lock_expired(max_tasks integer) RETURNS SETOF pgtasks.tasks
LANGUAGE sql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT * FROM pgtasks.tasks t
     WHERE t.lease_expires_at IS NOT NULL AND t.lease_expires_at < now()
     ORDER BY t.lease_expires_at
     LIMIT lock_expired.max_tasks
     FOR NO KEY UPDATE SKIP LOCKED
$$;

-- Tasks whose lease expired (worker died or hung) or that ran past their deadline are
-- handed on as a failed attempt: COMMIT to resume elsewhere, or FAILED when retries are
-- used up. SKIP LOCKED lets every worker call this without queueing behind each other.
--
-- No single row may stop the rescue of the others. The backoff can no
-- longer overflow, and the batch runs in one subtransaction: should a row still fail
-- (a hand-added trigger or constraint), the batch is redone row by row, each row in its own
-- subtransaction; a row that cannot be rescued is marked FAILED with the reason, and one
-- that cannot even be marked is skipped with a WARNING. Per-row subtransactions only on
-- that path: a thousand of them in every call would overflow the subtransaction cache.
CREATE OR REPLACE FUNCTION pgtasks.rescue_expired(max_tasks integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- One expired task, isolated: returns 1 when it was handed on (or failed), 0 when skipped.
CREATE FUNCTION pgtasks.rescue_one(t pgtasks.tasks) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

DROP FUNCTION pgtasks.prune_finished(interval, integer);

-- Deletes finished tasks older than the retention, in small batches so no long lock is held.
CREATE FUNCTION pgtasks.prune_finished(
    older_than interval DEFAULT NULL,    -- NULL: settings.retention
    max_tasks  integer  DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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
    RETURN n;
END $$;

-- Rescue, one prune batch and the sweeps. Workers of every language call it on a timer;
-- when one call is already running, the others return (0, 0) at once instead of queueing
-- behind its sweeps (the work is the same whoever does it).
CREATE FUNCTION pgtasks.maintain(max_tasks integer DEFAULT 1000)
RETURNS TABLE (rescued integer, pruned integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

------------------------------------------------------------------------------------------
-- Read views, so clients and workers need no direct table access

CREATE VIEW pgtasks.task_log_lines AS
SELECT l.id, l.task_id, l.attempt, l.level, l.message, l.logger, l.at
  FROM pgtasks.task_logs l;

CREATE VIEW pgtasks.task_attempt_errors AS
SELECT e.task_id, e.attempt, e.error, e.traceback, e.at
  FROM pgtasks.task_errors e;
