-- claim_limited waits at most 1 s (lock_timeout) for a limited queue's settings row, then
-- leaves the queues whose rows another session still holds out of the claim: a worker or
-- admin holding a transaction open no longer stalls every claim of the queue. One
-- function, no table lock.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], served text[], OUT picked bigint[], OUT started timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
