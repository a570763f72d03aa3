-- Locks only pgtasks can take, and submits that stall no worker: maintain() and the
-- concurrency keys lock rows of owner-only tables (pgtasks.locks, pgtasks.concurrency_keys)
-- instead of advisory locks, which every role may take; submit_task(..., depends_on) reads
-- its parents FOR KEY SHARE and writes none of them, settling its child at commit and in
-- maintain() through pgtasks.unsettled_edges; depends_on is refused (PT511) to roles that
-- may not read the parents' results.
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

-- Dependencies submitted before this version marked their parents has_dependents already.
CREATE TABLE pgtasks.unsettled_edges (
    parent_id bigint NOT NULL,
    child_id  bigint NOT NULL,
    PRIMARY KEY (parent_id, child_id),
    FOREIGN KEY (parent_id, child_id) REFERENCES pgtasks.task_edges (parent_id, child_id) ON DELETE CASCADE
);

CREATE OR REPLACE FUNCTION pgtasks.calling_role()
 RETURNS name
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN session_user
                ELSE pg_catalog.current_setting('role')::name END
$function$;
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
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], attempts integer[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    picked bigint[];
    lease_for interval;
BEGIN
    IF claim_max IS NULL OR claim_max < 0 THEN
        RAISE EXCEPTION 'pgtasks: claim_max must be 0 or more, got %', coalesce(claim_max::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Pass the number of free slots; 0 only finishes the batch.';
    END IF;
    PERFORM pgtasks.check_worker_id(worker_id);
    lease_for := pgtasks.lease_or_default(lease);

    -- The two-statement path, for the calls listed above this function.
    IF claim_max = 0
       OR EXISTS (SELECT 1 FROM unnest(finish_and_claim.results) AS u(result), pgtasks.settings s
                   WHERE octet_length(u.result::text) > s.max_result_bytes)
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.id = ANY (finish_and_claim.task_ids) AND t.has_dependents)
       OR EXISTS (SELECT 1 FROM pgtasks.unsettled_edges u WHERE u.parent_id = ANY (finish_and_claim.task_ids))
       OR pgtasks.flow_control_in_use(queues) THEN
        RETURN QUERY
        SELECT f.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
               NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
          FROM pgtasks.finish_tasks(task_ids, attempts, results) f;
        IF claim_max > 0 THEN
            RETURN QUERY
            SELECT NULL::bigint, c.* FROM pgtasks.claim_tasks(worker_id, queues, claim_max, lease, task_types) c;
        END IF;
        RETURN;
    END IF;

    -- One statement. finish_tasks checked the arrays itself; here they are checked before
    -- anything is written, with the same message.
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, attempts, results, with_results => true);

    picked := pgtasks.pick_ready(queues, claim_max, task_types);

    -- Finishing rows carry their attempt (the fencing token: a stale one matches nothing and
    -- comes back rejected, a NULL one too); picked rows are ours, locked above. A task can
    -- be in both only if it went back to PENDING/COMMIT since its attempt: then the claim
    -- takes it and the finish is rejected, as with two statements.
    RETURN QUERY
    WITH work AS (
        SELECT u.task_id, u.attempt, u.result, true AS finishing
          FROM unnest(finish_and_claim.task_ids, finish_and_claim.attempts, finish_and_claim.results)
                 AS u(task_id, attempt, result)
        UNION ALL
        SELECT p.id, NULL::integer, NULL::jsonb, false FROM unnest(picked) AS p(id)
    ), changed AS (
        UPDATE pgtasks.tasks t
           SET status = CASE WHEN w.finishing THEN 'DONE' ELSE 'RUNNING' END::pgtasks.status,
               result = w.result,
               finished_at = CASE WHEN w.finishing THEN pgtasks.now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, pgtasks.now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE pgtasks.now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout) END,
               progress_current = CASE WHEN w.finishing THEN coalesce(t.progress_total, t.progress_current)
                                       ELSE t.progress_current END
          FROM work w
         WHERE t.id = w.task_id
           AND (NOT w.finishing OR (t.attempt = w.attempt AND t.status = 'RUNNING'))
        RETURNING w.finishing, t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  NOT w.finishing AND t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.attempt = w.attempt)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
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
    PERFORM pgtasks.settle_new_edges(max_tasks);
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
CREATE OR REPLACE FUNCTION pgtasks.record_updates()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_nestloop TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    ended bigint[];
    retried bigint[];
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
    SELECT n.id, n.attempt, o.status, n.status, coalesce(n.worker_id, o.worker_id)
      FROM new_rows n JOIN old_rows o USING (id)
     WHERE o.status <> n.status;

    -- Wake clients blocked in wait(), only for tasks someone watches.
    PERFORM pg_notify('pgtasks_done', n.id::text)
       FROM new_rows n
      WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')
        AND EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = n.id);

    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.has_dependents)
       OR EXISTS (SELECT 1 FROM pgtasks.unsettled_edges) THEN
        SELECT array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')),
               array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status IN ('PENDING', 'WAITING')
                                                       AND o.status IN ('FAILED', 'CANCELLED'))
          INTO ended, retried
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE (n.has_dependents OR n.id IN (SELECT u.parent_id FROM pgtasks.unsettled_edges u))
           AND o.status <> n.status;
        IF ended IS NOT NULL THEN
            PERFORM pgtasks.release_children(ended);
        END IF;
        IF retried IS NOT NULL AND current_setting('pgtasks.reviving', true) IS DISTINCT FROM 'on' THEN
            PERFORM pgtasks.revive_children(retried);
        END IF;
    END IF;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.settle_at_commit()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    parents bigint[];
    free bigint[];
    busy bigint;
BEGIN
    parents := ARRAY(SELECT e.parent_id FROM pgtasks.task_edges e WHERE e.child_id = NEW.child_id
                      ORDER BY e.parent_id);
    IF NEW.parent_id <> parents[1] THEN
        RETURN NULL;
    END IF;
    BEGIN
        free := ARRAY(SELECT t.id FROM pgtasks.tasks t WHERE t.id = ANY (parents)
                       ORDER BY t.id FOR SHARE SKIP LOCKED);
        RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'pgtasks: locks released';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    FOR busy IN SELECT u FROM unnest(parents) u WHERE u <> ALL (free) ORDER BY u LOOP
        BEGIN
            PERFORM 1 FROM pgtasks.tasks t WHERE t.id = busy FOR SHARE;
            RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'pgtasks: lock released';
        EXCEPTION WHEN raise_exception THEN
            NULL;
        END;
    END LOOP;
    PERFORM pgtasks.settle_child(NEW.child_id);
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.settle_child(child_id bigint)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    c record;
    dead record;
    unmet integer;
BEGIN
    SELECT t.status, t.on_parent_failure, t.waiting_on, t.queue, t.run_at INTO c
      FROM pgtasks.tasks t WHERE t.id = settle_child.child_id;
    IF NOT FOUND OR c.status <> 'WAITING' THEN
        RETURN;
    END IF;
    IF c.on_parent_failure IS DISTINCT FROM 'run' THEN
        SELECT p.id, p.status, p.workflow_node INTO dead
          FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
         WHERE e.child_id = settle_child.child_id AND p.status IN ('FAILED', 'CANCELLED')
         ORDER BY p.id LIMIT 1;
        IF FOUND THEN
            UPDATE pgtasks.tasks t
               SET status = 'CANCELLED', finished_at = pgtasks.now(), cancelled_by = dead.id,
                   error = pg_catalog.format('cancelled: parent task %s%s ended %s', dead.id,
                                             coalesce(' (' || dead.workflow_node || ')', ''), dead.status)
             WHERE t.id = settle_child.child_id AND t.status = 'WAITING';
            RETURN;
        END IF;
    END IF;
    SELECT count(*)::integer INTO unmet
      FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
     WHERE e.child_id = settle_child.child_id AND p.status NOT IN ('DONE', 'FAILED', 'CANCELLED');
    IF unmet = c.waiting_on THEN
        RETURN;
    END IF;
    UPDATE pgtasks.tasks t
       SET waiting_on = unmet,
           status = CASE WHEN unmet = 0 THEN 'PENDING'::pgtasks.status ELSE 'WAITING'::pgtasks.status END
     WHERE t.id = settle_child.child_id AND t.status = 'WAITING';
    -- Honours the off switch (pgtasks.wake_workers = off) like an insert does.
    IF unmet = 0 AND c.run_at <= pgtasks.now()
       AND current_setting('pgtasks.wake_workers', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('pgtasks_wakeup', c.queue);
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.settle_new_edges(max_rows integer)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    u record;
    n integer := 0;
BEGIN
    FOR u IN SELECT o.parent_id, o.child_id FROM pgtasks.unsettled_edges o
              ORDER BY o.parent_id, o.child_id
              LIMIT max_rows
                FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = u.parent_id FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = u.child_id FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        PERFORM pgtasks.settle_child(u.child_id);
        UPDATE pgtasks.tasks t SET has_dependents = true
         WHERE t.id = u.parent_id AND t.has_dependents IS NULL;
        DELETE FROM pgtasks.unsettled_edges o
         WHERE o.parent_id = u.parent_id AND o.child_id = u.child_id;
        n := n + 1;
    END LOOP;
    RETURN n;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_dependent(p pgtasks.tasks, params jsonb, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    parents bigint[];
    found_ids bigint[];
    unmet integer;
    dead record;
    policy text := coalesce(on_parent_failure, 'cancel');
    caller name;
    new_id bigint;
BEGIN
    IF policy NOT IN ('cancel', 'run') THEN
        RAISE EXCEPTION 'pgtasks: on_parent_failure must be cancel or run, got %', quote_literal(on_parent_failure)
            USING ERRCODE = 'PT505',
                  HINT = 'cancel (the default): a failed parent cancels this task; run: it runs anyway and '
                         'parent_results() says which parents failed.';
    END IF;
    IF depends_on IS NULL OR array_position(depends_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgtasks: depends_on must be an array of task ids without NULLs'
            USING ERRCODE = 'PT503', HINT = 'For example depends_on => ARRAY[41, 42]::bigint[].';
    END IF;
    parents := ARRAY(SELECT DISTINCT u FROM unnest(depends_on) u ORDER BY u);
    IF cardinality(parents) = 0 THEN
        new_id := (SELECT s.id FROM pgtasks.submit_one(p, params, NULL, NULL, concurrency_key, concurrency_limit) s);
        RETURN new_id;
    END IF;
    caller := pgtasks.calling_role();
    IF NOT pg_catalog.pg_has_role(caller, 'pgtasks_reader', 'USAGE') THEN
        RAISE EXCEPTION 'pgtasks: role % may not name existing tasks in depends_on: their results and errors go to the child''s worker, and % may not read them',
                quote_ident(caller), quote_ident(caller)
            USING ERRCODE = 'PT511',
                  HINT = 'Submit it as a role that may read results (a member of pgtasks_reader), or submit '
                         'parents and child together with pgtasks.submit_workflow.';
    END IF;
    SELECT array_agg(l.id ORDER BY l.id), count(*) FILTER (WHERE l.status NOT IN ('DONE', 'FAILED', 'CANCELLED'))
      INTO found_ids, unmet
      FROM (SELECT t.id, t.status FROM pgtasks.tasks t WHERE t.id = ANY (parents)
             ORDER BY t.id FOR KEY SHARE) l;
    IF found_ids IS DISTINCT FROM parents THEN
        RAISE EXCEPTION 'pgtasks: depends_on names task % which does not exist',
                (SELECT u FROM unnest(parents) u WHERE u <> ALL (coalesce(found_ids, '{}')) LIMIT 1)
            USING ERRCODE = 'PT503', HINT = 'Name tasks that exist; finished tasks are pruned after their retention.';
    END IF;
    IF policy = 'cancel' THEN
        SELECT t.id, t.status INTO dead FROM pgtasks.tasks t
         WHERE t.id = ANY (parents) AND t.status IN ('FAILED', 'CANCELLED') ORDER BY t.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgtasks: parent task % already ended %; this task could never run', dead.id, dead.status
                USING ERRCODE = 'PT507',
                      HINT = 'Retry the parent first, or submit with on_parent_failure => ''run''.';
        END IF;
    END IF;
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                               backoff_base, concurrency_key, concurrency_limit, status,
                               waiting_on, on_parent_failure)
    VALUES (p.task_type, submit_dependent.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base, submit_dependent.concurrency_key, submit_dependent.concurrency_limit,
            CASE WHEN unmet > 0 THEN 'WAITING'::pgtasks.status ELSE 'PENDING'::pgtasks.status END,
            unmet, policy)
    RETURNING id INTO new_id;
    INSERT INTO pgtasks.task_edges (parent_id, child_id) SELECT u, new_id FROM unnest(parents) u;
    INSERT INTO pgtasks.unsettled_edges (parent_id, child_id) SELECT u, new_id FROM unnest(parents) u;
    RETURN new_id;
END $function$;
CREATE INDEX concurrency_keys_created ON pgtasks.concurrency_keys USING btree (created_at);
CREATE CONSTRAINT TRIGGER unsettled_edges_settle AFTER INSERT ON pgtasks.unsettled_edges DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgtasks.settle_at_commit();
COMMENT ON FUNCTION pgtasks.calling_role() IS 'The role the calling session acts as (SET ROLE, else the login role), seen from inside a pgtasks function.';
COMMENT ON FUNCTION pgtasks.settle_at_commit() IS 'Trigger function of unsettled_edges_settle: at the commit of a depends_on submit, waits for the transactions writing its parents, then settles the child (settle_child).';
COMMENT ON TABLE pgtasks.concurrency_keys IS 'One lockable row per concurrency key in use: the claimer holding it decides how many of the key''s tasks start.';
COMMENT ON TABLE pgtasks.locks IS 'Rows pgtasks locks to run a job one caller at a time (maintain); no role but the owner may lock them.';
COMMENT ON TABLE pgtasks.unsettled_edges IS 'Dependencies added to existing tasks (depends_on) whose parent is not yet marked has_dependents; maintain() settles them.';
COMMENT ON COLUMN pgtasks.tasks.has_dependents IS 'True once a task depends on this one; else NULL. A dependency added with depends_on marks it when maintain() settles it (unsettled_edges lists it until then).';
