-- pgtasks tables: the status type and every table, with the constraints that hold for any
-- writer (a pgtasks function, a hand-written UPDATE in psql) and the indexes each hot path
-- walks. The functions that write the tables come in the following files.

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- The status of a task (00_overview.sql describes each). WAITING comes first: it comes
-- before PENDING in a task's life.

CREATE TYPE pgtasks.status AS ENUM ('WAITING', 'PENDING', 'RUNNING', 'COMMIT', 'DONE', 'FAILED', 'CANCELLED');
COMMENT ON TYPE pgtasks.status IS
    'The status of a task; pgtasks.transitions lists the allowed changes between them.';

------------------------------------------------------------------------------------------
-- Blank names. Defined before the tables because their CHECK constraints call it.
--
-- True for NULL and for text made only of whitespace, control or invisible characters.
-- btrim() and [[:space:]] only know ASCII (and, with a C locale, nothing else), so a queue
-- named '\t' or U+3000 would pass a simpler test. The class lists, by code point, every
-- Unicode White_Space character, the C0 and C1 controls, every Default_Ignorable_Code_Point
-- (zero-width spaces and joiners, direction marks and isolates, variation selectors,
-- Hangul fillers, tags: characters a font draws as nothing) and the format controls and
-- blanks that render as nothing without being ignorable (interlinear annotation, Egyptian
-- format controls, U+2800 BRAILLE PATTERN BLANK). A name made only of these looks empty in
-- every list and log line, and two of them cannot be told apart.
CREATE FUNCTION pgtasks.is_blank(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT value IS NULL
        OR value ~ '^[[:space:][:cntrl:]\u0001-\u001f\u007f-\u009f\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]*$'
$$;
COMMENT ON FUNCTION pgtasks.is_blank(text) IS
    'True for NULL and for text made only of whitespace, control or invisible characters, Unicode included.';

------------------------------------------------------------------------------------------
-- The clock every rule decides by. pgtasks.now() (02_checks.sql) is now() plus the shift
-- held here; the table is empty outside tests, so the shift is zero. Only the owner writes
-- it (pgtasks.advance_clock), so no worker or submitter can move time to rescue a lease,
-- fire a schedule or end a unique window early. Column defaults and the views keep the wall
-- clock: they record and show when something happened.

CREATE TABLE pgtasks.clock (
    shift    interval NOT NULL CHECK (shift >= interval '0'),
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE pgtasks.clock IS
    'The test clock: pgtasks.now() is now() plus shift. Empty (no shift) outside tests; only the owner moves it, with advance_clock.';

------------------------------------------------------------------------------------------
-- The wake-up key. Any role may LISTEN, so a wake-up names no queue: its payload is a tag,
-- the first 8 hex digits of sha256(key || queue) (queue_tag, 03_state_machine.sql), and
-- workers ask queue_tag for the tags of their own queues. Without the key, which only the
-- owner reads, a tag cannot be turned back into a name by trying likely ones. Drawn at
-- install from gen_random_uuid (core PostgreSQL's strong random source): two version-4
-- UUIDs, 244 random bits.

CREATE TABLE pgtasks.wakeup_key (
    key      bytea NOT NULL DEFAULT (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO pgtasks.wakeup_key DEFAULT VALUES;
COMMENT ON TABLE pgtasks.wakeup_key IS
    'The secret that wake-up tags are computed with (queue_tag): one random row, drawn at install, read by the owner only.';

------------------------------------------------------------------------------------------
-- Settings: one row, typed columns, each deployment-wide default and limit written once,
-- here. Functions read the row; configure() (02_checks.sql) changes it.

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
    -- a queue; bigger payloads belong in storage the task reads (unbounded, 255 MB of params
    -- were accepted and one worker grew to 844 MB decoding them).
    max_params_bytes     integer  NOT NULL DEFAULT 1048576,
    max_result_bytes     integer  NOT NULL DEFAULT 1048576,
    max_log_bytes        integer  NOT NULL DEFAULT 65536,
    -- Schedules (09_schedules.sql). The shortest `every` a schedule may be declared with:
    -- workers fire about once a second, so a shorter one only makes each firing enqueue a
    -- burst (every '1 millisecond' enqueued 1,120 tasks in one firing).
    schedule_min_every   interval NOT NULL DEFAULT interval '1 second',
    -- The most tasks one firing of a schedule enqueues. Due ticks beyond it (the oldest:
    -- a catch-up after an outage) are skipped and counted, as Kubernetes' CronJob gives up
    -- past 100 missed start times, so no declaration or outage makes one firing insert
    -- millions of rows.
    schedule_max_ticks   integer  NOT NULL DEFAULT 100,
    -- The most snoozes (snooze_task, 06_finish.sql) one task may take: the next one fails
    -- it. A task that snoozes on every attempt (waiting on a condition that never comes)
    -- would otherwise come back forever without spending a retry; 100 snoozes of a minute
    -- is well over an hour of patience.
    max_snoozes          integer  NOT NULL DEFAULT 100,

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
    CONSTRAINT max_log_bytes_range CHECK (max_log_bytes BETWEEN 1 AND 268435455),
    CONSTRAINT schedule_min_every_range CHECK (schedule_min_every > interval '0'
                                               AND schedule_min_every <= interval '1 day'),
    CONSTRAINT schedule_max_ticks_range CHECK (schedule_max_ticks BETWEEN 1 AND 100000),
    CONSTRAINT max_snoozes_range CHECK (max_snoozes BETWEEN 0 AND 1000000)
);
INSERT INTO pgtasks.settings DEFAULT VALUES;
COMMENT ON TABLE pgtasks.settings IS
    'The deployment-wide defaults and limits: exactly one row, changed with pgtasks.configure().';
COMMENT ON COLUMN pgtasks.settings.id IS 'Always true: the primary key admits exactly one row.';
COMMENT ON COLUMN pgtasks.settings.default_queue IS
    'The queue of a submit that names none and whose task type has no queue policy.';
COMMENT ON COLUMN pgtasks.settings.max_backoff IS 'The longest wait before a retry, whatever the backoff base.';
COMMENT ON COLUMN pgtasks.settings.default_lease IS
    'The lease of a claim, heartbeat or worker registration that gives none.';
COMMENT ON COLUMN pgtasks.settings.retention IS
    'How long finished tasks are kept before prune_finished deletes them with their history.';
COMMENT ON COLUMN pgtasks.settings.max_params_bytes IS 'The largest params a submit accepts, in bytes of JSON text.';
COMMENT ON COLUMN pgtasks.settings.max_result_bytes IS
    'The largest result or step result a finish or checkpoint accepts, in bytes of JSON text.';
COMMENT ON COLUMN pgtasks.settings.max_log_bytes IS
    'The largest log line, level, logger name or progress message, in bytes; failure texts are clipped to it.';
COMMENT ON COLUMN pgtasks.settings.schedule_min_every IS
    'The shortest every a schedule may be created or declared with.';
COMMENT ON COLUMN pgtasks.settings.schedule_max_ticks IS
    'The most tasks one firing of a schedule enqueues; older due ticks beyond it are skipped and counted.';

-- Every function reads the row, so it must always exist.
CREATE FUNCTION pgtasks.keep_settings_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pgtasks: the settings row cannot be deleted'
        USING ERRCODE = 'PT118', HINT = 'Change values with pgtasks.configure(name => value).';
END $$;
COMMENT ON FUNCTION pgtasks.keep_settings_row() IS
    'Trigger function: the settings row cannot be deleted or truncated (PT118).';

CREATE TRIGGER settings_keep_row
    BEFORE DELETE OR TRUNCATE ON pgtasks.settings
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.keep_settings_row();

-- The settings row, for the column defaults below (a hand-written INSERT gets the
-- deployment's defaults) and for callers that want all of it at once. Defined before the
-- tables whose defaults call it.
CREATE FUNCTION pgtasks.current_settings() RETURNS pgtasks.settings
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT s FROM pgtasks.settings s
$$;

-- The deployment's defaults and limits are no secret; workers of any language read them.
GRANT EXECUTE ON FUNCTION pgtasks.current_settings() TO pgtasks_worker, pgtasks_reader;
COMMENT ON FUNCTION pgtasks.current_settings() IS 'The settings row: the deployment-wide defaults and limits.';

-- A W3C trace context (https://www.w3.org/TR/trace-context/#traceparent-header) of version
-- 00, as the tasks.traceparent default and submit_task take it: exactly 55 characters,
-- lower-case hex, and neither the trace id nor the parent id all zeros (the spec's invalid
-- values). Returns it; NULL and '' mean none (NULL). Defined before the table whose
-- default calls it.
CREATE FUNCTION pgtasks.check_traceparent(traceparent text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF traceparent IS NULL OR traceparent = '' THEN
        RETURN NULL;
    END IF;
    IF octet_length(traceparent) <> 55
       OR traceparent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       OR substr(traceparent, 4, 32) = repeat('0', 32)
       OR substr(traceparent, 37, 16) = repeat('0', 16) THEN
        RAISE EXCEPTION 'pgtasks: traceparent must be a W3C trace context of version 00, got %',
                pg_catalog.quote_literal(left(traceparent, 80))
            USING ERRCODE = 'PT131',
                  HINT = 'Pass 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, lower case, ids not all zeros (55 characters), or NULL for none.';
    END IF;
    RETURN traceparent;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.check_traceparent(text) TO pgtasks_submitter, pgtasks_worker;
COMMENT ON FUNCTION pgtasks.check_traceparent(text) IS
    'Returns a W3C traceparent of version 00 as given (NULL for NULL or empty), or raises PT131 when it is malformed.';

-- A W3C tracestate (https://www.w3.org/TR/trace-context/#tracestate-header), the vendor
-- entries that travel with a traceparent, as the tasks.tracestate default, its CHECK and
-- the submit functions take it: at most 512 characters (what the spec asks every vendor
-- to pass on), at most 32 comma-separated list members, each empty or key=value with
-- optional spaces or tabs around it, each key unique and of the spec's form (lower-case
-- simple-key, or tenant@system), each value 1 to 256 printable ASCII characters but ','
-- and '=', not ending in a space. Returns it; NULL and '' mean none (NULL). A value that
-- passes here is one OpenTelemetry's propagators parse whole, so a worker never meets an
-- entry it would drop.
--
-- The column default calls this for every row a submit inserts while the session setting
-- holds a tracestate, so it runs no query and each regular expression runs only where it
-- can refuse something: bounded repetitions ({0,255}) are what a PostgreSQL regex pays for
-- (the grammar with the spec's bounds: 110 us a call; without them: 2.5 us), so a list of
-- at most 241 characters, where no key or value can outgrow its bound but a system id,
-- takes the unbounded grammar and a test of system ids, and only a longer one the bounded
-- grammar; the repeated-key test (a back-reference, 8 us) runs only with two members or
-- more. Measured per row of a bulk submit of 10,000: 8 us more than with a traceparent
-- alone for a two-member tracestate, 2.5 for one member (a split of the list in a query
-- cost 155 us).
CREATE FUNCTION pgtasks.check_tracestate(tracestate text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF tracestate IS NULL OR tracestate = '' THEN
        RETURN NULL;
    END IF;
    IF octet_length(tracestate) <= 512
       AND tracestate !~ '[^ -~\t]'
       -- At most 32 members: 31 commas.
       AND octet_length(tracestate) - octet_length(replace(tracestate, ',', '')) <= 31
       -- (In parentheses: an IF condition ends at the first THEN outside them.)
       AND (CASE WHEN octet_length(tracestate) <= 241 THEN
               tracestate ~ ('^[ \t]*(([a-z][a-z0-9_*/-]*|[a-z0-9][a-z0-9_*/-]*@[a-z][a-z0-9_*/-]*)'
                             '=[^,=\t]*[^ ,=\t])?[ \t]*'
                             '(,[ \t]*(([a-z][a-z0-9_*/-]*|[a-z0-9][a-z0-9_*/-]*@[a-z][a-z0-9_*/-]*)'
                             '=[^,=\t]*[^ ,=\t])?[ \t]*)*$')
               AND (strpos(tracestate, '@') = 0
                    OR tracestate !~ '(^|,)[ \t]*[a-z0-9][a-z0-9_*/-]*@[a-z0-9_*/-]{15}')
           ELSE
               tracestate ~ ('^[ \t]*(([a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})'
                             '=[^,=\t]{0,255}[^ ,=\t])?[ \t]*'
                             '(,[ \t]*(([a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})'
                             '=[^,=\t]{0,255}[^ ,=\t])?[ \t]*)*$')
           END)
       AND (strpos(tracestate, ',') = 0
            OR tracestate !~ '(?:^|,)[ \t]*([a-z0-9_*/@-]+)=(?:.*,)?[ \t]*\1=') THEN
        RETURN tracestate;
    END IF;
    RAISE EXCEPTION 'pgtasks: tracestate must be a W3C tracestate list, got %',
            pg_catalog.quote_literal(left(tracestate, 80))
        USING ERRCODE = 'PT132',
              HINT = 'Pass at most 512 characters of up to 32 comma-separated key=value members (keys lower case, unique; values printable ASCII without , or =), with its traceparent, or NULL for none.';
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.check_tracestate(text) TO pgtasks_submitter, pgtasks_worker;
COMMENT ON FUNCTION pgtasks.check_tracestate(text) IS
    'Returns a W3C tracestate as given (NULL for NULL or empty), or raises PT132 when it is malformed or longer than 512 characters.';

-- The trace arguments of a submit function: each checked as above, and a tracestate only
-- with its traceparent (the spec discards a tracestate that has none, so one given alone
-- is a mistake, said here rather than dropped).
CREATE FUNCTION pgtasks.check_trace_context(traceparent text, tracestate text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.check_tracestate(tracestate) IS NOT NULL
       AND pgtasks.check_traceparent(traceparent) IS NULL THEN
        RAISE EXCEPTION 'pgtasks: a tracestate was given without its traceparent'
            USING ERRCODE = 'PT132',
                  HINT = 'Pass traceparent with it, or leave tracestate out.';
    END IF;
    PERFORM pgtasks.check_traceparent(traceparent);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.check_trace_context(text, text) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.check_trace_context(text, text) IS
    'Checks a submit''s traceparent (PT131) and tracestate (PT132, also when it comes without a traceparent).';

------------------------------------------------------------------------------------------
-- Tasks

CREATE TABLE pgtasks.tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_type        text NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}',
    -- A hand-written INSERT gets the deployment's defaults (settings); the submit functions
    -- resolve each omitted argument as the type's registered policy, else these.
    queue            text NOT NULL DEFAULT (pgtasks.current_settings()).default_queue,
    priority         integer NOT NULL DEFAULT (pgtasks.current_settings()).default_priority,
    status           pgtasks.status NOT NULL DEFAULT 'PENDING',
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- attempt counts claims, for people; lease_token (below) is what a worker must present.
    attempt          integer NOT NULL DEFAULT 0,
    retry_count      integer NOT NULL DEFAULT 0,
    max_retries      integer NOT NULL DEFAULT (pgtasks.current_settings()).default_max_retries,
    timeout          interval NOT NULL DEFAULT (pgtasks.current_settings()).default_timeout,
    -- The lease: set exactly while RUNNING. lease_expires_at is extended by heartbeats,
    -- deadline (claim time + timeout) is not.
    worker_id        text,
    lease_expires_at timestamptz,
    deadline         timestamptz,
    result           jsonb,
    error            text,
    progress_current bigint,
    progress_total   bigint,
    progress_message text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- The backoff policy lives on the row, so fail_task and rescue retry after the same delay.
    backoff_base     interval NOT NULL DEFAULT (pgtasks.current_settings()).default_backoff_base,
    -- Flow control (08_flow_control.sql). Nullable without default: rows without a key are
    -- in none of the keyed indexes below, so tasks that use no flow control pay nothing.
    unique_key       text,
    concurrency_key  text,
    concurrency_limit integer,
    -- The schedule and tick that created the task (09_schedules.sql); NULL for the others.
    schedule         text,
    schedule_tick    timestamptz,
    -- Workflows (10_workflows.sql); all NULL for a task without parents or children.
    workflow_id      bigint,            -- the workflow_runs row
    workflow_node    text,              -- its node's name in that workflow
    waiting_on       integer,           -- unfinished parents; NULL: has no parents
    has_dependents   boolean,           -- true once a task depends on it (see unsettled_edges); else NULL
    on_parent_failure text,             -- 'cancel' or 'run'; NULL: has no parents
    cancelled_by     bigint,            -- the ended parent whose failure cancelled it
    -- The secret of the running attempt: 64 hex digits derived from 244 random bits that
    -- its claim drew (claim_tasks, 05_claim.sql), handed only to its claimer, set exactly
    -- while RUNNING (running_has_lease). Every call of the attempt presents it
    -- (lock_owned_task). The attempt number is public (task_overview), so it cannot be the
    -- fence: any worker could present it. No view shows this column and no role but the
    -- owner reads the table. A claim lost in a crash draws a new one when the task is
    -- claimed again, so a late write of the lost claim's holder never matches.
    lease_token      text,
    -- The soft time limit: the claim hands its worker claim time + soft_timeout as the
    -- attempt's soft deadline, at which the task is asked to stop (an exception raised
    -- inside it) while the hard deadline still holds. NULL: no soft limit.
    soft_timeout     interval,
    -- The code version that ran the task's first attempt (claim_tasks records the
    -- claiming worker's version of the type); later attempts go only to workers that serve
    -- it (worker_registry.code_versions, compatible_versions). NULL: never started, or
    -- started by a worker that declares no version for the type.
    code_version     text,
    -- The W3C trace context of the submit (00-<trace id>-<span id>-<flags>), so the worker's
    -- attempt spans join the submitter's trace. Every insert path reads it from the session
    -- setting pgtasks.traceparent when no argument gave one (submit_task passes its argument
    -- through that setting): producers in any language join a trace with one SET. The
    -- setting is read by a builtin and checked only when set, so a submit without one
    -- calls nothing more per row.
    traceparent      text DEFAULT CASE WHEN coalesce(current_setting('pgtasks.traceparent', true), '') <> ''
                                       THEN pgtasks.check_traceparent(current_setting('pgtasks.traceparent', true)) END,
    -- The W3C tracestate that came with traceparent (vendors' entries, e.g. a sampler's), from
    -- the session setting pgtasks.tracestate in the same way; taken only with a traceparent,
    -- since the spec discards a tracestate that has none.
    tracestate       text DEFAULT CASE WHEN coalesce(current_setting('pgtasks.tracestate', true), '') <> ''
                                        AND coalesce(current_setting('pgtasks.traceparent', true), '') <> ''
                                       THEN pgtasks.check_tracestate(current_setting('pgtasks.tracestate', true)) END,
    -- The running task that spawned this one (spawn_children, 10_workflows.sql); NULL for
    -- every other task. No foreign key, like workflow_id: a parent that finished without
    -- waiting may be pruned before its children, which then keep the id of a gone task.
    spawned_by       bigint,

    CONSTRAINT task_type_not_empty CHECK (task_type <> ''),
    CONSTRAINT queue_not_empty CHECK (queue <> ''),
    CONSTRAINT params_is_object CHECK (jsonb_typeof(params) = 'object'),
    CONSTRAINT retries_in_bounds CHECK (max_retries >= 0 AND retry_count BETWEEN 0 AND max_retries),
    CONSTRAINT timeout_positive CHECK (timeout > interval '0'),
    CONSTRAINT attempt_not_negative CHECK (attempt >= 0),
    -- RUNNING <=> a worker holds a lease (and its token); no other state may carry one, so
    -- the token of an attempt that ended can never be presented again.
    CONSTRAINT running_has_lease CHECK (CASE WHEN status = 'RUNNING'
        THEN worker_id IS NOT NULL AND lease_expires_at IS NOT NULL AND deadline IS NOT NULL
             AND lease_token IS NOT NULL
        ELSE worker_id IS NULL AND lease_expires_at IS NULL AND deadline IS NULL
             AND lease_token IS NULL END),
    CONSTRAINT running_was_claimed CHECK (status <> 'RUNNING' OR (attempt > 0 AND started_at IS NOT NULL)),
    -- terminal <=> finished_at set.
    CONSTRAINT terminal_has_finished_at CHECK (
        (status IN ('DONE', 'FAILED', 'CANCELLED')) = (finished_at IS NOT NULL)),
    CONSTRAINT failed_has_error CHECK (status <> 'FAILED' OR error IS NOT NULL),
    CONSTRAINT only_done_has_result CHECK (status = 'DONE' OR result IS NULL),
    CONSTRAINT progress_in_bounds CHECK (
        (progress_current IS NULL OR progress_current >= 0)
        AND (progress_total IS NULL OR progress_total >= 0)
        AND (progress_total IS NULL OR progress_current IS NULL OR progress_current <= progress_total)),
    CONSTRAINT backoff_base_positive CHECK (backoff_base > interval '0'),
    -- A claim computes now() + timeout: a '300000 years' timeout made every claim that
    -- reached the row fail with `timestamp out of range`. Infinite run_at values crash the
    -- clients that decode them.
    CONSTRAINT timeout_at_most_a_year CHECK (timeout <= interval '1 year'),
    CONSTRAINT run_at_finite CHECK (isfinite(run_at)),
    CONSTRAINT schedule_has_tick CHECK ((schedule IS NULL) = (schedule_tick IS NULL)),
    CONSTRAINT waiting_has_parents CHECK (status <> 'WAITING' OR waiting_on > 0),
    CONSTRAINT waiting_on_not_negative CHECK (waiting_on >= 0),
    -- Claimable or claimed only once no parent is unfinished, even by a hand-written UPDATE.
    CONSTRAINT ready_has_no_unfinished_parents
        CHECK (status NOT IN ('PENDING', 'COMMIT', 'RUNNING') OR coalesce(waiting_on, 0) = 0),
    CONSTRAINT on_parent_failure_known CHECK (on_parent_failure IN ('cancel', 'run')),
    CONSTRAINT cancelled_by_cancelled CHECK (cancelled_by IS NULL OR status = 'CANCELLED'),
    -- A soft limit at or past the hard one would never be seen by the task.
    CONSTRAINT soft_timeout_within_timeout CHECK (soft_timeout > interval '0' AND soft_timeout < timeout),
    -- Bounds whatever writes the row: a row that passes the builtin test (every row the
    -- submit functions write, which checked the whole grammar) costs no function call on
    -- its inserts and updates; one that fails it is handed to check_tracestate, which
    -- raises PT132 with its hint rather than a bare check_violation.
    CONSTRAINT tracestate_bounded CHECK (
        tracestate IS NULL
        OR (octet_length(tracestate) <= 512 AND tracestate !~ '[^ -~\t]')
        OR pgtasks.check_tracestate(tracestate) IS NULL)
);
COMMENT ON TABLE pgtasks.tasks IS
    'One row per task: what to run, where and when, its status, lease, progress and outcome. Only the pgtasks functions write it; triggers check and record every change.';
COMMENT ON COLUMN pgtasks.tasks.status IS
    'WAITING, PENDING, RUNNING, COMMIT, DONE, FAILED or CANCELLED; pgtasks.transitions lists the allowed changes.';
COMMENT ON COLUMN pgtasks.tasks.priority IS 'Higher runs first; ties go by run_at, then id.';
COMMENT ON COLUMN pgtasks.tasks.run_at IS 'When the task becomes claimable (as PENDING or COMMIT).';
COMMENT ON COLUMN pgtasks.tasks.attempt IS
    'How many times the task was claimed: a counter for people; the fence is lease_token.';
COMMENT ON COLUMN pgtasks.tasks.retry_count IS 'Failed attempts sent back to run again; at most max_retries.';
COMMENT ON COLUMN pgtasks.tasks.timeout IS 'The longest one attempt may run: its deadline is claim time + timeout.';
COMMENT ON COLUMN pgtasks.tasks.worker_id IS 'The worker holding the lease; set exactly while RUNNING.';
COMMENT ON COLUMN pgtasks.tasks.lease_expires_at IS
    'The attempt is lost (rescued) after this unless a heartbeat extends it; never past deadline. Set exactly while RUNNING.';
COMMENT ON COLUMN pgtasks.tasks.deadline IS
    'Claim time + timeout: the attempt is rescued as timed out after this, whatever its heartbeats.';
COMMENT ON COLUMN pgtasks.tasks.result IS 'The result of a DONE task.';
COMMENT ON COLUMN pgtasks.tasks.error IS
    'The last failure (FAILED, or an attempt to be retried; NULL once DONE, the earlier attempts'' errors are in task_errors); for a task cancelled by its workflow or a parent, why.';
COMMENT ON COLUMN pgtasks.tasks.progress_current IS 'Progress the task reported (report_progress): current of progress_total.';
COMMENT ON COLUMN pgtasks.tasks.started_at IS 'When the task was first claimed.';
COMMENT ON COLUMN pgtasks.tasks.finished_at IS 'When the task ended; set exactly while DONE, FAILED or CANCELLED.';
COMMENT ON COLUMN pgtasks.tasks.backoff_base IS
    'Retry n waits about backoff_base * 2^(n-1), capped at settings.max_backoff.';
COMMENT ON COLUMN pgtasks.tasks.unique_key IS
    'At most one PENDING, COMMIT or RUNNING task per key and task type: a submit of a held key returns that task.';
COMMENT ON COLUMN pgtasks.tasks.concurrency_key IS 'Tasks sharing this key run at most concurrency_limit at a time.';
COMMENT ON COLUMN pgtasks.tasks.concurrency_limit IS 'How many tasks of concurrency_key may run at once; set with a key.';
COMMENT ON COLUMN pgtasks.tasks.schedule IS 'The schedule that enqueued the task; with schedule_tick, unique.';
COMMENT ON COLUMN pgtasks.tasks.schedule_tick IS 'The tick of schedule this task stands for.';
COMMENT ON COLUMN pgtasks.tasks.workflow_id IS 'The workflow (workflow_runs) the task belongs to.';
COMMENT ON COLUMN pgtasks.tasks.workflow_node IS 'The task''s node name in its workflow.';
COMMENT ON COLUMN pgtasks.tasks.waiting_on IS 'How many of its parents have not ended; NULL: the task has no parents.';
COMMENT ON COLUMN pgtasks.tasks.has_dependents IS
    'True once a task depends on this one; else NULL. A dependency added with depends_on marks it when maintain() settles it (unsettled_edges lists it until then).';
COMMENT ON COLUMN pgtasks.tasks.on_parent_failure IS
    'cancel: a parent ending FAILED or CANCELLED cancels this task; run: it runs anyway. NULL: no parents.';
COMMENT ON COLUMN pgtasks.tasks.cancelled_by IS
    'The parent whose failure cancelled this task; retrying that parent revives it.';
COMMENT ON COLUMN pgtasks.tasks.soft_timeout IS
    'The soft time limit of one attempt: its claim returns claim time + soft_timeout as soft_deadline, when the worker raises inside the task; less than timeout. NULL: none.';
COMMENT ON COLUMN pgtasks.tasks.code_version IS
    'The code version of the type that ran the first attempt; only workers serving it claim the task again. NULL: unrecorded, any worker of the type may claim it.';
COMMENT ON COLUMN pgtasks.tasks.traceparent IS
    'The W3C trace context the task''s attempt spans join: the submit''s, or, for a task submitted outside any trace, its first traced attempt''s (recorded when that attempt hands the task on). NULL: none.';
COMMENT ON COLUMN pgtasks.tasks.tracestate IS
    'The W3C tracestate (vendor entries) that came with traceparent; at most 512 characters. NULL: none.';
COMMENT ON COLUMN pgtasks.tasks.spawned_by IS
    'The task whose running attempt spawned this one as a child (spawn_children); NULL for other tasks.';
COMMENT ON COLUMN pgtasks.tasks.lease_token IS
    'The running attempt''s secret, drawn at random by its claim and known only to its claimer, who presents it with every write; set exactly while RUNNING. No view shows it.';

-- The claim path: exactly the rows a worker may take, in the order it takes them, for a
-- worker of every queue (tasks_claimable) and of one queue (tasks_claimable_queue).
-- Finished, running and waiting rows are in neither, so history does not slow claims.
CREATE INDEX tasks_claimable ON pgtasks.tasks (priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'COMMIT');
CREATE INDEX tasks_claimable_queue ON pgtasks.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'COMMIT');
-- A worker of one task type walks that type's ready rows in claim order here, whatever
-- the backlog of other types: on the two indexes above it stepped over every ready row of
-- the others (measured with 200,000 ready of another type in its queue: 36 ms per claim,
-- 0.05 ms on this index). The queue is a key column after the order so that one queue or
-- several are checked inside the index, without reading other queues' rows from the heap.
-- Its cost is one entry per submit (a claim's update leaves a ready index without a
-- write): inserts of 20,000 tasks with and without it took the same within noise (medians
-- of 6 alternated rounds, 23 us a row either way on a busy 2-core host).
CREATE INDEX tasks_claimable_type ON pgtasks.tasks (task_type, priority DESC, run_at, id, queue)
    WHERE status IN ('PENDING', 'COMMIT');
-- Idle workers ask when the next task becomes ready (next_run_at): one probe here, instead
-- of reading every scheduled task (measured: 15 ms with 100,000 scheduled, per idle poll).
CREATE INDEX tasks_next_run_at ON pgtasks.tasks (run_at) WHERE status IN ('PENDING', 'COMMIT');
-- Running tasks (a lease is set exactly when RUNNING, see running_has_lease), for rescue
-- and for max_running. The leading queue lets claim_limited count a limited queue's
-- running tasks with an index range of that queue alone; lock_expired (rescue) asks for
-- expired leases of every queue, which PostgreSQL 18 answers by skipping through the
-- queues (older servers read every running task's entry: bounded by the running tasks,
-- never the backlog or the history). One index for both: a second one cost every claim
-- and every heartbeat one index entry more per task.
-- The predicate names lease_expires_at, not status, on purpose: a predicate on status
-- tempts the planner to hash every running task when a batched finish or heartbeat looks
-- up 100 of them by id (measured: 600 us per task instead of 20 with 20,000 running).
CREATE INDEX tasks_lease ON pgtasks.tasks (queue, lease_expires_at) WHERE lease_expires_at IS NOT NULL;
-- Pruning path: only finished rows.
CREATE INDEX tasks_finished_at ON pgtasks.tasks (finished_at)
    WHERE status IN ('DONE', 'FAILED', 'CANCELLED');
-- The dead letters: "this type's failed tasks, newest first", and queue rides along
-- (INCLUDE) so the failed count per queue is an index-only scan. Only FAILED rows: it
-- costs nothing until a task fails for good, and claims, heartbeats and finishes never
-- touch it (measured on 1,000,000 tasks, 2 % FAILED: 103 ms per dead-letter read without it).
CREATE INDEX tasks_failed ON pgtasks.tasks (task_type, id) INCLUDE (queue)
    WHERE status = 'FAILED';
-- WAITING rows by queue and id: the count per queue (index-only) and the dashboard's
-- status=WAITING list, with or without a queue, newest first. An entry is written only
-- when a row version is WAITING, so claims, heartbeats and finishes never touch it
-- (measured with 1,000,000 tasks, 500 WAITING: the queues view 87 ms without, 4.6 ms with;
-- the WAITING list 205 ms without, 1.6 ms with).
CREATE INDEX tasks_waiting ON pgtasks.tasks (queue, id) WHERE status = 'WAITING';
-- At most one active task per unique key of a task type. The predicate is what ON CONFLICT
-- names in submit_one. A finished task leaves the index, so the key can be submitted again.
-- Keys belong to their task type: a submit of another type with the same key (a squatter
-- taking 'invoice:42' with a task that never runs) neither blocks nor is handed the task.
CREATE UNIQUE INDEX tasks_unique_key ON pgtasks.tasks (task_type, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING');
-- Lookup by unique key (Client.find, `pgtasks status --unique-key`, GET /tasks?unique_key=):
-- the newest task of a key, finished ones included, which tasks_unique_key (active tasks
-- only, type first) cannot answer. The key leads so a lookup without a type is one probe
-- too; a lookup of one type filters the few rows of its key. Partial: tasks without a key
-- add no entry, so only keyed tasks pay for it on insert and update. Measured with
-- 1,000,000 tasks, half of them keyed: 0.02 ms a lookup; without it the planner walks the
-- primary key from the newest id, 18 ms for a key among the newest 100,000 tasks and
-- 126 ms for a key no task has.
CREATE INDEX tasks_by_unique_key ON pgtasks.tasks (unique_key, id) WHERE unique_key IS NOT NULL;
-- "Is any keyed task ready?" (the claim's flow-control test): one probe of a usually
-- empty index.
CREATE INDEX tasks_keyed_ready ON pgtasks.tasks (run_at)
    WHERE concurrency_key IS NOT NULL AND status IN ('PENDING', 'COMMIT');
-- Running tasks of a concurrency key, counted under the key's lock.
CREATE INDEX tasks_keyed_running ON pgtasks.tasks (concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status = 'RUNNING';
-- Exactly one task per schedule tick, enforced by the database: a second worker, a restart
-- or a retry that fires the same tick inserts nothing (fire_schedule's ON CONFLICT names
-- it). Partial: ordinary tasks are not in it and pay nothing for it on insert.
CREATE UNIQUE INDEX tasks_schedule_tick ON pgtasks.tasks (schedule, schedule_tick) WHERE schedule IS NOT NULL;
-- A workflow's tasks, for the workflows view, the graph and cancel_workflow. Partial:
-- plain tasks add no index entry.
CREATE INDEX tasks_workflow ON pgtasks.tasks (workflow_id, id) WHERE workflow_id IS NOT NULL;
-- The unfinished children of a parent (spawn_children): what wait_for_children and the
-- finish of each child ask ("is any child of this parent still unfinished?") and what a
-- cancelled parent cancels. Only unfinished children are in it, so the probe made at each
-- child's end meets the still running ones, not the finished ones before them (with every
-- child in the index, the probes of 10,000 children ending in spawn order would read 50
-- million entries). Plain tasks add no entry.
CREATE INDEX tasks_spawned_unfinished ON pgtasks.tasks (spawned_by)
    WHERE spawned_by IS NOT NULL AND status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');

------------------------------------------------------------------------------------------
-- What happened to a task

-- Every status change, whoever made it (a worker, a function, a hand-written UPDATE).
-- Append-only (03_state_machine.sql); pruned with its task.
CREATE TABLE pgtasks.task_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key on purpose: its check would lock every task row a batch touches
    -- (measured: it doubled the cost of a claim). prune_finished deletes events itself.
    task_id     bigint NOT NULL,
    attempt     integer NOT NULL,
    from_status pgtasks.status,          -- NULL for the insert that created the task
    to_status   pgtasks.status NOT NULL,
    worker_id   text,
    -- The login role that caused the change: the functions run as pgtasks_owner, so
    -- current_user would always say pgtasks_owner.
    db_user     text NOT NULL DEFAULT session_user,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task ON pgtasks.task_events (task_id, id);
COMMENT ON TABLE pgtasks.task_events IS
    'The history of every task: one row per status change and one for its creation, whoever made it. Append-only; pruned with its task.';
COMMENT ON COLUMN pgtasks.task_events.attempt IS 'The task''s attempt after the change.';
COMMENT ON COLUMN pgtasks.task_events.from_status IS 'NULL in the row that records the task''s creation.';
COMMENT ON COLUMN pgtasks.task_events.worker_id IS 'The worker that held or took the task.';
COMMENT ON COLUMN pgtasks.task_events.db_user IS 'The login role (session_user) whose statement made the change.';

-- One row per failed attempt: the whole error history, not only the last. Append-only.
CREATE TABLE pgtasks.task_errors (
    task_id   bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    attempt   integer NOT NULL,
    error     text NOT NULL,
    traceback text,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);
COMMENT ON TABLE pgtasks.task_errors IS
    'One row per failed attempt of a task, with its error and traceback. Append-only; pruned with its task.';

-- Durable step results: a resumed attempt skips steps found here.
CREATE TABLE pgtasks.task_steps (
    task_id  bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    name     text NOT NULL,
    result   jsonb,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, name)
);
COMMENT ON TABLE pgtasks.task_steps IS
    'Durable step results of tasks (checkpoint): a resumed attempt skips the steps found here.';
COMMENT ON COLUMN pgtasks.task_steps.attempt IS 'The attempt that stored the result.';

-- Events sent to a task (send_event) and the task's waits for them (wait_for_event), one
-- row per task and event name (06_finish.sql has the rules). A row exists once either side
-- came: sent_at set when the event arrived, waited_at when the task first waited for it.
-- An event sent before the task waits is kept here until the wait reads it; a wait that
-- comes first fixes wait_until, so a resumed attempt keeps the first attempt's deadline.
-- The first event of a name is kept; a later send of the same name changes nothing
-- (webhooks retry). Pruned with its task (the cascade).
CREATE TABLE pgtasks.event_inbox (
    task_id    bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    name       text NOT NULL,
    payload    jsonb,
    sent_at    timestamptz,
    -- The login role that sent it (session_user: send_event runs as pgtasks_owner).
    sent_by    text,
    waited_at  timestamptz,
    -- The task's run_at while it waits: the timeout's end (100 years out for a wait
    -- without one). send_event wakes the task only while its run_at is still this value,
    -- so a late event does not cut short a sleep or a backoff the task went on to.
    wait_until timestamptz,
    PRIMARY KEY (task_id, name),
    CONSTRAINT sent_or_waited CHECK (sent_at IS NOT NULL OR waited_at IS NOT NULL),
    CONSTRAINT sent_has_sender CHECK ((sent_at IS NULL) = (sent_by IS NULL)),
    CONSTRAINT waited_has_deadline CHECK ((waited_at IS NULL) = (wait_until IS NULL))
);
COMMENT ON TABLE pgtasks.event_inbox IS
    'Events sent to tasks (send_event) and the tasks'' waits for them (wait_for_event): one row per task and event name. Pruned with its task.';
COMMENT ON COLUMN pgtasks.event_inbox.sent_at IS 'When the event arrived; NULL while the task waits for it.';
COMMENT ON COLUMN pgtasks.event_inbox.wait_until IS
    'When the wait times out (the task''s run_at while it waits); NULL if the task never waited.';

-- How each attempt that parked its task ended: a snooze (snooze_task), a wait for an
-- event (wait_for_event) or for its children (wait_for_children). At most one per attempt, since either ends it. The history view
-- (task_history, 11_views.sql) reads the RUNNING -> COMMIT of that attempt with it, and
-- snooze_task counts a task's snoozes here against settings.max_snoozes.
CREATE TABLE pgtasks.task_pauses (
    task_id    bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    kind       text NOT NULL,
    event_name text,
    until      timestamptz NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt),
    CONSTRAINT kind_known CHECK (kind IN ('snooze', 'event', 'children')),
    CONSTRAINT event_has_name CHECK ((kind = 'event') = (event_name IS NOT NULL))
);
COMMENT ON TABLE pgtasks.task_pauses IS
    'One row per attempt that ended in a snooze or a wait for an event or for its children: what it waits for and until when. Pruned with its task.';

-- One row per log line of a task, from ctx.log or from Python `logging` inside the task.
-- id order is the order the lines were logged (workers insert each batch in order);
-- `at` is when the line was logged, which can be earlier than the batched insert.
CREATE TABLE pgtasks.task_logs (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id  bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    attempt  integer NOT NULL,
    level    text NOT NULL,
    message  text NOT NULL,
    logger   text,                        -- Python logger name; NULL for ctx.log / pgtasks.log
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX task_logs_task ON pgtasks.task_logs (task_id, id);
COMMENT ON TABLE pgtasks.task_logs IS 'Log lines of tasks, in the order they were logged (id).';
COMMENT ON COLUMN pgtasks.task_logs.logger IS 'The Python logger name; NULL for ctx.log and pgtasks.log.';
COMMENT ON COLUMN pgtasks.task_logs.at IS
    'When the line was logged (the worker''s clock when it says), which can be earlier than the insert.';

-- Clients blocked in wait() and live watchers: finishing a task, or its progress or logs
-- changing, NOTIFYs only when someone watches it, so the common path pays no notification
-- lock at commit.
CREATE TABLE pgtasks.task_waiters (
    task_id bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    pid     integer NOT NULL DEFAULT pg_backend_pid(),
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, pid)
);
COMMENT ON TABLE pgtasks.task_waiters IS
    'Sessions watching a task (watch_task): only watched tasks send pgtasks_done and pgtasks_progress notifications.';
COMMENT ON COLUMN pgtasks.task_waiters.pid IS 'The watching backend; rescue removes the rows of backends that are gone.';

------------------------------------------------------------------------------------------
-- Workers and task types

-- Workers. Their heartbeat keeps last_seen fresh. A worker not seen for its lease is dead
-- (its tasks are being rescued); the row stays a while so operators can see what died,
-- then rescue sweeps it.
CREATE TABLE pgtasks.worker_registry (
    worker_id   text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    queues      text[],                  -- NULL: every queue
    concurrency integer NOT NULL,
    lease       interval NOT NULL DEFAULT (pgtasks.current_settings()).default_lease,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    -- Code versions, as 'type@version': the version of each type it runs (recorded on the
    -- tasks it starts), and the older ones it can also resume. NULL: none declared.
    code_versions       text[],
    compatible_versions text[]
);
COMMENT ON TABLE pgtasks.worker_registry IS
    'Registered workers, kept fresh by their heartbeats. A worker not seen within its lease is dead; its row is swept ten minutes later.';
COMMENT ON COLUMN pgtasks.worker_registry.queues IS 'The queues the worker claims from; NULL: every queue.';
COMMENT ON COLUMN pgtasks.worker_registry.concurrency IS 'How many tasks the worker runs at once.';
COMMENT ON COLUMN pgtasks.worker_registry.lease IS 'The worker counts as alive while last_seen + lease is in the future.';
COMMENT ON COLUMN pgtasks.worker_registry.last_seen IS 'The last registration or heartbeat.';
COMMENT ON COLUMN pgtasks.worker_registry.code_versions IS
    'The version of each task type the worker runs, as type@version: recorded on the tasks it starts.';
COMMENT ON COLUMN pgtasks.worker_registry.compatible_versions IS
    'Older versions, as type@version, whose started tasks the worker may also resume.';

-- The policies workers register for their task types, applied to every submit, so a task
-- submitted from psql behaves like one submitted from Python.
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
    -- The login role whose workers may change the policy (register_task_type): the one
    -- that registered the type first. Another worker role re-declaring the same policy is
    -- fine; changing it (rerouting every later submit of the type to its own queue) is
    -- refused, and left to that role or to pgtasks_admin.
    owner_role    text NOT NULL DEFAULT session_user,
    soft_timeout  interval,

    CONSTRAINT task_type_named CHECK (NOT pgtasks.is_blank(task_type) AND octet_length(task_type) <= 255),
    CONSTRAINT queue_named CHECK (queue IS NULL OR (NOT pgtasks.is_blank(queue) AND octet_length(queue) <= 255)),
    CONSTRAINT max_retries_range CHECK (max_retries BETWEEN 0 AND 1000),
    CONSTRAINT timeout_range CHECK (timeout > interval '0' AND timeout <= interval '1 year'),
    CONSTRAINT backoff_base_range CHECK (backoff_base > interval '0' AND backoff_base <= interval '1 day'),
    CONSTRAINT soft_timeout_range CHECK (soft_timeout > interval '0' AND soft_timeout < interval '1 year')
);
COMMENT ON TABLE pgtasks.task_types IS
    'The policy of each registered task type, applied to every submit of the type that leaves the argument out; a NULL column falls back to settings.';
COMMENT ON COLUMN pgtasks.task_types.registered_by IS 'The worker_id of the last registration that changed the policy.';
COMMENT ON COLUMN pgtasks.task_types.soft_timeout IS
    'The soft time limit of the type''s tasks (less than their timeout); NULL: none.';
COMMENT ON COLUMN pgtasks.task_types.owner_role IS
    'The login role that registered the type first: its workers (and pgtasks_admin) may change the policy.';

------------------------------------------------------------------------------------------
-- Locks only pgtasks takes
--
-- Every lock pgtasks relies on is a row of a table that only pgtasks_owner may read or
-- lock. Advisory locks are open to every role, a role without any pgtasks grant included:
-- one that took maintain()'s key first switched maintenance off for every worker, one that
-- took a concurrency key's stopped every claim of that key.

-- One row per lock that guards a whole job. maintain() (07_leases.sql) takes 'maintain'
-- with SKIP LOCKED, so while one call works the others return at once.
CREATE TABLE pgtasks.locks (
    name text PRIMARY KEY CHECK (name IN ('maintain'))
);
INSERT INTO pgtasks.locks (name) VALUES ('maintain');
COMMENT ON TABLE pgtasks.locks IS
    'Rows pgtasks locks to run a job one caller at a time (maintain); no role but the owner may lock them.';

------------------------------------------------------------------------------------------
-- Counters (/metrics)

-- Monotonic counts per queue, task type and kind, kept apart from the tasks so pruning
-- never lowers them: submitted, done, failed, cancelled (ended in that status), retried (a
-- failed attempt sent back to run again, a rescue's included), rescued (an expired lease
-- or deadline handed on by rescue) and requeued (a FAILED or CANCELLED task put back by
-- retry_task). A counter row bumped on every finish would be the hottest row of the
-- database: every worker's finish statement would queue on its lock until commit. So the
-- history triggers (03_state_machine.sql) append one row per statement and group to
-- task_count_deltas, which takes no lock anyone else waits for, and rescue_expired
-- (07_leases.sql) folds the deltas into task_counts. The task_counters view (11_views.sql)
-- adds both, so a count is exact the moment its statement commits.
CREATE TABLE pgtasks.task_counts (
    queue     text NOT NULL,
    task_type text NOT NULL,
    kind      text NOT NULL,
    n         bigint NOT NULL,
    CONSTRAINT task_counts_pkey PRIMARY KEY (queue, task_type, kind),
    CONSTRAINT task_counts_kind_known CHECK (kind IN ('submitted', 'done', 'failed', 'cancelled',
                                                      'retried', 'rescued', 'requeued'))
);
COMMENT ON TABLE pgtasks.task_counts IS
    'Counts per queue, task type and kind (submitted, done, failed, cancelled, retried, rescued, requeued) folded from task_count_deltas; read them through pgtasks.task_counters.';

-- No key, no index: an append-only heap each history trigger adds to, emptied by the fold.
CREATE TABLE pgtasks.task_count_deltas (
    queue     text NOT NULL,
    task_type text NOT NULL,
    kind      text NOT NULL,
    n         bigint NOT NULL
);
COMMENT ON TABLE pgtasks.task_count_deltas IS
    'What the statements since the last fold added to task_counts, one row per statement, queue, task type and kind.';

------------------------------------------------------------------------------------------
-- Charts (roll_up in 07_leases.sql, task_chart in 11_views.sql)

-- What the dashboard's charts draw, rolled up by maintenance from the tasks that ended, so
-- that a chart of a day reads a few hundred rows instead of the tasks, and outlives their
-- pruning. One row per width, bucket and queue: 10-second buckets for the last 2 hours,
-- 5-minute buckets (summed from the 10-second ones) for 8 days; roll_up deletes older rows.
-- The counts are of tasks that ended in the bucket (by finished_at); run is finished_at -
-- started_at of those that ended DONE or FAILED, wait is started_at - run_at of those among
-- them that ran one attempt (a retry, snooze or yield moves run_at, so a later attempt's
-- row no longer holds when its task first became ready). *_hist counts them per bin of
-- rollup_bounds(), so histograms of any buckets add up and a percentile over an hour or a
-- day is as exact as over one bucket; count, sum and max ride along. ready and running are
-- the deepest sample maintenance took in the bucket (pgtasks.queues), NULL when it took none.
CREATE TABLE pgtasks.task_rollup (
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
COMMENT ON TABLE pgtasks.task_rollup IS
    'Per bucket (10 seconds for 2 hours, 5 minutes for 8 days) and queue: tasks ended done, failed and cancelled, histograms of run and wait times, and sampled depth; read it through pgtasks.task_chart.';

-- How far roll_up has rolled: every 10-second bucket before rolled_to is final. Its one
-- row is made here, so that roll_up only ever locks it (SKIP LOCKED: a second call returns
-- at once) and never waits on another call's insert of it.
CREATE TABLE pgtasks.rollup_state (
    rolled_to timestamptz NOT NULL,
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO pgtasks.rollup_state (rolled_to) VALUES ('-infinity');
COMMENT ON TABLE pgtasks.rollup_state IS
    'The end of the last 10-second bucket roll_up rolled up (one row; -infinity before its first call).';

------------------------------------------------------------------------------------------
-- Flow control (08_flow_control.sql)

-- A row exists only for a queue with a limit or a pause: the claim's fast path is "no row
-- for my queues". Queues without a row have no limits.
CREATE TABLE pgtasks.queue_settings (
    queue       text PRIMARY KEY,
    max_running integer,
    rate_limit  integer,
    rate_period interval NOT NULL DEFAULT interval '1 second',
    paused      boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (max_running IS NULL OR max_running >= 1),
    CHECK (rate_limit IS NULL OR rate_limit >= 1),
    CHECK (rate_period > interval '0')
);
COMMENT ON TABLE pgtasks.queue_settings IS
    'Limits and pauses per queue (configure_queue, pause_queue). A queue without a row has none.';
COMMENT ON COLUMN pgtasks.queue_settings.max_running IS 'At most this many RUNNING tasks in the queue; NULL: no limit.';
COMMENT ON COLUMN pgtasks.queue_settings.rate_limit IS
    'At most this many task starts per rate_period, in a sliding window; NULL: no limit.';
COMMENT ON COLUMN pgtasks.queue_settings.paused IS
    'A paused queue is not claimed from; running tasks finish and submits are accepted.';

-- Starts of rate-limited queues, the sliding window's log. Written and trimmed by the
-- limited claim path under the queue's lock, so it holds about rate_limit rows a queue;
-- prune_flow_state drops what that path no longer trims.
CREATE TABLE pgtasks.queue_starts (
    queue text NOT NULL,
    at    timestamptz NOT NULL
);
CREATE INDEX queue_starts_queue_at ON pgtasks.queue_starts (queue, at);
COMMENT ON TABLE pgtasks.queue_starts IS
    'Start times of tasks in rate-limited queues: the sliding window rate_limit is counted in.';

-- unique_for: the key stays taken until reserved_until, whatever its task does. A row whose
-- window has passed is taken over by the next submit of the key, or pruned. Keys belong to
-- their task type, as in tasks_unique_key (task_type comes last only because upgraded
-- databases added it last).
CREATE TABLE pgtasks.unique_windows (
    unique_key     text NOT NULL,
    task_id        bigint,                 -- NULL only inside the submitting transaction
    reserved_until timestamptz NOT NULL,
    task_type      text NOT NULL,
    PRIMARY KEY (task_type, unique_key)
);
COMMENT ON TABLE pgtasks.unique_windows IS
    'Unique keys reserved by unique_for, per task type: taken until reserved_until, whatever their task does.';
COMMENT ON COLUMN pgtasks.unique_windows.task_id IS 'The task that took the key; NULL only inside the submitting transaction.';

-- The lock of each concurrency key: a claimer that locks a key's row (FOR NO KEY UPDATE
-- SKIP LOCKED, lock_concurrency_key in 08_flow_control.sql) decides for that key until it
-- commits; the others skip the key in that round. Claimers create a key's row the first
-- time they meet the key; prune_flow_state deletes rows that nobody holds and whose key has
-- no running task, an hour after their creation (a later claim creates the row again).
-- Submits never touch it.
CREATE TABLE pgtasks.concurrency_keys (
    concurrency_key text PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX concurrency_keys_created ON pgtasks.concurrency_keys (created_at);
COMMENT ON TABLE pgtasks.concurrency_keys IS
    'One lockable row per concurrency key in use: the claimer holding it decides how many of the key''s tasks start.';

------------------------------------------------------------------------------------------
-- Schedules (09_schedules.sql)

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
    -- The misfire grace (fire_schedule): a tick found later than this is skipped and
    -- counted in skipped_misfire instead of run. NULL: no grace, the latest tick always runs.
    misfire_grace interval,
    skipped_misfire bigint NOT NULL DEFAULT 0,
    CONSTRAINT one_of_cron_every CHECK ((cron IS NULL) <> (every IS NULL)),
    CONSTRAINT overlap_known CHECK (overlap IN ('allow', 'skip', 'cancel_previous')),
    CONSTRAINT origin_known CHECK (origin IN ('sql', 'code')),
    CONSTRAINT every_positive CHECK (every > interval '0'),
    CONSTRAINT catch_up_in_range CHECK (catch_up >= interval '0' AND catch_up <= interval '1 year'),
    CONSTRAINT misfire_grace_in_range CHECK (misfire_grace > interval '0' AND misfire_grace <= interval '1 year')
);

-- The firing query's walk: unpaused schedules by next_run_at.
CREATE INDEX schedule_defs_due ON pgtasks.schedule_defs (next_run_at NULLS FIRST) WHERE NOT paused;
COMMENT ON TABLE pgtasks.schedule_defs IS
    'One row per schedule (cron or every): its definition, the next tick to fire and what firing decided.';
COMMENT ON COLUMN pgtasks.schedule_defs.cron IS 'The normalized 5-field cron expression; NULL for an every schedule.';
COMMENT ON COLUMN pgtasks.schedule_defs.every IS
    'The fixed interval between ticks, which fall on multiples of it since the Unix epoch; NULL for a cron schedule.';
COMMENT ON COLUMN pgtasks.schedule_defs.timezone IS 'The IANA time zone cron ticks are computed in.';
COMMENT ON COLUMN pgtasks.schedule_defs.overlap IS
    'allow; skip: no new task while the previous one is active; cancel_previous: cancel it first.';
COMMENT ON COLUMN pgtasks.schedule_defs.catch_up IS
    'Missed ticks within this window are still enqueued; older ones are counted in skipped.';
COMMENT ON COLUMN pgtasks.schedule_defs.origin IS
    'sql (create_schedule) or code (a worker''s declarations, which never overwrite a sql schedule).';
COMMENT ON COLUMN pgtasks.schedule_defs.next_run_at IS 'The first tick not yet fired; NULL: the next firing round computes it.';
COMMENT ON COLUMN pgtasks.schedule_defs.last_task_id IS 'The last task enqueued (no foreign key: pruning deletes finished tasks).';
COMMENT ON COLUMN pgtasks.schedule_defs.skipped IS 'Missed ticks older than the catch-up window, not enqueued.';
COMMENT ON COLUMN pgtasks.schedule_defs.skipped_overlap IS 'Ticks not enqueued because of overlap skip.';
COMMENT ON COLUMN pgtasks.schedule_defs.revision IS
    'Bumped on every change and firing; fire_schedule writes only for the revision it was handed.';
COMMENT ON COLUMN pgtasks.schedule_defs.misfire_grace IS
    'A tick found more than this late is skipped (counted in skipped_misfire), not run; NULL: the latest tick always runs.';
COMMENT ON COLUMN pgtasks.schedule_defs.skipped_misfire IS 'Ticks skipped because they were found later than misfire_grace.';
COMMENT ON COLUMN pgtasks.schedule_defs.claimed_until IS 'A worker is firing the schedule until then (due_schedules).';

------------------------------------------------------------------------------------------
-- Workflows (10_workflows.sql)

-- One row per submitted graph; its tasks carry its id in tasks.workflow_id.
CREATE TABLE pgtasks.workflow_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text,
    nodes integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgtasks.workflow_runs IS
    'One row per submitted workflow (submit_workflow); its tasks carry the id in tasks.workflow_id.';
COMMENT ON COLUMN pgtasks.workflow_runs.nodes IS 'How many tasks the workflow was submitted with.';

-- One (parent, child) row per dependency. Foreign keys with cascade here (unlike
-- task_events): edges are written once, at submit, and pruning a task takes its edges
-- along. A child whose parent was pruned no longer lists it in parent_results; parents are
-- pruned only after they ended and the retention passed, long after their children were
-- released. A child's id is always larger than its parents' (edge_goes_forward), and every
-- function locks tasks in id order, so a fan-in cannot deadlock with a cancel.
CREATE TABLE pgtasks.task_edges (
    parent_id bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    child_id bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (parent_id, child_id),
    CONSTRAINT edge_goes_forward CHECK (parent_id < child_id)
);
CREATE INDEX task_edges_child ON pgtasks.task_edges (child_id, parent_id);
COMMENT ON TABLE pgtasks.task_edges IS
    'The dependencies between tasks, one (parent, child) row each: a child waits until all its parents have ended.';

-- Child tasks: one row per spawn (spawn_children, 10_workflows.sql), a running task's
-- checkpointed step that submitted children. The key (parent, step) makes the spawn
-- idempotent: the row, the children and the step's checkpoint commit together, so an
-- attempt killed at any point either spawned nothing or spawned exactly these, and a
-- resumed attempt gets these ids back instead of spawning again. child_ids is in spawn
-- order, and ids grow with it (one INSERT in list order, and a later spawn comes later),
-- so ordering a parent's children by id is spawn order. Pruned with the parent; a child
-- pruned before its parent (it ended more than the retention ago) is reported missing.
CREATE TABLE pgtasks.task_spawns (
    parent_id bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    step      text NOT NULL,
    child_ids bigint[] NOT NULL,
    attempt   integer NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parent_id, step),
    CONSTRAINT spawned_some CHECK (cardinality(child_ids) > 0)
);
COMMENT ON TABLE pgtasks.task_spawns IS
    'One row per spawn of child tasks (spawn_children): the parent, the spawn step''s name and the children''s ids in spawn order. Pruned with the parent.';
COMMENT ON COLUMN pgtasks.task_spawns.attempt IS 'The parent''s attempt that spawned them.';

-- Edges that submit_task(..., depends_on) added to parents that existed already, until
-- maintain() has settled them (settle_new_edges, 10_workflows.sql). Such a submit locks no
-- parent against its worker's heartbeat and finish: its parents are not marked
-- has_dependents by it, so settle_children also releases the children of parents listed
-- here. A row goes once its parent is marked and its child's count checked.
CREATE TABLE pgtasks.unsettled_edges (
    parent_id bigint NOT NULL,
    child_id  bigint NOT NULL,
    PRIMARY KEY (parent_id, child_id),
    FOREIGN KEY (parent_id, child_id) REFERENCES pgtasks.task_edges (parent_id, child_id) ON DELETE CASCADE
);
COMMENT ON TABLE pgtasks.unsettled_edges IS
    'Dependencies added to existing tasks (depends_on) whose parent is not yet marked has_dependents; maintain() settles them.';
