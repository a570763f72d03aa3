-- pgtasks 0005: flow control. docs/flow-control.md has the semantics.
--
-- What this file adds:
--   1. Unique submits: tasks.unique_key, held by a partial unique index over active tasks
--      (PENDING, COMMIT, RUNNING) and taken with INSERT ... ON CONFLICT, so 20 sessions
--      submitting one key at once create one task. unique_for keeps a key reserved for a
--      period after the first submit, whatever the task's state (table unique_windows).
--   2. Queue settings (queue_settings): max_running, rate_limit per rate_period, paused.
--      configure_queue, pause_queue, resume_queue and the pgtasks.queues view.
--   3. Per-key concurrency: tasks.concurrency_key and concurrency_limit.
--   4. Every limit is enforced inside claim_tasks (so finish_and_claim too), for workers of
--      any language. A claim that can meet no limit (no settings row for its queues, no
--      ready keyed task) runs 0003's statements unchanged; only the others take the
--      limited path (claim_limited), which locks the limited queues' settings rows so that
--      counts and claims of concurrent claimers are serialised and exact.
--
-- SQLSTATEs added here (docs/sql-api.md):
--   PT301 max_running below 1 or over 1,000,000 (configure_queue)
--   PT302 rate_limit below 1 or over 1,000,000, or rate_period not in (0, 1 day]
--   PT303 unique_key blank or over 255 bytes; unique_for without a unique_key, or not in
--         (0, 100 years]
--   PT304 concurrency_key blank or over 255 bytes; concurrency_limit without a key, or
--         outside 1..1,000,000
--   PT305 submit_tasks: unique_keys or concurrency_keys not one per params_list item
-- Queue names in the new functions are checked like submit's (PT103).

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;

------------------------------------------------------------------------------------------
-- Columns and indexes

-- Nullable, no default: adding them rewrites nothing, and rows without a key are in none
-- of the indexes below, so tasks that use no flow control pay no index maintenance for them.
ALTER TABLE pgtasks.tasks
    ADD COLUMN unique_key        text,
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer;

-- At most one active task per key. The predicate is what ON CONFLICT names in submit_one.
-- A finished task leaves the index, so the key can be submitted again. (retry_task of a
-- FAILED task whose key another active task has taken meanwhile fails with 23505.)
CREATE UNIQUE INDEX tasks_unique_active ON pgtasks.tasks (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING');

-- "Is any keyed task ready?" (the claim's fast-path test): one probe of a usually empty index.
CREATE INDEX tasks_keyed_ready ON pgtasks.tasks (run_at)
    WHERE concurrency_key IS NOT NULL AND status IN ('PENDING', 'COMMIT');
-- Running tasks of a key, counted under the key's lock.
CREATE INDEX tasks_keyed_running ON pgtasks.tasks (concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status = 'RUNNING';
-- Running tasks of a queue, counted for max_running. This one holds every running task:
-- one index entry more per claim and per heartbeat (measured in docs/flow-control.md).
-- The predicate names lease_expires_at (set exactly when RUNNING), not status, for the
-- reason 0001 gives for tasks_lease: with `status = 'RUNNING'` the planner took this index
-- for heartbeat's lookup by id (tests/sql/test_plans.py caught it).
CREATE INDEX tasks_running_queue ON pgtasks.tasks (queue) WHERE lease_expires_at IS NOT NULL;

-- unique_for: the key stays taken until reserved_until, whatever its task does.
-- A row whose window has passed is taken over by the next submit of the key.
CREATE TABLE pgtasks.unique_windows (
    unique_key     text PRIMARY KEY,
    task_id        bigint,                 -- NULL only inside the submitting transaction
    reserved_until timestamptz NOT NULL
);

------------------------------------------------------------------------------------------
-- Queue settings

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

-- Starts of rate-limited queues, the sliding window's log. Written and trimmed only by the
-- limited claim path under the queue's lock, so it holds at most rate_limit rows a queue
-- (plus the ones of the current window's last claim).
CREATE TABLE pgtasks.queue_starts (
    queue text NOT NULL,
    at    timestamptz NOT NULL
);
CREATE INDEX queue_starts_queue_at ON pgtasks.queue_starts (queue, at);

CREATE FUNCTION pgtasks.check_queue_name(queue text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.is_blank(queue) OR octet_length(queue) > 255 THEN
        RAISE EXCEPTION 'pgtasks: queue must be a non-empty string (not blank, at most 255 bytes), got %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(queue, 40)), 'NULL')
            USING ERRCODE = 'PT103', HINT = 'Name the queue, e.g. configure_queue(''imports'', max_running => 2).';
    END IF;
END $$;

-- Replaces the queue's limits (NULL: none); the pause is left as it is.
CREATE FUNCTION pgtasks.configure_queue(
    queue       text,
    max_running integer  DEFAULT NULL,
    rate_limit  integer  DEFAULT NULL,
    rate_period interval DEFAULT interval '1 second'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- No row for a queue without limits or pause: its claims take the fast path again.
CREATE FUNCTION pgtasks.drop_idle_queue_settings(queue text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    DELETE FROM pgtasks.queue_settings s
     WHERE s.queue = drop_idle_queue_settings.queue
       AND s.max_running IS NULL AND s.rate_limit IS NULL AND NOT s.paused;
$$;

-- A paused queue is not claimed from; running tasks finish, submits are accepted.
CREATE FUNCTION pgtasks.pause_queue(queue text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    INSERT INTO pgtasks.queue_settings AS s (queue, paused) VALUES (pause_queue.queue, true)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE SET paused = true, updated_at = now();
END $$;

CREATE FUNCTION pgtasks.resume_queue(queue text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    UPDATE pgtasks.queue_settings s SET paused = false, updated_at = now()
     WHERE s.queue = resume_queue.queue;
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    PERFORM pg_notify('pgtasks_wakeup', queue);
END $$;

-- Each queue with settings or active tasks: its settings next to its live counts.
-- Reads every active task (not a hot path: operators and dashboards).
CREATE VIEW pgtasks.queues AS
WITH live AS (
    SELECT t.queue,
           count(*) FILTER (WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now()) AS ready,
           count(*) FILTER (WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at > now()) AS scheduled,
           count(*) FILTER (WHERE t.status = 'RUNNING') AS running
      FROM pgtasks.tasks t
     WHERE t.status IN ('PENDING', 'COMMIT', 'RUNNING')
     GROUP BY t.queue
)
SELECT coalesce(s.queue, l.queue) AS queue,
       coalesce(s.paused, false) AS paused,
       s.max_running,
       s.rate_limit,
       CASE WHEN s.rate_limit IS NOT NULL THEN s.rate_period END AS rate_period,
       coalesce(l.ready, 0) AS ready,
       coalesce(l.scheduled, 0) AS scheduled,
       coalesce(l.running, 0) AS running,
       CASE WHEN s.rate_limit IS NOT NULL THEN
           (SELECT count(*) FROM pgtasks.queue_starts q
             WHERE q.queue = s.queue AND q.at >= now() - s.rate_period) END AS recent_starts,
       s.updated_at AS settings_updated_at
  FROM pgtasks.queue_settings s
  FULL JOIN live l ON l.queue = s.queue;

------------------------------------------------------------------------------------------
-- Submitting

-- The flow-control arguments of a submit, checked in one place.
CREATE FUNCTION pgtasks.check_flow_args(
    unique_key        text,
    unique_for        interval,
    concurrency_key   text,
    concurrency_limit integer,
    item              integer DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- One task, resolved policy p. Without a unique key: a plain INSERT. With one: ON CONFLICT
-- on tasks_unique_active, so concurrent submits of a key wait for each other and exactly one
-- inserts; the others return its id. When the active task finishes between our conflict
-- and our look-up, the INSERT is tried again (it now succeeds, or meets a newer task).
CREATE FUNCTION pgtasks.submit_one(
    p                 pgtasks.tasks,
    params            jsonb,
    unique_key        text,
    unique_for        interval,
    concurrency_key   text,
    concurrency_limit integer,
    OUT id            bigint,
    OUT created       boolean
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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

-- The argument lists grow, so the old ones go first: CREATE OR REPLACE would add overloads
-- that make every call ambiguous. Every 0003 argument keeps its meaning (NULL: default).
DROP FUNCTION pgtasks.submit_task(text, jsonb, text, integer, timestamptz, integer, interval, interval);
DROP FUNCTION pgtasks.submit_tasks(text, jsonb[], text, integer, timestamptz, integer, interval, interval);

-- submit_task plus whether the task was created (false: an active task, or the unique_for
-- window, already had the key, and id is that task's).
CREATE FUNCTION pgtasks.submit_or_get(
    task_type         text,
    params            jsonb       DEFAULT '{}',
    queue             text        DEFAULT NULL,   -- NULL: the type's policy, else settings
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,   -- NULL: now
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_key        text        DEFAULT NULL,   -- NULL: no uniqueness
    unique_for        interval    DEFAULT NULL,   -- NULL: the key is free once its task finished
    concurrency_key   text        DEFAULT NULL,   -- NULL: no per-key limit
    concurrency_limit integer     DEFAULT NULL    -- NULL with a key: 1
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

CREATE FUNCTION pgtasks.submit_task(
    task_type         text,
    params            jsonb       DEFAULT '{}',
    queue             text        DEFAULT NULL,
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_key        text        DEFAULT NULL,
    unique_for        interval    DEFAULT NULL,
    concurrency_key   text        DEFAULT NULL,
    concurrency_limit integer     DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
BEGIN
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

-- One unique key and one concurrency key per item (NULL arrays: none; NULL items: none for
-- that item). Without unique keys, still one INSERT for the whole list.
CREATE FUNCTION pgtasks.submit_tasks(
    task_type         text,
    params_list       jsonb[],
    queue             text        DEFAULT NULL,
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_keys       text[]      DEFAULT NULL,
    unique_for        interval    DEFAULT NULL,
    concurrency_keys  text[]      DEFAULT NULL,
    concurrency_limit integer     DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
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

------------------------------------------------------------------------------------------
-- Claiming

-- The limited path of claim_tasks: ids to claim, in claim order, and the start time to
-- record. Called only when a queue of the claim has a settings row or a keyed task is ready.
--
-- 1. Lock the settings rows of the claim's queues, in name order (no deadlock between
--    claimers). Claimers of a queue with settings go one at a time from here to their
--    commit; counting and claiming are therefore exact. Only claims raise the counts, so
--    finishing, failing and rescuing need no lock.
-- 2. The window is counted at clock_timestamp() after the locks, and the start recorded
--    at clock_timestamp() after all counts: each holder's start time is later than every
--    earlier holder's, which makes the sliding rate window exact.
-- 3. Budgets per queue: max_running - running, rate_limit - starts in the window. Paused
--    queues and spent budgets are left out of the pick's WHERE, so their tasks are not read.
-- 4. No keyed task ready: one set-based pick (LIMIT max_tasks), kept unless it went over a
--    queue's budget. Otherwise:
-- 5. Walk the claimable tasks in claim order (same index walk as the fast path). A keyed
--    task takes its key's advisory lock without waiting (a claimer holding it decides for
--    that key; waiting could deadlock, as claimers meet keys in different orders), then
--    counts the key's running tasks. A task held back by a key or a spent queue is skipped
--    and the pick restarts without that key or queue, so nothing held back is read twice
--    and a blocked head never starves the rest.
CREATE FUNCTION pgtasks.claim_limited(
    queues     text[],
    max_tasks  integer,
    task_types text[],
    OUT picked  bigint[],
    OUT started timestamptz
)
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
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

-- 0003's claim_tasks with one test in front: when no queue of the claim has settings and no
-- keyed task is ready, the three static statements below run exactly as before (two index
-- probes more, both on tables or indexes that are empty when flow control is unused).
CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(
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
    started timestamptz := now();
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL used to mean "no LIMIT": claim_tasks(max_tasks => NULL) took all 500 ready tasks.
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Claim as many tasks as the worker has free slots.';
    END IF;
    lease_for := pgtasks.lease_or_default(lease);

    IF EXISTS (SELECT 1 FROM pgtasks.queue_settings qs
                WHERE claim_tasks.queues IS NULL OR qs.queue = ANY (claim_tasks.queues))
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                     AND t.run_at <= now()) THEN
        SELECT l.picked, l.started INTO picked, started
          FROM pgtasks.claim_limited(queues, max_tasks, task_types) l;
        IF cardinality(picked) = 0 THEN
            picked := NULL;
        END IF;
    ELSIF queues IS NULL THEN
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

    -- Rows come back in claim order (the order of picked). started_at: the limited path's
    -- start time (the one its rate window recorded), else now() as before.
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
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps
    )
    SELECT c.* FROM claimed c
      JOIN unnest(picked) WITH ORDINALITY AS p(id, ord) ON p.id = c.id
     ORDER BY p.ord;
END $$;

------------------------------------------------------------------------------------------
-- Grants (grant_roles of 0004 does not know these names), then ownership and security.

GRANT EXECUTE ON FUNCTION pgtasks.submit_or_get(text, jsonb, text, integer, timestamptz, integer, interval,
                                                interval, text, interval, text, integer)
    TO pgtasks_submitter;
GRANT EXECUTE ON FUNCTION pgtasks.configure_queue(text, integer, integer, interval),
                          pgtasks.pause_queue(text), pgtasks.resume_queue(text)
    TO pgtasks_admin;
GRANT SELECT ON pgtasks.queues TO pgtasks_reader, pgtasks_submitter;

CALL pgtasks.secure_objects();
