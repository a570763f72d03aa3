-- Locks only pgtasks can take: maintain() and the concurrency keys lock rows of owner-only
-- tables (pgtasks.locks, pgtasks.concurrency_keys) instead of advisory locks, which every
-- role may take.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

-- tables
CREATE TABLE pgtasks.locks (
    name text PRIMARY KEY CHECK (name IN ('maintain'))
);
INSERT INTO pgtasks.locks (name) VALUES ('maintain');

CREATE TABLE pgtasks.concurrency_keys (
    concurrency_key text PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], OUT picked bigint[], OUT started timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.create_concurrency_key(concurrency_key text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1ms'
AS $function$
BEGIN
    INSERT INTO pgtasks.concurrency_keys (concurrency_key)
    VALUES (create_concurrency_key.concurrency_key)
    ON CONFLICT ON CONSTRAINT concurrency_keys_pkey DO NOTHING;
    RETURN FOUND;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.lock_concurrency_key(concurrency_key text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.maintain(max_tasks integer DEFAULT 1000)
 RETURNS TABLE(rescued integer, pruned integer)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    PERFORM 1 FROM pgtasks.locks l WHERE l.name = 'maintain' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        rescued := 0;
        pruned := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    rescued := pgtasks.rescue_expired(max_tasks);
    pruned := pgtasks.prune_finished(NULL, max_tasks);
    RETURN NEXT;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.prune_flow_state(max_rows integer)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    -- A window whose reservation has passed is only ever taken over by the next submit of
    -- its key (submit_one); deleting it leaves the key free exactly as that would. SKIP
    -- LOCKED: a submit taking the row over right now keeps it.
    DELETE FROM pgtasks.unique_windows w
     WHERE w.unique_key IN (SELECT o.unique_key FROM pgtasks.unique_windows o
                             WHERE o.reserved_until < pgtasks.now()
                             LIMIT max_rows
                             FOR UPDATE SKIP LOCKED);
    -- Starts older than their queue's window count for nothing (claim_limited trims them
    -- itself, but only for queues it still claims from with a rate limit). A queue without
    -- settings or without a rate limit keeps none.
    DELETE FROM pgtasks.queue_starts s
     WHERE s.ctid IN (SELECT o.ctid FROM pgtasks.queue_starts o
                        LEFT JOIN pgtasks.queue_settings qs ON qs.queue = o.queue
                       WHERE qs.rate_limit IS NULL OR o.at < pgtasks.now() - qs.rate_period
                       LIMIT max_rows);
    -- Concurrency keys' rows an hour after they were made, unless a claimer holds one (SKIP
    -- LOCKED) or the key has a running task: a key used once would otherwise keep its row
    -- forever. The next claim of the key makes the row again (lock_concurrency_key).
    DELETE FROM pgtasks.concurrency_keys k
     WHERE k.concurrency_key IN (SELECT o.concurrency_key FROM pgtasks.concurrency_keys o
                                  WHERE o.created_at < pgtasks.now() - interval '1 hour'
                                    AND NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                                                     WHERE t.concurrency_key = o.concurrency_key
                                                       AND t.status = 'RUNNING')
                                  ORDER BY o.created_at
                                  LIMIT max_rows
                                  FOR UPDATE OF o SKIP LOCKED);
END $function$;
CREATE INDEX concurrency_keys_created ON pgtasks.concurrency_keys USING btree (created_at);
COMMENT ON TABLE pgtasks.concurrency_keys IS 'One lockable row per concurrency key in use: the claimer holding it decides how many of the key''s tasks start.';
COMMENT ON TABLE pgtasks.locks IS 'Rows pgtasks locks to run a job one caller at a time (maintain); no role but the owner may lock them.';
