-- Flow control: queue limits, rate limits, pauses and per-key concurrency.
-- docs/flow-control.md has the semantics and the measurements.
--
-- What a limit can hold back:
--   * a queue: max_running (at most that many RUNNING at any instant, across all workers),
--     rate_limit per rate_period (at most that many starts in any sliding window, retries
--     included), paused (no claim returns its tasks; running tasks finish, submits are
--     accepted). One queue_settings row holds them, and only a queue with a limit or a
--     pause has a row;
--   * a concurrency key: at most concurrency_limit RUNNING tasks with that key, across all
--     queues, counted against each task's own limit;
--   * unique keys (04_submit.sql) hold back submits, not claims.
-- A task held back is simply not claimable yet: it stays PENDING or COMMIT with its run_at,
-- retry_count and attempt unchanged, writes nothing, and is claimed as soon as a slot or
-- budget frees. Held-back tasks never keep a claim from other queues or keys.
--
-- Every limit is enforced inside claim_tasks (05_claim.sql), and so inside finish_and_claim,
-- for workers of any language. A claim first asks flow_control_in_use; when no queue of the
-- claim has settings and no keyed task is ready, it takes the plain pick unchanged (two
-- probes of relations that are empty while flow control is unused: 16 us per claim
-- together, measured). Only the others take the limited path, claim_limited, which locks
-- the settings rows of their queues, so the counts and claims of concurrent claimers are
-- serialised and exact.
--
-- SQLSTATEs (docs/sql-api.md):
--   PT301 max_running below 1 or over 1,000,000 (configure_queue)
--   PT302 rate_limit below 1 or over 1,000,000, or rate_period not in (0, 1 day]
--   PT303 unique_key blank or over 255 bytes; unique_for without a unique_key, or not in
--         (0, 100 years]
--   PT304 concurrency_key blank or over 255 bytes; concurrency_limit without a key, or
--         outside 1..1,000,000
--   PT305 submit_tasks: unique_keys or concurrency_keys not one per params_list item
--   PT306 retry_task: the task's unique_key is held by another active task
-- Queue names are checked like submit's (PT103).

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- Submitting with flow control

-- The flow-control arguments of a submit, checked in one place for submit_task,
-- submit_or_get, submit_tasks (item names the list position in the message) and
-- submit_workflow.
CREATE FUNCTION pgtasks.check_flow_args(
    unique_key        text,
    unique_for        interval,
    concurrency_key   text,
    concurrency_limit integer,
    item              integer DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SECURITY DEFINER
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

------------------------------------------------------------------------------------------
-- Claiming

-- A concurrency key's lock, for claim_limited: true when this transaction now holds the
-- key's row of pgtasks.concurrency_keys, and so decides for the key until it commits; false
-- when another claimer does (the key is skipped in this round). It never waits for a
-- claimer holding the row. Only the owner can lock these rows: a role without grants can no
-- longer hold a key's lock and stop its claims, as it could an advisory lock. One primary
-- key probe and row lock per key and claim when the row exists, which is the usual case.
CREATE FUNCTION pgtasks.lock_concurrency_key(concurrency_key text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM pgtasks.concurrency_keys k
      WHERE k.concurrency_key = lock_concurrency_key.concurrency_key
        FOR NO KEY UPDATE SKIP LOCKED;
    IF FOUND THEN
        RETURN true;
    END IF;
    -- A row we can see but not lock is another claimer's.
    IF EXISTS (SELECT 1 FROM pgtasks.concurrency_keys k
                WHERE k.concurrency_key = lock_concurrency_key.concurrency_key) THEN
        RETURN false;
    END IF;
    RETURN pgtasks.create_concurrency_key(concurrency_key);
END $$;

-- The first claim of a key (or the first since prune_flow_state dropped its row) creates
-- the row, and as its inserter holds it until commit: the insert of another claimer that
-- meets the key meanwhile conflicts with ours and waits for our commit. lock_timeout bounds
-- that wait (1 ms), after which that claimer skips the key, as it skips a row that is
-- locked. The subtransaction of the EXCEPTION block is paid only here, not on every claim.
CREATE FUNCTION pgtasks.create_concurrency_key(concurrency_key text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1ms'
AS $$
BEGIN
    INSERT INTO pgtasks.concurrency_keys (concurrency_key)
    VALUES (create_concurrency_key.concurrency_key)
    ON CONFLICT ON CONSTRAINT concurrency_keys_pkey DO NOTHING;
    RETURN FOUND;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END $$;

-- claim_tasks' two probes, in one function for both of its callers (claim_tasks and
-- finish_and_claim): does a queue of this claim have settings, or is a task with a
-- concurrency key ready? Both look at a relation that is empty while flow control is
-- unused (queue_settings, the partial index tasks_keyed_ready). True sends the claim to
-- claim_limited.
CREATE FUNCTION pgtasks.flow_control_in_use(queues text[]) RETURNS boolean
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM pgtasks.queue_settings qs
                    WHERE flow_control_in_use.queues IS NULL OR qs.queue = ANY (flow_control_in_use.queues))
        OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= pgtasks.now());
END $$;

-- The limited path of claim_tasks: the ids to claim, in claim order, and the start time to
-- record. Called only when a queue of the claim has a settings row or a keyed task is ready.
--
-- 1. Lock the settings rows of the claim's queues, in name order (no deadlock between
--    claimers). Claimers of a queue with settings go one at a time from here to their
--    commit; counting and claiming are therefore exact. Only claims raise the counts, so
--    finishing, failing and rescuing need no lock.
-- 2. The window is counted at clock_timestamp() after the locks, and the start recorded
--    at clock_timestamp() after all counts: each holder's start time is later than every
--    earlier holder's, which makes the sliding rate window exact.
-- 3. Budgets per queue: max_running - running (counted through tasks_lease, whose leading
--    column is the queue), rate_limit - starts in the window. Paused queues and spent
--    budgets are left out of the pick's WHERE, so their tasks are not read.
-- 4. No keyed task ready: one set-based pick (LIMIT max_tasks), kept unless it went over a
--    queue's budget. Otherwise:
-- 5. Walk the claimable tasks in claim order (same index walk as the plain pick). A keyed
--    task takes its key's lock without waiting (lock_concurrency_key: a claimer holding it
--    decides for that key; waiting could deadlock, as claimers meet keys in different
--    orders), then
--    counts the key's running tasks. A task held back by a key or a spent queue is skipped
--    and the pick restarts without that key or queue, so nothing held back is read twice
--    and a blocked head never starves the rest.
--
-- Its planner settings are claim_tasks' (05_claim.sql): sorting and bitmap scans off keep
-- every pick an index walk in claim order when the statistics are stale, as a queue
-- table's usually are; JIT off because, before PostgreSQL 18, a disabled method only adds
-- to a plan's cost, which then passes jit_above_cost and is compiled on every call.
CREATE FUNCTION pgtasks.claim_limited(
    queues     text[],
    max_tasks  integer,
    task_types text[],
    served     text[],   -- the claimer's type@version pairs (pick_ready, 05_claim.sql)
    OUT picked  bigint[],
    OUT started timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
SET lock_timeout = '1s'
AS $$
DECLARE
    lq_names  text[] := '{}';
    lq_budget integer[] := '{}';
    lq_rated  boolean[] := '{}';
    blocked_q text[];
    held      text[];               -- the settings rows locked, when some were not in time
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
    --
    -- The wait is bounded (lock_timeout, 1 s; a claimer holds the row for the rest of its
    -- claim, milliseconds). Without the bound, any session that holds a row in an open
    -- transaction stalls every claim of that queue for as long as it likes: any member of
    -- pgtasks_worker may BEGIN, claim and sit, and so may an admin's pause_queue not yet
    -- committed. After the timeout the claim locks the rows it can (SKIP LOCKED) and leaves
    -- the held queues out, as it leaves out a paused one: it returns what the other queues
    -- give, or nothing, and the worker claims again at its next poll. The subtransaction of
    -- the EXCEPTION block is paid on this path only, never by a claim without flow control.
    BEGIN
        PERFORM 1 FROM pgtasks.queue_settings qs
          WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
          ORDER BY qs.queue
            FOR NO KEY UPDATE OF qs;
    EXCEPTION WHEN lock_not_available THEN
        SELECT coalesce(array_agg(h.queue), '{}') INTO held FROM (
            SELECT qs.queue FROM pgtasks.queue_settings qs
             WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
             ORDER BY qs.queue
               FOR NO KEY UPDATE OF qs SKIP LOCKED) h;
        SELECT coalesce(array_agg(qs.queue), '{}') INTO blocked_q FROM pgtasks.queue_settings qs
         WHERE (claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues))
           AND qs.queue <> ALL (held);
    END;
    started := clock_timestamp();

    -- Settings as of now (after the locks: a configure_queue that committed meanwhile counts).
    FOR s IN SELECT qs.* FROM pgtasks.queue_settings qs
              WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
              ORDER BY qs.queue
    LOOP
        IF s.queue = ANY (blocked_q) THEN
            CONTINUE;                       -- held by another session past the lock_timeout
        END IF;
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
                      AND t.run_at <= pgtasks.now()) THEN
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
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (claim_limited.served))
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
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (claim_limited.served))
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
                    IF pgtasks.lock_concurrency_key(c.concurrency_key) THEN
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

------------------------------------------------------------------------------------------
-- Queue settings (pgtasks_admin)

-- Replaces the queue's limits (NULL: no limit); the pause is left as it is. A queue left
-- with neither limits nor a pause loses its settings row, so its claims take the plain
-- path again.
CREATE FUNCTION pgtasks.configure_queue(
    queue       text,
    max_running integer  DEFAULT NULL,
    rate_limit  integer  DEFAULT NULL,
    rate_period interval DEFAULT interval '1 second'
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
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
           rate_period = excluded.rate_period, updated_at = pgtasks.now();
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    -- Raised limits may free slots at once.
    PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(queue));
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.configure_queue(text, integer, integer, interval)
    TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.configure_queue(text, integer, integer, interval) IS
    'Replaces a queue''s limits: at most max_running tasks RUNNING at once, at most rate_limit '
    'starts per rate_period; NULL means no limit. The pause is left as it is.';

-- No row for a queue without limits or pause: its claims take the plain path again.
CREATE FUNCTION pgtasks.drop_idle_queue_settings(queue text) RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    DELETE FROM pgtasks.queue_settings s
     WHERE s.queue = drop_idle_queue_settings.queue
       AND s.max_running IS NULL AND s.rate_limit IS NULL AND NOT s.paused;
$$;

-- A paused queue is not claimed from; running tasks finish, submits are accepted. Claims
-- lock the settings row (claim_limited), so pause_queue waits for the claims holding it,
-- and a claim that locks it after the pause sees the pause: nothing starts after a pause
-- commits.
CREATE FUNCTION pgtasks.pause_queue(queue text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    INSERT INTO pgtasks.queue_settings AS s (queue, paused) VALUES (pause_queue.queue, true)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE SET paused = true, updated_at = pgtasks.now();
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.pause_queue(text) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.pause_queue(text) IS
    'Stops claims from a queue until resume_queue: running tasks finish, submits are accepted.';

-- Resuming wakes the queue's workers, which may have tasks waiting for them.
CREATE FUNCTION pgtasks.resume_queue(queue text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    UPDATE pgtasks.queue_settings s SET paused = false, updated_at = pgtasks.now()
     WHERE s.queue = resume_queue.queue;
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(queue));
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.resume_queue(text) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.resume_queue(text) IS
    'Lets workers claim from a paused queue again, and wakes them.';
