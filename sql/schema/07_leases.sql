-- Leases, the worker registry, and the maintenance that keeps the table healthy.
--
-- A claim (05_claim.sql) gives each task it hands out a deadline, pgtasks.now() plus the task's
-- timeout, and a lease, lease_expires_at, which never passes the deadline. A working
-- worker's heartbeat extends the leases of all its running tasks in one statement. A
-- worker that dies or hangs stops heartbeating; once a lease has expired, rescue hands the
-- task on as a failed attempt: back to COMMIT after the task's own backoff, to resume from
-- its checkpoints on another worker, or FAILED when its retries are used up. A task that
-- runs past its deadline is rescued the same way, whatever its heartbeats, because its
-- lease cannot outlive the deadline. Expiry is judged by the database's clock alone, so no
-- worker's clock ever decides it.
--
-- The registry (worker_registry, shown by pgtasks.workers) tells operators which workers
-- run, where, with how many slots. It decides nothing: a task belongs to the worker its row
-- names for as long as the lease holds.
--
-- Maintenance runs inside the workers, so there is no cron job to remember: every worker,
-- in any language, calls maintain() on a timer, and one call at a time does the work:
-- rescue, one batch of finished tasks pruned with their history, and the flow-control rows
-- that nothing reads any more.

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- The worker registry

-- Called at start and again after a lost connection: a worker cut off for longer than the
-- sweep window (rescue_expired deletes rows not seen for 10 minutes) comes back into the
-- registry instead of working invisibly. Registering an id that is there already only
-- refreshes its last_seen. Every column is checked with one code, PT206, so that a NULL host
-- or pid is refused with a HINT rather than a bare NOT NULL violation, and no blank or
-- oversized host or queue name, and no concurrency below 1, gets in.
CREATE FUNCTION pgtasks.register_worker(
    worker_id   text,
    host        text,
    pid         integer,
    queues      text[]   DEFAULT NULL,   -- NULL: every queue
    concurrency integer  DEFAULT 1,
    lease       interval DEFAULT NULL,   -- NULL: settings.default_lease
    code_versions       text[] DEFAULT NULL,   -- 'type@version' it runs, one per type
    compatible_versions text[] DEFAULT NULL    -- 'type@version' it can also resume
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
    -- A version is 1 to 64 of [A-Za-z0-9._+-], so 'type@version' splits at its last '@'
    -- and the claim can compare task_type || '@' || code_version with these as plain text.
    IF EXISTS (SELECT 1 FROM unnest(code_versions || compatible_versions) v
                WHERE v IS NULL OR v !~ '^.+@[A-Za-z0-9._+-]{1,64}$' OR octet_length(v) > 320)
       OR EXISTS (SELECT 1 FROM unnest(code_versions) v
                   GROUP BY left(v, length(v) - strpos(reverse(v), '@')) HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'pgtasks: code versions must be ''type@version'' (version: 1 to 64 of A-Z a-z 0-9 . _ + -), one running version per type, got % and %',
                left(code_versions::text, 80), left(compatible_versions::text, 80)
            USING ERRCODE = 'PT130',
                  HINT = 'For example code_versions => ARRAY[''report@2''], compatible_versions => ARRAY[''report@1''].';
    END IF;
    INSERT INTO pgtasks.worker_registry AS w (worker_id, host, pid, queues, concurrency, lease,
                                              code_versions, compatible_versions)
    VALUES (register_worker.worker_id, register_worker.host, register_worker.pid, register_worker.queues,
            register_worker.concurrency, pgtasks.lease_or_default(register_worker.lease),
            register_worker.code_versions, register_worker.compatible_versions)
    ON CONFLICT ON CONSTRAINT worker_registry_pkey DO UPDATE
       SET last_seen = pgtasks.now(), code_versions = EXCLUDED.code_versions,
           compatible_versions = EXCLUDED.compatible_versions;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.register_worker(text, text, integer, text[], integer, interval, text[], text[])
    TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.register_worker(text, text, integer, text[], integer, interval, text[], text[]) IS
    'Adds a worker to the registry (pgtasks.workers), or refreshes its last_seen if it is '
    'there already. Workers call it at start and after every reconnect; lease NULL means '
    'settings.default_lease. code_versions (type@version) are the versions it runs and '
    'records on the tasks it starts; compatible_versions the older ones it may resume.';

-- A worker that stops cleanly leaves the registry at once; one that dies stays listed (not
-- alive) until rescue sweeps it, so operators can see what died. The id is checked like
-- every worker_id (PT121).
CREATE FUNCTION pgtasks.unregister_worker(worker_id text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    DELETE FROM pgtasks.worker_registry w WHERE w.worker_id = unregister_worker.worker_id;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.unregister_worker(text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.unregister_worker(text) IS
    'Removes a worker from the registry when it stops cleanly.';

------------------------------------------------------------------------------------------
-- Heartbeats

-- Extends the leases of all of a worker's running tasks in one statement, to pgtasks.now() + lease
-- but never past a task's deadline, and reports the ones it no longer holds (cancelled, or
-- rescued after a lease ran out), so the worker can stop them. Fenced like every worker
-- write: a lease is extended only for the lease token and the worker that hold it, so a
-- late heartbeat cannot revive a task another worker now runs, and a guessed token matches
-- nothing (nor locks anything: it is compared in the UPDATE's own WHERE clause). It also
-- refreshes the worker's last_seen in the registry. A cancel notification is confirmed by
-- calling it (docs/worker-protocol.md): the cancelled task comes back lost.
--
-- A row another session keeps locked (an operator's transaction left open after
-- cancel_task) must not cost the worker the leases of all its other tasks: after
-- lock_timeout the statement is redone skipping locked rows, which are neither extended
-- nor reported lost (the next heartbeat asks again; rescue skips a locked row too). The
-- redo runs only then; the common call pays one subtransaction for the exception block.
CREATE FUNCTION pgtasks.heartbeat(
    worker_id    text,
    task_ids     bigint[],
    lease_tokens text[],
    lease        interval DEFAULT NULL    -- NULL: settings.default_lease
) RETURNS TABLE (lost_task_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    lease_for interval;
    lost bigint[];
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    PERFORM pgtasks.check_batch('heartbeat', task_ids, lease_tokens);
    lease_for := pgtasks.lease_or_default(lease);

    UPDATE pgtasks.worker_registry w SET last_seen = now_
     WHERE w.worker_id = heartbeat.worker_id;

    BEGIN
        WITH mine AS (
            SELECT u.task_id, u.lease_token
              FROM unnest(heartbeat.task_ids, heartbeat.lease_tokens) AS u(task_id, lease_token)
        ), extended AS (
            UPDATE pgtasks.tasks t
               SET lease_expires_at = least(now_ + lease_for, t.deadline)
              FROM mine
             WHERE t.id = mine.task_id AND t.lease_token = mine.lease_token
               AND t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id
            RETURNING t.id, mine.lease_token AS token
        )
        -- NOT EXISTS, not NOT IN: with a NULL token in the batch, NOT IN is never true
        -- and that task would be neither extended nor reported lost.
        SELECT array_agg(mine.task_id) INTO lost FROM mine
         WHERE NOT EXISTS (SELECT 1 FROM extended e WHERE e.id = mine.task_id AND e.token = mine.lease_token);
    EXCEPTION WHEN lock_not_available THEN
        -- Only rows the token matches are locked here too. Lost: what the token does not
        -- hold (read without a lock); a row it holds but another session has locked is
        -- skipped, and left out of both lists.
        WITH mine AS (
            SELECT u.task_id, u.lease_token
              FROM unnest(heartbeat.task_ids, heartbeat.lease_tokens) AS u(task_id, lease_token)
        ), free AS (
            SELECT t.id FROM pgtasks.tasks t
              JOIN mine ON t.id = mine.task_id AND t.lease_token = mine.lease_token
             WHERE t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id
               FOR NO KEY UPDATE OF t SKIP LOCKED
        ), extended AS (
            UPDATE pgtasks.tasks t
               SET lease_expires_at = least(now_ + lease_for, t.deadline)
             WHERE t.id IN (SELECT f.id FROM free f)
        )
        SELECT array_agg(mine.task_id) INTO lost FROM mine
         WHERE NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                            WHERE t.id = mine.task_id AND t.lease_token = mine.lease_token
                              AND t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id);
    END;
    RETURN QUERY SELECT u.id FROM unnest(lost) AS u(id);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.heartbeat(text, bigint[], text[], interval)
    TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.heartbeat(text, bigint[], text[], interval) IS
    'Extends the leases of a worker''s running tasks (parallel arrays of ids and lease tokens; '
    'never past their deadlines) and returns the ids of the tasks it no longer holds, which '
    'the worker must stop. A task another session keeps locked is neither extended nor '
    'returned. lease NULL means settings.default_lease.';

------------------------------------------------------------------------------------------
-- Reconciling after a lost answer

-- A claim (claim_tasks, finish_and_claim) can commit while its answer is lost with the
-- connection: the rows are RUNNING under this worker's id, with lease tokens it never saw,
-- so no heartbeat names them and nothing runs them until their lease runs out and rescue
-- spends a retry on each. The worker, after a failed claim and on each heartbeat, passes
-- the ids of every task it holds (runs, keeps prefetched, or still has an outcome to
-- write); this hands back each other RUNNING task under its worker_id as yield_task does:
-- COMMIT, claimable now, no retry spent, checkpoints kept. It can never touch a task the
-- worker holds (those ids are excluded) nor another worker's (worker_id must match); the
-- worker sends no claim while this runs, so a claim's rows cannot arrive unlisted. A row
-- another session keeps locked is skipped (the next call asks again). A NULL list (or a
-- NULL id in it) hands back nothing: unknown holdings must never cost a task. Returns the ids.
CREATE FUNCTION pgtasks.hand_back_unheld(worker_id text, held_task_ids bigint[])
RETURNS TABLE (task_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    now_ timestamptz := pgtasks.now();
    back bigint[];
    tags text[];
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    WITH unheld AS (
        SELECT t.id FROM pgtasks.tasks t
         -- lease_expires_at IS NOT NULL: the partial index tasks_lease holds just the
         -- running rows, so this reads those, not the whole table.
         WHERE t.lease_expires_at IS NOT NULL
           AND t.status = 'RUNNING' AND t.worker_id = hand_back_unheld.worker_id
           AND NOT (t.id = ANY (hand_back_unheld.held_task_ids))
           FOR NO KEY UPDATE OF t SKIP LOCKED
    ), handed AS (
        UPDATE pgtasks.tasks k
           SET status = 'COMMIT', run_at = now_,
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
         WHERE k.id IN (SELECT u.id FROM unheld u)
        RETURNING k.id, k.queue
    )
    SELECT array_agg(h.id), array_agg(DISTINCT pgtasks.queue_tag(h.queue)) INTO back, tags
      FROM handed h;
    IF back IS NOT NULL THEN
        PERFORM pg_notify('pgtasks_wakeup', tag) FROM unnest(tags) AS u(tag);
    END IF;
    RETURN QUERY SELECT u.id FROM unnest(back) AS u(id);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.hand_back_unheld(text, bigint[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.hand_back_unheld(text, bigint[]) IS
    'Hands back, without spending a retry, every RUNNING task under worker_id whose id is not '
    'in held_task_ids (a claim whose answer was lost); returns their ids.';

------------------------------------------------------------------------------------------
-- Rescue

-- The error rescue records for an expired attempt: a deadline overrun (the task ran past
-- its time limit) or a lease that ran out (its worker stopped heartbeating).
CREATE FUNCTION pgtasks.expiry_reason(t pgtasks.tasks) RETURNS text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE WHEN t.deadline < pgtasks.now()
                THEN pg_catalog.format('timed out: ran past its %s time limit (worker %s)', t.timeout, t.worker_id)
                ELSE pg_catalog.format('lease expired: worker %s stopped heartbeating', t.worker_id) END
$$;

-- Locks up to max_tasks expired tasks, oldest expiry first, skipping any that another
-- rescuer holds (SKIP LOCKED), so every worker may rescue at once without queueing behind
-- the others. lease_expires_at never exceeds deadline, so this also catches overrun
-- deadlines. The walk is tasks_lease (queue, lease_expires_at), which holds running tasks
-- only: PostgreSQL 18 skips through its queues; older servers read every running task's
-- entry and sort the expired ones, which is bounded by the running tasks, never by the
-- backlog or the history.
CREATE FUNCTION pgtasks.lock_expired(max_tasks integer) RETURNS SETOF pgtasks.tasks
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT * FROM pgtasks.tasks t
     WHERE t.lease_expires_at IS NOT NULL AND t.lease_expires_at < pgtasks.now()
     ORDER BY t.lease_expires_at
     LIMIT lock_expired.max_tasks
     FOR NO KEY UPDATE SKIP LOCKED
$$;

-- One expired task, isolated, for rescue_expired's slow path. Returns 1 when it was handed
-- on, or, should that fail, marked FAILED with the reason (and a WARNING); 0 when even
-- that failed and the task was skipped (with a WARNING).
CREATE FUNCTION pgtasks.rescue_one(t pgtasks.tasks) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
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

-- Moves every delta into task_counts (01_tables.sql) in one statement, so a reader of
-- task_counters sees each count once, before or after. The deltas are one row per
-- statement, so they hold at most what the fleet wrote since the last maintenance round.
-- Callers may overlap (rescue_expired runs outside maintain() too): a delta row is deleted
-- by one of them only, and the upserts go in key order, so two folds never deadlock.
CREATE FUNCTION pgtasks.fold_counts() RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    WITH moved AS (
        DELETE FROM pgtasks.task_count_deltas d RETURNING d.queue, d.task_type, d.kind, d.n
    )
    INSERT INTO pgtasks.task_counts AS c (queue, task_type, kind, n)
    SELECT m.queue, m.task_type, m.kind, sum(m.n) FROM moved m
     GROUP BY m.queue, m.task_type, m.kind
     ORDER BY m.queue, m.task_type, m.kind
    ON CONFLICT ON CONSTRAINT task_counts_pkey DO UPDATE SET n = c.n + excluded.n
$$;
COMMENT ON FUNCTION pgtasks.fold_counts() IS
    'Folds task_count_deltas into task_counts; rescue_expired (and so maintain) calls it.';

-- Tasks whose lease expired (their worker died or hung) or that ran past their deadline
-- are handed on as a failed attempt by record_failure (06_finish.sql): COMMIT to resume
-- elsewhere, after the backoff the row itself carries (backoff_base, the one fail_task
-- uses too), or FAILED when retries are used up.
--
-- No single row may stop the rescue of the others. The batch runs in one subtransaction;
-- should a row still fail (a hand-added trigger or constraint), the batch is redone row by
-- row, each row in its own subtransaction (rescue_one). Per-row subtransactions only on
-- that path: a thousand of them in every call would overflow the subtransaction cache.
--
-- Three sweeps ride along: registry rows of workers not seen for 10 minutes, the watch
-- registrations (task_waiters) of clients whose session has ended, and the counters'
-- deltas (fold_counts).
CREATE FUNCTION pgtasks.rescue_expired(max_tasks integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t pgtasks.tasks;
    n integer := 0;
BEGIN
    PERFORM pgtasks.check_max_tasks(max_tasks);
    -- Read by record_updates: what moves now is counted as rescued.
    PERFORM set_config('pgtasks.rescuing', 'on', true);
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
    PERFORM set_config('pgtasks.rescuing', '', true);
    DELETE FROM pgtasks.worker_registry WHERE last_seen < pgtasks.now() - interval '10 minutes';
    -- Watch registrations of clients that went away without unwatching (killed mid-wait):
    -- they would only cost needless notifications, but they should not pile up.
    DELETE FROM pgtasks.task_waiters w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = w.pid);
    PERFORM pgtasks.fold_counts();
    RETURN n;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.rescue_expired(integer) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.rescue_expired(integer) IS
    'Hands up to max_tasks tasks whose lease expired or whose deadline passed on as a failed '
    'attempt (COMMIT to resume, or FAILED); returns how many. maintain() calls it.';

------------------------------------------------------------------------------------------
-- Pruning

-- The flow-control rows nothing reads any more, at most max_rows of each kind per call:
-- unique_for windows whose reservation has passed (a key submitted once a day would
-- otherwise leave one row a day forever), queue_starts rows older than their queue's
-- rate window, or of a queue that no longer has a rate limit (the limited claim path trims
-- only the queues it still claims from), and the rows of idle concurrency keys. Not
-- counted in prune_finished's result, which stays "finished tasks deleted".
CREATE FUNCTION pgtasks.prune_flow_state(max_rows integer) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    -- A window whose reservation has passed is only ever taken over by the next submit of
    -- its key (submit_one); deleting it leaves the key free exactly as that would. SKIP
    -- LOCKED: a submit taking the row over right now keeps it.
    DELETE FROM pgtasks.unique_windows w
     WHERE (w.task_type, w.unique_key) IN (SELECT o.task_type, o.unique_key FROM pgtasks.unique_windows o
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
END $$;

-- Deletes the tasks that finished more than older_than ago (NULL: settings.retention),
-- oldest first and at most max_tasks per call, so that no long lock is held; a row another
-- session has locked waits for the next call. The retention is the admin's decision: any
-- worker may call this, and prune_finished(interval '0', 100000) once deleted all finished
-- history, so older_than below settings.retention needs pgtasks_admin (PT120); a longer
-- one, keeping more, is anyone's. Their history goes with them: task_errors,
-- task_steps, task_logs, task_waiters and task_edges through their foreign keys' cascade,
-- task_events (which has no foreign key, see 01_tables.sql) in the same statement.
--
-- History is append-only (03_state_machine.sql); its triggers let pruning through while
-- the transaction-local setting pgtasks.pruning is on, which this function sets around its
-- one DELETE statement. Set inside the function rather than as a SET clause on it: only a
-- superuser may attach a custom setting to a function, and pgtasks must install without one.
CREATE FUNCTION pgtasks.prune_finished(
    older_than interval DEFAULT NULL,    -- NULL: settings.retention
    max_tasks  integer  DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
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
    IF older_than < (SELECT s.retention FROM pgtasks.settings s) AND NOT pgtasks.caller_is_admin() THEN
        RAISE EXCEPTION 'pgtasks: older_than % is shorter than settings.retention (%); only pgtasks_admin may prune sooner',
                older_than, (SELECT s.retention FROM pgtasks.settings s)
            USING ERRCODE = 'PT120',
                  HINT = 'Leave older_than out (NULL) for settings.retention, or have an admin change it: '
                         'SELECT pgtasks.configure(retention => ...).';
    END IF;
    cutoff := pgtasks.now() - coalesce(older_than, (SELECT s.retention FROM pgtasks.settings s));
    -- Lets the append-only triggers through for this statement only (see reject_history_change).
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
        -- task_events has no foreign key (see its table), so its rows go here, not by cascade.
        DELETE FROM pgtasks.task_events e USING gone WHERE e.task_id = gone.id
    )
    SELECT count(*)::integer INTO n FROM gone;
    PERFORM set_config('pgtasks.pruning', '', true);
    PERFORM pgtasks.prune_flow_state(max_tasks);
    RETURN n;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.prune_finished(interval, integer) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.prune_finished(interval, integer) IS
    'Deletes up to max_tasks tasks that finished more than older_than ago (NULL: '
    'settings.retention; shorter than it: pgtasks_admin only), with their history; returns '
    'how many. maintain() calls it.';

------------------------------------------------------------------------------------------
-- Roll-up (the charts' buckets: task_rollup, 01_tables.sql)

-- The bins of the run and wait histograms, in seconds: bin i holds [bounds[i], bounds[i+1]),
-- the last one everything from a day up. About 2.5x apart, so a percentile read from them
-- is within a factor of 2.5 of the true one (and never above the bucket's max).
CREATE FUNCTION pgtasks.rollup_bounds() RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT '{0,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600,86400}'::float8[]
$$;
GRANT EXECUTE ON FUNCTION pgtasks.rollup_bounds() TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.rollup_bounds() IS
    'The lower bounds in seconds of the bins of task_rollup''s run and wait histograms.';

-- How many of `seconds` fall in each bin of rollup_bounds(); NULL for none.
CREATE FUNCTION pgtasks.histogram(seconds float8[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT array_agg(coalesce(c.n, 0) ORDER BY i.i)
      FROM generate_series(1, cardinality(pgtasks.rollup_bounds())) i(i)
      LEFT JOIN (SELECT width_bucket(greatest(s.s, 0), pgtasks.rollup_bounds()) AS bin, count(*) AS n
                   FROM unnest(seconds) s(s) GROUP BY 1) c ON c.bin = i.i
    HAVING count(c.n) > 0
$$;
COMMENT ON FUNCTION pgtasks.histogram(float8[]) IS
    'Counts of the values per bin of rollup_bounds() (NULL when there are none).';

-- Histograms added bin by bin: `hists` is a two-dimensional array, one histogram a row (as
-- array_agg of one-dimensional arrays builds it).
CREATE FUNCTION pgtasks.histogram_sum(hists bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT array_agg((SELECT sum(hists[r][i])::bigint FROM generate_subscripts(hists, 1) r) ORDER BY i)
      FROM generate_subscripts(hists, 2) i
$$;
COMMENT ON FUNCTION pgtasks.histogram_sum(bigint[]) IS
    'The bin-by-bin sum of histograms given as the rows of a two-dimensional array.';

-- The q-quantile of a histogram: the upper bound of the bin it falls in, at most max_seen
-- (the largest value, which the last bin has no bound for); NULL for an empty histogram.
CREATE FUNCTION pgtasks.histogram_quantile(hist bigint[], q float8, max_seen float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT least(coalesce((pgtasks.rollup_bounds())[c.i::integer + 1], max_seen), max_seen)
      FROM (SELECT u.i, sum(u.n) OVER (ORDER BY u.i) AS cum, sum(u.n) OVER () AS total
              FROM unnest(hist) WITH ORDINALITY u(n, i)) c
     WHERE c.total > 0 AND c.cum >= q * c.total
     ORDER BY c.i
     LIMIT 1
$$;
GRANT EXECUTE ON FUNCTION pgtasks.histogram_quantile(bigint[], float8, float8) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.histogram_quantile(bigint[], float8, float8) IS
    'The q-quantile of a task_rollup histogram: the upper bound of its bin, at most max_seen.';

-- Rolls the tasks that ended into task_rollup's 10-second buckets, each bucket once, up to
-- 5 seconds before now (a finish records its transaction's start time and commits within
-- it: a bucket is rolled once the finishes it holds have committed; one committed more
-- than 5 s after it began is not counted), at most 60 buckets (10 minutes) a call so a
-- catch-up after an outage is a series of short calls; it skips straight to the first
-- task that ended since. It reads the rows of tasks_finished_at in the range only: each
-- ended task once, never the backlog. Then it sums the 5-minute buckets those fall in from
-- the 10-second ones, samples each queue's depth (pgtasks.queues, index-only; the 50
-- deepest queues, so that queue names made by the thousand cannot grow the table by the
-- thousand per call) and deletes the rows past their horizon. Nothing on the claim or
-- finish path: maintain() calls it. rolled_to's row lock keeps two calls from rolling a
-- bucket twice (the second returns 0 at once, as maintain() does); the first call (or one
-- after maintenance stopped for over 2 hours) starts at most 2 hours back, as far as the
-- 10-second buckets are kept. Returns how many 10-second buckets it rolled. Measured on
-- the 2-core test machine: 50,000 ended tasks in 5 queues over 10 minutes rolled in one
-- call of 0.5 s (10 us a task), a call with nothing new 4 to 6 ms, most of it the depth
-- sample.
CREATE FUNCTION pgtasks.roll_up() RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    now_ timestamptz := pgtasks.now();
    fine constant interval := interval '10 seconds';
    coarse constant interval := interval '5 minutes';
    origin constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    from_ timestamptz;
    to_ timestamptz;
BEGIN
    SELECT greatest(s.rolled_to, date_bin(fine, now_ - interval '2 hours', origin)) INTO from_
      FROM pgtasks.rollup_state s FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN  -- another call is rolling: the work is the same whoever does it
        RETURN 0;
    END IF;
    to_ := date_bin(fine, now_ - interval '5 seconds', origin);
    -- Straight to the first task that ended since (one probe of tasks_finished_at): a fresh
    -- install or an idle night costs no call per empty 10 minutes.
    from_ := greatest(from_, least(coalesce(
        date_bin(fine, (SELECT min(t.finished_at) FROM pgtasks.tasks t
                         WHERE t.status IN ('DONE', 'FAILED', 'CANCELLED') AND t.finished_at >= from_),
                 origin), to_), to_));
    to_ := least(to_, from_ + fine * 60);
    IF to_ > from_ THEN
        INSERT INTO pgtasks.task_rollup AS r (width, bucket, queue, done, failed, cancelled,
               run_count, run_sum, run_max, run_hist, wait_count, wait_sum, wait_max, wait_hist)
        SELECT fine, e.bucket, e.queue,
               count(*) FILTER (WHERE e.status = 'DONE'),
               count(*) FILTER (WHERE e.status = 'FAILED'),
               count(*) FILTER (WHERE e.status = 'CANCELLED'),
               count(e.run_s), coalesce(sum(e.run_s), 0), max(e.run_s),
               pgtasks.histogram(array_agg(e.run_s) FILTER (WHERE e.run_s IS NOT NULL)),
               count(e.wait_s), coalesce(sum(e.wait_s), 0), max(e.wait_s),
               pgtasks.histogram(array_agg(e.wait_s) FILTER (WHERE e.wait_s IS NOT NULL))
          FROM (SELECT date_bin(fine, t.finished_at, origin) AS bucket, t.queue, t.status,
                       CASE WHEN t.status IN ('DONE', 'FAILED') AND t.started_at IS NOT NULL
                            THEN greatest(extract(epoch FROM t.finished_at - t.started_at), 0)::float8
                       END AS run_s,
                       -- One attempt: run_at is still when the task became ready.
                       CASE WHEN t.status IN ('DONE', 'FAILED') AND t.attempt = 1
                            THEN greatest(extract(epoch FROM t.started_at - t.run_at), 0)::float8
                       END AS wait_s
                  FROM pgtasks.tasks t
                 WHERE t.status IN ('DONE', 'FAILED', 'CANCELLED')
                   AND t.finished_at >= from_ AND t.finished_at < to_) e
         GROUP BY e.bucket, e.queue
         ORDER BY e.bucket, e.queue
        ON CONFLICT ON CONSTRAINT task_rollup_pkey DO UPDATE
           SET done = excluded.done, failed = excluded.failed, cancelled = excluded.cancelled,
               run_count = excluded.run_count, run_sum = excluded.run_sum,
               run_max = excluded.run_max, run_hist = excluded.run_hist,
               wait_count = excluded.wait_count, wait_sum = excluded.wait_sum,
               wait_max = excluded.wait_max, wait_hist = excluded.wait_hist;
    END IF;
    -- Skipped or rolled, every bucket before to_ is final.
    UPDATE pgtasks.rollup_state s SET rolled_to = greatest(from_, to_);
    -- The depth now, into the bucket now falls in (rolled later; its counts leave it be).
    INSERT INTO pgtasks.task_rollup AS r (width, bucket, queue, ready, running)
    SELECT fine, date_bin(fine, now_, origin), d.queue, d.ready, d.running
      FROM (SELECT q.queue, q.ready, q.running FROM pgtasks.queues q
             WHERE q.ready > 0 OR q.running > 0
             ORDER BY q.ready + q.running DESC, q.queue
             LIMIT 50) d
     ORDER BY d.queue
    ON CONFLICT ON CONSTRAINT task_rollup_pkey DO UPDATE
       SET ready = greatest(r.ready, excluded.ready), running = greatest(r.running, excluded.running);
    -- The 5-minute buckets that the new 10-second ones (and the sample) fall in, summed again.
    INSERT INTO pgtasks.task_rollup AS r (width, bucket, queue, done, failed, cancelled,
           run_count, run_sum, run_max, run_hist, wait_count, wait_sum, wait_max, wait_hist,
           ready, running)
    SELECT coarse, f.bucket, f.queue, sum(f.done), sum(f.failed), sum(f.cancelled),
           sum(f.run_count), sum(f.run_sum), max(f.run_max),
           pgtasks.histogram_sum(array_agg(f.run_hist) FILTER (WHERE f.run_hist IS NOT NULL)),
           sum(f.wait_count), sum(f.wait_sum), max(f.wait_max),
           pgtasks.histogram_sum(array_agg(f.wait_hist) FILTER (WHERE f.wait_hist IS NOT NULL)),
           max(f.ready), max(f.running)
      FROM (SELECT date_bin(coarse, x.bucket, origin) AS bucket, x.queue, x.done, x.failed,
                   x.cancelled, x.run_count, x.run_sum, x.run_max, x.run_hist, x.wait_count,
                   x.wait_sum, x.wait_max, x.wait_hist, x.ready, x.running
              FROM pgtasks.task_rollup x
             WHERE x.width = fine AND x.bucket >= date_bin(coarse, from_, origin)) f
     GROUP BY f.bucket, f.queue
     ORDER BY f.bucket, f.queue
    ON CONFLICT ON CONSTRAINT task_rollup_pkey DO UPDATE
       SET done = excluded.done, failed = excluded.failed, cancelled = excluded.cancelled,
           run_count = excluded.run_count, run_sum = excluded.run_sum,
           run_max = excluded.run_max, run_hist = excluded.run_hist,
           wait_count = excluded.wait_count, wait_sum = excluded.wait_sum,
           wait_max = excluded.wait_max, wait_hist = excluded.wait_hist,
           ready = excluded.ready, running = excluded.running;
    -- The 5-minute sums above read 10-second rows from 2 hours and 5 minutes back at most.
    DELETE FROM pgtasks.task_rollup r WHERE r.width = fine AND r.bucket < now_ - interval '2 hours 5 minutes';
    DELETE FROM pgtasks.task_rollup r WHERE r.width = coarse AND r.bucket < now_ - interval '8 days';
    RETURN greatest(extract(epoch FROM to_ - from_) / 10, 0)::integer;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.roll_up() TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.roll_up() IS
    'Rolls the tasks that ended into task_rollup''s 10-second and 5-minute buckets (up to 10 minutes a call), samples queue depth and deletes buckets past their horizon; returns the 10-second buckets rolled. maintain() calls it.';

------------------------------------------------------------------------------------------
-- Maintenance

-- Rescue, one prune batch and the sweeps, in one call that workers of every language make
-- on a timer. When a call is already running, the others return (0, 0) at once instead of
-- queueing behind its sweeps: the work is the same whoever does it. The lock is the
-- 'maintain' row of pgtasks.locks, which only the owner can lock (an advisory lock, which
-- every role may take, let a role without grants switch maintenance off); it goes with the
-- caller's commit. The charts' roll-up (roll_up) runs between rescue and pruning. Last,
-- the dependencies added to running parents are settled (settle_new_edges): it locks
-- parents, so it runs just before the commit.
CREATE FUNCTION pgtasks.maintain(max_tasks integer DEFAULT 1000)
RETURNS TABLE (rescued integer, pruned integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
    -- Before the prune, so no ended task goes before it is counted. The charts are not
    -- worth a failed maintenance: an error here is a warning, and rescue and pruning go on.
    BEGIN
        PERFORM pgtasks.roll_up();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgtasks: roll_up failed (%); the charts wait for the next call', SQLERRM;
    END;
    pruned := pgtasks.prune_finished(NULL, max_tasks);
    PERFORM pgtasks.settle_new_edges(max_tasks);
    RETURN NEXT;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.maintain(integer) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.maintain(integer) IS
    'The periodic maintenance every worker calls: rescues expired leases and prunes one batch '
    'of finished tasks, returning both counts; returns (0, 0) at once while another call is at '
    'work.';
