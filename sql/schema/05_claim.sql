-- pgtasks claiming: how a worker takes ready tasks, and the fencing every later write of
-- the attempt goes through.
--
-- A claim takes up to max_tasks ready tasks (PENDING or COMMIT, run_at <= pgtasks.now()) for one
-- worker: highest priority first, then oldest run_at, then id. Each claimed task becomes
-- RUNNING with a lease (lease_expires_at, extended by heartbeats) and a deadline (claim
-- time + timeout, never extended), its attempt grows by one (a counter for people), and it
-- gets a new lease token: 256 random bits, returned to the claimer alone. Every write the
-- worker makes for the attempt (heartbeat, finish, fail, yield, checkpoint, progress, log,
-- and its reads of steps and parents' results) presents the token and is refused with PT002
-- once the attempt has lost the task (rescued after its lease expired, cancelled, claimed
-- again), so a late write changes nothing. The attempt number cannot serve as the fence:
-- task_overview shows it to every submitter, so any worker could present it.
--
-- SKIP LOCKED lets many workers claim side by side without waiting on each other. NO KEY
-- UPDATE, not UPDATE: inserting a row that references a task (a client starting to wait
-- for it, a log line) briefly key-share-locks the task; FOR UPDATE would treat such a task
-- as taken and skip it, claiming a lower-priority one instead.

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- The pick

-- The pick of a claim without flow control, for both callers (claim_tasks,
-- finish_and_claim): the ready tasks in claim order, locked, skipping any another claimer
-- holds. NULL when nothing is ready. No role may call it: it only locks, and both callers
-- check their arguments first.
--
-- Code versions: a task whose first attempt recorded a version (code_version) is taken only
-- by a claimer that serves it: `served` holds the claimer's 'type@version' pairs
-- (worker_version_set, read once per claim). The test is two operators on the row the walk
-- is at, no function call and no extra index: unversioned tasks (code_version NULL) pass at
-- once, and a task of a version this worker does not serve is skipped like a locked one.
--
-- Written out per case (one task type / every queue / one queue / several) so that each
-- is a static statement whose plan walks a partial index in claim order
-- (tasks_claimable_type for a claimer of one type, in any queues; tasks_claimable for
-- every queue, tasks_claimable_queue for one) and stops after max_tasks rows: no sort,
-- whatever the backlog; tests/sql/test_plans.py checks the plans. A claimer of one type
-- walks only that type's rows: on the queue's index it stepped over every ready row of
-- the other types (measured with 200,000 ready of another type in its queue: 36 ms per
-- claim before, 0.05 ms after, medians of 7 from EXPLAIN ANALYZE). A queue table's statistics are
-- stale more often than not (a burst of submits, then a drain); with a low estimate the
-- planner would fetch every ready row by bitmap and sort them (measured: 6 ms instead of
-- 0.1 ms per claim with 20,000 ready), hence sorting and bitmap scans off for this
-- function only. JIT off with them: before PostgreSQL 18 a disabled method is not
-- forbidden but costs 1e10 more, which puts a plan that still needs one far above
-- jit_above_cost, and with JIT available (Debian's and the PGDG packages) every such
-- statement was compiled on every call (measured on PostgreSQL 15: a claim of 100 took
-- 157 ms instead of 5 ms; a claim of 1, 149 ms instead of 1.4 ms). Nothing in pgtasks is
-- a long analytical query that JIT would pay off for.
CREATE FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[], served text[])
RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
AS $$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    picked bigint[];
BEGIN
    IF cardinality(task_types) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND t.task_type = pick_ready.task_types[1]
               AND (pick_ready.queues IS NULL OR t.queue = ANY (pick_ready.queues))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND t.queue = pick_ready.queues[1]
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= now_
               AND t.queue = ANY (pick_ready.queues)
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    RETURN picked;
END $$;

------------------------------------------------------------------------------------------
-- Code versions of a claimer

-- What a claimer serves, from its registry row (register_worker): `served`, every
-- 'type@version' it runs or declares compatible (pick_ready's filter), and the version it
-- runs of each type as two parallel arrays (run_types, run_versions), which the claim
-- records on a task's first attempt. One primary-key probe per claim; a claimer without a
-- row (psql, a test) or without versions serves only unversioned tasks and records none.
CREATE TYPE pgtasks.worker_version_set AS (served text[], run_types text[], run_versions text[]);
COMMENT ON TYPE pgtasks.worker_version_set IS
    'What a claimer serves: type@version pairs, and the version it runs of each type.';

CREATE FUNCTION pgtasks.worker_versions(worker_id text) RETURNS pgtasks.worker_version_set
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT ROW(w.code_versions || w.compatible_versions,
               ARRAY(SELECT left(c, length(c) - strpos(reverse(c), '@')) FROM unnest(w.code_versions) c),
               ARRAY(SELECT right(c, strpos(reverse(c), '@') - 1) FROM unnest(w.code_versions) c)
              )::pgtasks.worker_version_set
      FROM pgtasks.worker_registry w WHERE w.worker_id = worker_versions.worker_id
$$;

------------------------------------------------------------------------------------------
-- A claim's commit skips the WAL flush

-- A claim commits with synchronous_commit = off: its commit returns without waiting for the
-- WAL flush (the WAL writer flushes it within wal_writer_delay, 200 ms by default). What a
-- crash can take is only the claim itself: the task is PENDING again after recovery and
-- runs once more, which at-least-once delivery allows already. It cannot let a late write
-- through: the lost claim's lease token was never stored durably, the next claim draws a
-- new seed, and every fenced call compares tokens. Submits, finishes, failures and
-- checkpoints keep their durable commits: an acknowledged task or result is never lost.
-- From idle a task pays two commits before its code starts (the submit's and the claim's);
-- this removes the second one's flush (docs/performance.md has the measured effect).
--
-- Only when the claim is its transaction's first write (claim_tasks checks before it
-- writes): a claim that joins a transaction which already wrote leaves its commit alone.
-- A write to a task after the claim in the same transaction (a submit, a finish, a status
-- change: the tasks triggers), or a checkpoint, calls keep_durable, which puts the caller's
-- setting back, so the commit is durable again. With synchronous standbys configured
-- (synchronous_standby_names) claims stay durable and replicated: a failover must not
-- forget a claim whose task has already run (docs/high-availability.md). A session that
-- runs with synchronous_commit = off already is left as it is.
CREATE FUNCTION pgtasks.skip_claim_flush() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF current_setting('synchronous_standby_names') = '' AND current_setting('synchronous_commit') <> 'off' THEN
        -- The caller's setting, for keep_durable; both are transaction-local (is_local).
        PERFORM set_config('pgtasks.claim_commit', current_setting('synchronous_commit'), true);
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END $$;
COMMENT ON FUNCTION pgtasks.skip_claim_flush() IS
    'For claim_tasks: lets the claim''s transaction commit without waiting for the WAL flush (synchronous_commit = off until keep_durable or the commit), unless synchronous standbys are configured.';

------------------------------------------------------------------------------------------
-- claim_tasks

-- Claims up to max_tasks ready tasks for worker_id and returns them in claim order, with
-- the lease token (the fence of every later call), the attempt and the deadline each now
-- runs under; has_steps says a resumed attempt has checkpoints to read (task_steps_of).
-- soft_deadline (claim time + the row's soft_timeout, NULL without one) is when the worker
-- should raise inside the task so it can clean up before the hard deadline; the database
-- enforces only the hard one.
--
-- The token: each claim that takes rows draws a seed of two version-4 UUIDs from
-- gen_random_uuid (core PostgreSQL's strong random source, pg_strong_random: 244 random
-- bits), kept in a variable and never stored, and each row's token is sha256(seed || id)
-- in 64 hex digits. Without the seed no token can be computed, not even from the other
-- tokens of the same claim, and every row's differs. Drawing per row instead cost 6.5 us a
-- row on a server built without OpenSSL (pg_strong_random then reads /dev/urandom on every
-- call) and 2.2 us with it; the hash costs 0.5 us (measured over 100,000 rows). Text, so
-- that any client passes it back as it came. A claim lost in a crash (never committed, or
-- not yet flushed) draws a new seed when the task is claimed again, so its holder's late
-- writes never match.
--
-- Two probes first (flow_control_in_use: a settings row for these queues? a task with a
-- concurrency key ready?), both one index or heap probe of a relation that is empty while
-- flow control is unused (measured 16 us together per call, under 0.2 us per task at
-- claim_max 100). Only a claim that can meet a limit takes the limited path
-- (claim_limited, 08_flow_control.sql), which serialises the claimers of limited queues
-- so that counts are exact; every other claim is pick_ready's index walk.
--
-- No claim waits without bound on a lock another session holds: the pick skips locked
-- rows (SKIP LOCKED) and then writes only rows it locked; a concurrency key another claimer
-- holds is skipped (lock_concurrency_key); the one wait, for a limited queue's settings
-- row, is bounded in claim_limited, which then leaves that queue out of the claim.
--
-- The claimed rows come back sorted by the claim order's columns rather than joined back
-- to the picked ids: the planner saw 10 rows on either side of that join and, with sorting
-- off, took a nested loop (100 x 100 comparisons for a claim of 100). A claim changes none
-- of those columns, so the sort gives the same order for n log n. The planner settings
-- and JIT are pick_ready's (see there): this function runs its statements too when
-- finish_and_claim calls it.
CREATE FUNCTION pgtasks.claim_tasks(
    worker_id  text,
    queues     text[]   DEFAULT NULL,    -- NULL: every queue
    max_tasks  integer  DEFAULT 1,
    lease      interval DEFAULT NULL,    -- NULL: settings.default_lease
    task_types text[]   DEFAULT NULL     -- NULL: every type; workers pass the types they know
) RETURNS TABLE (
    id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean, lease_token text,
    soft_deadline timestamptz,
    traceparent text, tracestate text
)
LANGUAGE plpgsql SECURITY DEFINER
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
AS $$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    picked bigint[];
    lease_for interval;
    started timestamptz := now_;
    -- Whether this claim is its transaction's first write (see skip_claim_flush).
    first_write boolean := pg_current_xact_id_if_assigned() IS NULL;
    seed bytea;
    v pgtasks.worker_version_set;
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL must not mean "no LIMIT": claim_tasks(max_tasks => NULL) would take every ready task.
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Claim as many tasks as the worker has free slots.';
    END IF;
    lease_for := pgtasks.lease_or_default(lease);
    v := pgtasks.worker_versions(worker_id);

    IF pgtasks.flow_control_in_use(queues) THEN
        SELECT l.picked, l.started INTO picked, started
          FROM pgtasks.claim_limited(queues, max_tasks, task_types, v.served) l;
        IF cardinality(picked) = 0 THEN
            picked := NULL;
        END IF;
    ELSE
        picked := pgtasks.pick_ready(queues, max_tasks, task_types, v.served);
    END IF;
    IF picked IS NULL THEN
        RETURN;
    END IF;
    seed := uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());

    -- Rows come back in claim order. started_at: the limited path's start time (the one its
    -- rate window recorded), else pgtasks.now(). The sort is the only way to order a CTE scan, so
    -- enable_sort = off does not keep the planner from it.
    RETURN QUERY
    WITH claimed AS (
        UPDATE pgtasks.tasks t
           SET status = 'RUNNING',
               worker_id = claim_tasks.worker_id,
               attempt = t.attempt + 1,
               started_at = coalesce(t.started_at, started),
               deadline = now_ + t.timeout,
               lease_expires_at = least(now_ + lease_for, now_ + t.timeout),
               lease_token = encode(sha256(seed || int8send(t.id)), 'hex'),
               code_version = coalesce(t.code_version, v.run_versions[array_position(v.run_types, t.task_type)])
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at, t.lease_token, now_ + t.soft_timeout AS soft_deadline,
                  t.traceparent, t.tracestate
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline, c.traceparent,
           c.tracestate
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
    IF first_write THEN
        PERFORM pgtasks.skip_claim_flush();
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.claim_tasks(text, text[], integer, interval, text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.claim_tasks(text, text[], integer, interval, text[]) IS
    'Claims up to max_tasks ready tasks of the given queues (NULL: every queue) and task types for worker_id, in claim order (priority, run_at, id), honouring queue limits, pauses and concurrency keys. Each row''s lease_token is the secret the task''s later calls must present; soft_deadline is when the task should be asked to stop (NULL: no soft limit); traceparent and tracestate are the submit''s W3C trace context (NULL: none).';

-- When the next task of these queues becomes ready: idle workers sleep exactly until then
-- (and poll as a backstop). One probe of tasks_next_run_at.
CREATE FUNCTION pgtasks.next_run_at(queues text[] DEFAULT NULL, task_types text[] DEFAULT NULL)
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT min(t.run_at) FROM pgtasks.tasks t
     WHERE t.status IN ('PENDING', 'COMMIT')
       AND (next_run_at.queues IS NULL OR t.queue = ANY (next_run_at.queues))
       AND (next_run_at.task_types IS NULL OR t.task_type = ANY (next_run_at.task_types))
$$;
GRANT EXECUTE ON FUNCTION pgtasks.next_run_at(text[], text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.next_run_at(text[], text[]) IS
    'The earliest run_at of the PENDING or COMMIT tasks of these queues and task types (NULL: all), or NULL when there is none: when an idle worker should claim again.';

------------------------------------------------------------------------------------------
-- Fencing: every write by a worker, and every operator action, locks through these

-- Locks one task row for a change that keeps its key, or raises PT003 when there is none.
CREATE FUNCTION pgtasks.lock_task(task_id bigint) RETURNS pgtasks.tasks
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    SELECT * INTO t FROM pgtasks.tasks WHERE id = lock_task.task_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id
            USING ERRCODE = 'PT003', HINT = 'Check the id; finished tasks are pruned after their retention.';
    END IF;
    RETURN t;
END $$;

-- Locks the task row of the attempt that holds lease_token. Raises PT002 when the token
-- does not hold the task (its lease was lost to rescue, it was cancelled, or it is claimed
-- again: each of those cleared or replaced the token), PT003 when there is no such task,
-- PT117 when the token is NULL. Every fenced function goes through here (the batched ones
-- compare the token in their own UPDATE), so all of them refuse a missing or guessed token.
--
-- The token is part of the locking statement's WHERE clause, not checked after the lock:
-- PostgreSQL locks only rows that match, so a caller with a wrong token never locks the
-- row, nor waits for another session's lock on it, nor leaves a lock behind in a
-- transaction kept open after the PT002. The second, unlocked read only tells PT003 from
-- PT002; neither message shows a token.
CREATE FUNCTION pgtasks.lock_owned_task(task_id bigint, lease_token text)
RETURNS pgtasks.tasks
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    IF lease_token IS NULL THEN
        RAISE EXCEPTION 'pgtasks: lease_token must not be NULL (it is the fence of task %)', task_id
            USING ERRCODE = 'PT117', HINT = 'Pass the lease_token that claim_tasks returned with the task.';
    END IF;
    SELECT * INTO t FROM pgtasks.tasks k
     WHERE k.id = lock_owned_task.task_id AND k.lease_token = lock_owned_task.lease_token
       AND k.status = 'RUNNING'
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO t FROM pgtasks.tasks k WHERE k.id = lock_owned_task.task_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgtasks: task % does not exist', task_id
                USING ERRCODE = 'PT003', HINT = 'Check the id; finished tasks are pruned after their retention.';
        END IF;
        RAISE EXCEPTION 'pgtasks: this lease token does not hold task % (it is % at attempt %)',
                task_id, t.status, t.attempt
            USING ERRCODE = 'PT002',
                  HINT = 'Another worker took over or the task was cancelled; drop this result.';
    END IF;
    RETURN t;
END $$;

-- The trace of a task submitted outside any trace (traceparent NULL), recorded by its first
-- traced attempt: the worker runs that attempt in the root span of a new trace and, when
-- the attempt ends in a way that leads to another (a failure, a yield, a snooze), stores
-- that span's context here before writing the outcome. Every later attempt then runs in
-- that trace, as a child of the first attempt and linked to it, as attempts of a traced
-- task are of its submit. Fenced by the attempt's lease token like every attempt's write,
-- with the same lock_timeout, and only while the task has no context: a submit's is never
-- replaced. Returns whether it was recorded.
CREATE FUNCTION pgtasks.record_trace(task_id bigint, lease_token text, traceparent text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    IF pgtasks.check_traceparent(traceparent) IS NULL THEN
        RAISE EXCEPTION 'pgtasks: record_trace needs a traceparent'
            USING ERRCODE = 'PT131', HINT = 'Pass the W3C traceparent of the attempt''s span.';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    UPDATE pgtasks.tasks t SET traceparent = record_trace.traceparent
     WHERE t.id = record_trace.task_id AND t.traceparent IS NULL;
    RETURN FOUND;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.record_trace(bigint, text, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.record_trace(bigint, text, text) IS
    'Stores the W3C traceparent of a running attempt''s span as the trace of a task that has none (submitted outside any trace), so its later attempts join that trace; fenced by lease_token (PT002). Returns whether it was recorded.';
