-- pgtasks state machine: which status changes are allowed, the history of every change,
-- and the notifications that wake workers and waiting clients.
--
-- The rules hold for every writer, a hand-written UPDATE in psql included: a task starts
-- PENDING (or WAITING) at attempt 0; every status change is one of pgtasks.transitions;
-- attempt, the claim counter, only grows by one when a task is claimed; a running task
-- keeps its worker and deadline, and its lease never passes the deadline. The per-state
-- CHECK constraints of pgtasks.tasks (01_tables.sql) hold the rest, the lease token's
-- presence included.
--
-- Cost: the row triggers' WHEN clauses only let rule-breaking rows through, so a legal
-- batch claim of 100 tasks runs no PL/pgSQL for them; the history is written per
-- statement from transition tables, one INSERT ... SELECT per batch.

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- The allowed transitions

-- The allowed transitions with their reasons, in one place for people and docs (the
-- pgtasks.transitions view); NULL means "not allowed". The trigger WHEN clauses below
-- write the same list out (see there for why); tests/sql/test_state_machine.py checks the
-- two against each other for every pair.
CREATE FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE
        WHEN from_status = 'PENDING' AND to_status = 'RUNNING' THEN 'claimed by a worker'
        WHEN from_status = 'COMMIT'  AND to_status = 'RUNNING' THEN 'claimed again to continue from its checkpoints'
        WHEN from_status = 'RUNNING' AND to_status = 'COMMIT'
            THEN 'checkpoint and yield, retryable error, lease expired, or shutdown hand-back'
        WHEN from_status = 'RUNNING' AND to_status = 'DONE' THEN 'finished with a result'
        WHEN from_status = 'RUNNING' AND to_status = 'FAILED'
            THEN 'final error: retries used up or not retryable'
        WHEN from_status = 'PENDING' AND to_status = 'CANCELLED' THEN 'cancelled before it started'
        WHEN from_status = 'COMMIT'  AND to_status = 'CANCELLED' THEN 'cancelled while waiting to continue'
        WHEN from_status = 'RUNNING' AND to_status = 'CANCELLED'
            THEN 'cancelled while running; the worker is told and its writes are fenced off'
        WHEN from_status IN ('FAILED', 'CANCELLED') AND to_status = 'PENDING' THEN 'manual retry'
        WHEN from_status = 'WAITING' AND to_status = 'PENDING' THEN 'its last unfinished parent ended'
        WHEN from_status = 'WAITING' AND to_status = 'CANCELLED'
            THEN 'cancelled while waiting on its parents, or a parent failed or was cancelled'
        WHEN from_status IN ('FAILED', 'CANCELLED') AND to_status = 'WAITING'
            THEN 'retried (or a retried parent revived it) while parents are unfinished'
    END
$$;
GRANT EXECUTE ON FUNCTION pgtasks.transition_reason(pgtasks.status, pgtasks.status) TO pgtasks_reader, pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.transition_reason(pgtasks.status, pgtasks.status) IS
    'Why a task may go from from_status to to_status, or NULL when that transition is not allowed.';

-- Every allowed (from, to) pair with its reason. A view checks table access as its owner
-- but calls functions as the caller, hence the grant on transition_reason above.
CREATE VIEW pgtasks.transitions AS
SELECT f AS from_status, t AS to_status, pgtasks.transition_reason(f, t) AS why
  FROM unnest(enum_range(NULL::pgtasks.status)) f, unnest(enum_range(NULL::pgtasks.status)) t
 WHERE pgtasks.transition_reason(f, t) IS NOT NULL;
GRANT SELECT ON pgtasks.transitions TO pgtasks_submitter, pgtasks_reader;
COMMENT ON VIEW pgtasks.transitions IS
    'Every allowed status change of a task, with the reason it happens; any other change is refused with PT001.';

------------------------------------------------------------------------------------------
-- Updates

-- One function for every way an UPDATE can break the rules, called only for rows that do
-- (the WHEN clauses below): PT001 for a transition not in the list, PT201 for a fencing
-- column changed in a way no pgtasks function changes it.
CREATE FUNCTION pgtasks.reject_transition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
              HINT = 'attempt counts claims: it only grows by one when a task is claimed. '
                     'A running task keeps its worker and deadline; its lease never passes the deadline.';
END $$;
COMMENT ON FUNCTION pgtasks.reject_transition() IS
    'Trigger function: refuses an UPDATE of pgtasks.tasks that breaks the state machine (PT001) or the fencing columns (PT201). Its triggers call it only for such rows.';

-- The transition rule, BEFORE, so an illegal transition is PT001 before any CHECK
-- constraint looks at the row. The list is written out rather than calling
-- transition_reason(): a WHEN clause is parsed once, here, so its operators are resolved
-- now (in pg_catalog) and stored as OIDs, while a SQL function inlined into it would be
-- re-parsed under the caller's search_path at run time, where a planted operator could
-- stand in. On every UPDATE, whatever columns it names.
CREATE TRIGGER tasks_check_transition
    BEFORE UPDATE ON pgtasks.tasks
    FOR EACH ROW
    WHEN (OLD.status <> NEW.status AND NOT (
              (OLD.status IN ('PENDING', 'COMMIT') AND NEW.status IN ('RUNNING', 'CANCELLED'))
           OR (OLD.status = 'RUNNING' AND NEW.status IN ('COMMIT', 'DONE', 'FAILED', 'CANCELLED'))
           OR (OLD.status IN ('FAILED', 'CANCELLED') AND NEW.status IN ('PENDING', 'WAITING'))
           OR (OLD.status = 'WAITING' AND NEW.status IN ('PENDING', 'CANCELLED'))))
    EXECUTE FUNCTION pgtasks.reject_transition();

-- The whole rule once more AFTER the row is written. BEFORE triggers run in name order, so
-- one added later (by an extension, or by hand) could change status or attempt after ours
-- checked; an AFTER ROW trigger sees the row as stored. Its WHEN clause is evaluated as the
-- row is written and queues nothing for a legal row, so legal updates pay the comparisons
-- only, no PL/pgSQL. Besides the transitions it holds the fencing columns to what the
-- functions do: attempt grows by one exactly when a task is claimed and never otherwise
-- (the history's attempt numbers stay true); a running task keeps its worker and
-- deadline; a lease never outlives the deadline.
CREATE TRIGGER tasks_check_update
    AFTER UPDATE ON pgtasks.tasks
    FOR EACH ROW
    WHEN ((OLD.status <> NEW.status AND NOT (
              (OLD.status IN ('PENDING', 'COMMIT') AND NEW.status IN ('RUNNING', 'CANCELLED'))
           OR (OLD.status = 'RUNNING' AND NEW.status IN ('COMMIT', 'DONE', 'FAILED', 'CANCELLED'))
           OR (OLD.status IN ('FAILED', 'CANCELLED') AND NEW.status IN ('PENDING', 'WAITING'))
           OR (OLD.status = 'WAITING' AND NEW.status IN ('PENDING', 'CANCELLED'))))
       OR (NEW.attempt <> OLD.attempt + CASE WHEN OLD.status IN ('PENDING', 'COMMIT')
                                              AND NEW.status = 'RUNNING' THEN 1 ELSE 0 END)
       OR (OLD.status = 'RUNNING' AND NEW.status = 'RUNNING'
           AND (NEW.worker_id <> OLD.worker_id OR NEW.deadline <> OLD.deadline))
       OR NEW.lease_expires_at > NEW.deadline)
    EXECUTE FUNCTION pgtasks.reject_transition();

------------------------------------------------------------------------------------------
-- Inserts

-- A new task starts PENDING, or WAITING when it has unfinished parents (the submit
-- functions decide; waiting_has_parents keeps a WAITING row honest), at attempt 0.
-- Anything else on insert would skip the state machine. Called only for such rows.
CREATE FUNCTION pgtasks.check_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF NEW.status NOT IN ('PENDING', 'WAITING') THEN
        RAISE EXCEPTION 'pgtasks: a new task must start PENDING (or WAITING on its parents), not %', NEW.status
            USING ERRCODE = 'PT001',
                  HINT = 'Submit with pgtasks.submit_task() or submit_workflow(); the workers move it on.';
    END IF;
    RAISE EXCEPTION 'pgtasks: a new task starts at attempt 0, not %', NEW.attempt
        USING ERRCODE = 'PT201', HINT = 'Submit with pgtasks.submit_task(); claims count attempts.';
END $$;
COMMENT ON FUNCTION pgtasks.check_insert() IS
    'Trigger function: refuses a new task that does not start PENDING or WAITING (PT001) at attempt 0 (PT201). Its trigger calls it only for such rows.';

CREATE TRIGGER tasks_check_insert
    BEFORE INSERT ON pgtasks.tasks
    FOR EACH ROW WHEN (NEW.status NOT IN ('PENDING', 'WAITING') OR NEW.attempt <> 0)
    EXECUTE FUNCTION pgtasks.check_insert();

------------------------------------------------------------------------------------------
-- History

-- History is append-only. Only pruning deletes it: prune_finished sets the
-- transaction-local setting pgtasks.pruning = on around its DELETE, and task_errors rows
-- also go when their task is deleted (the foreign key's cascade runs inside the key's
-- trigger, hence pg_trigger_depth() > 1). (Not a SET clause on prune_finished: only a
-- superuser may attach a custom setting to a function, and installing must work without
-- one.) This guards against mistakes by the owner; against everyone else the guard is
-- that only the owner may write the tables. Per statement, so pruning 1,000 tasks pays
-- one call.
CREATE FUNCTION pgtasks.reject_history_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
COMMENT ON FUNCTION pgtasks.reject_history_change() IS
    'Trigger function: task_events and task_errors are append-only (PT202); only prune_finished deletes history, with its task.';

CREATE TRIGGER task_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON pgtasks.task_events
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.reject_history_change();
CREATE TRIGGER task_errors_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON pgtasks.task_errors
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.reject_history_change();

-- The tag a wake-up names its queue by: the first 8 hex digits of sha256(wakeup_key ||
-- queue) (01_tables.sql has why). Only 32 bits of the digest leave, so nothing about the key
-- can be extended or recovered from tags; two queues of a deployment share a tag about once
-- in four billion pairs, which only wakes some workers for nothing. Workers read the tags of
-- their own queues here (pgtasks_worker); the senders call it once per queue and statement,
-- never per row (measured: about 4 us a call, most of it the call itself). Without the key
-- row (deleted by hand) the tag is '', which every worker takes for "any queue".
CREATE FUNCTION pgtasks.queue_tag(queue text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT coalesce(left(encode(sha256((SELECT k.key FROM pgtasks.wakeup_key k)
                                       || convert_to(queue_tag.queue, 'UTF8')), 'hex'), 8), '')
$$;
GRANT EXECUTE ON FUNCTION pgtasks.queue_tag(text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.queue_tag(text) IS
    'The opaque tag that pgtasks_wakeup notifications name the queue by; a worker compares payloads with the tags of its queues.';

-- After every statement that inserts or updates tasks, one statement trigger per job, each
-- named for it and reading the statement's transition tables:
--
--   INSERT   tasks_record_creations       history: one row per new task
--            tasks_wake_workers           at most one pgtasks_wakeup per queue
--   UPDATE   tasks_notify_waiters         pgtasks_done for watched tasks that ended
--            tasks_record_status_changes  history: one row per status change
--            tasks_settle_children        workflow children released, cancelled or
--                                         revived (10_workflows.sql)
--
-- AFTER statement triggers fire in name order, so a parent's history row is written before
-- those of the children its statement releases. A statement's transition tables are built
-- once and shared by all its triggers; what a trigger of its own adds is one function call
-- per statement, not per row. Measured against one trigger for all jobs, one session
-- draining 20,000 tasks through finish_and_claim, 5 interleaved rounds: 1.06x its tasks/s
-- at claim_max 100 and 1.07x at claim_max 10, and bulk submit 1.06x: no cost that shows
-- above the spread between rounds.
--
-- Transition tables have no statistics and no index, and the planner joined new_rows to
-- old_rows in a nested loop: 100 x 100 row comparisons per completer batch of 100. With
-- nested loops off it is a hash join, 100 + 100 (measured with one session draining 20,000
-- tasks through finish_and_claim(claim_max => 100): server CPU per task 0.953 -> 0.705,
-- 1.33x the tasks/s). Sorting, bitmap scans and nested loops, where a trigger turns them
-- off, are off for that trigger only, and JIT with them (a disabled method on PostgreSQL
-- < 18 costs 1e10 and would make every such statement compile).

-- Durable commits after a claim: a claim that was its transaction's first write commits
-- without waiting for the WAL flush (skip_claim_flush, 05_claim.sql). Every other write
-- must be durable, so each one that can follow a claim in the same transaction calls this
-- first: the tasks triggers below (submits, finishes, every status change) and checkpoint.
-- It puts the caller's synchronous_commit back. The triggers test the setting before they
-- call it, so a transaction that claimed nothing pays one setting lookup per statement.
CREATE FUNCTION pgtasks.keep_durable() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    prior text := current_setting('pgtasks.claim_commit', true);
BEGIN
    IF prior <> '' THEN
        PERFORM set_config('synchronous_commit', prior, true);
        PERFORM set_config('pgtasks.claim_commit', '', true);
    END IF;
END $$;
COMMENT ON FUNCTION pgtasks.keep_durable() IS
    'Makes the transaction''s commit durable again after a claim let it skip the WAL flush (skip_claim_flush); called by every write that must survive a crash.';

-- History of inserts: each new task's creation (from NULL to its first status).
CREATE FUNCTION pgtasks.record_creations() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    -- A lookup, not a call, when no claim came first in this transaction (the usual case):
    -- the call and its SET clause cost more than the test, on every statement.
    IF current_setting('pgtasks.claim_commit', true) <> '' THEN
        PERFORM pgtasks.keep_durable();
    END IF;
    -- The history and the submitted counter's delta (task_counts, 01_tables.sql) in one
    -- statement: one row per queue and type of the statement, not a hot counter row.
    WITH history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
        SELECT n.id, n.attempt, NULL, n.status FROM new_rows n
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT n.queue, n.task_type, 'submitted', count(*) FROM new_rows n GROUP BY n.queue, n.task_type;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION pgtasks.record_creations() IS
    'Trigger function: records each inserted task in task_events (from NULL to its first status) and in the submitted counter (task_count_deltas).';

CREATE TRIGGER tasks_record_creations
    AFTER INSERT ON pgtasks.tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_creations();

-- Wake-ups: a NOTIFY on pgtasks_wakeup whose payload is the queue's tag (queue_tag,
-- above): a hint that names nothing, since any role can LISTEN (and NOTIFY: a worker
-- treats a wake-up only as a reason to claim now). A NOTIFY takes a database-wide lock while its
-- transaction commits, so concurrent submitters that all notify commit one at a time. So
-- at most one goes out per statement and queue, only for rows a claim can take now
-- (PENDING or COMMIT, run_at <= pgtasks.now(): the claim's own predicate; future tasks are found
-- by the workers' timers, WAITING ones are woken for when their last parent ends), and
-- none when the queue's head (what a worker would claim next) was already ready before
-- this statement: a worker was woken for it already, or all are busy and claim again as
-- soon as a slot frees. The worst case of a skipped wake-up is one poll interval of delay,
-- never a lost task; a queue whose head is stuck (a type no worker knows) gets no
-- wake-ups, which is one reason to give each worker pool its own queue.
--
-- The head check costs one index-only probe of tasks_claimable_queue. A statement that
-- inserts into one queue (every submit) takes min/max without grouping; one that inserts
-- into several groups by queue. The probe names its queue as a range of one value and
-- orders by the queue first, so that only tasks_claimable_queue yields that order (sorting
-- is off): with `t.queue = x` the planner may walk tasks_claimable in claim order and
-- filter on the queue, reading every other queue's ready tasks ahead of this one's
-- (tests/sql/test_plans.py, two queues of 1,000 ready tasks); an equality would let it
-- drop the queue from the ORDER BY again. Sorting and bitmap scans are off for the reason
-- pick_ready gives (05_claim.sql).
--
-- The clock is read once per statement, into now_: pgtasks.now() is a SQL function that
-- reads a table, which is never inlined, so comparing every new row's run_at with it cost a
-- function call per row (~2.6 us; in a perf profile of submit_tasks of 10,000, half the
-- insert trigger's time). It is STABLE, so the value is the same either way.
--
-- Off switch: the setting `pgtasks.wake_workers = off`, e.g.
--   ALTER DATABASE app SET pgtasks.wake_workers = off;    (new sessions)
--   SET pgtasks.wake_workers = off;                        (this connection, e.g. a bulk load)
-- Any other value, or none, means on. Workers always poll as a backstop.
CREATE FUNCTION pgtasks.wake_workers() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
AS $$
DECLARE
    first_queue text;
    last_queue  text;
    first_id    bigint;
    now_        timestamptz;
BEGIN
    IF current_setting('pgtasks.wake_workers', true) IS NOT DISTINCT FROM 'off' THEN
        RETURN NULL;
    END IF;
    now_ := pgtasks.now();
    SELECT min(n.queue), max(n.queue), min(n.id) INTO first_queue, last_queue, first_id
      FROM new_rows n
     WHERE n.run_at <= now_ AND n.status IN ('PENDING', 'COMMIT');
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: a timer or a release wakes
    ELSIF first_queue = last_queue THEN
        IF NOT EXISTS (
               SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                               WHERE t.queue >= first_queue AND t.queue <= first_queue
                                 AND t.status IN ('PENDING', 'COMMIT')
                               ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                               LIMIT 1) head
                WHERE head.run_at <= now_ AND head.id < first_id) THEN
            PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(first_queue));
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(q.queue))
           FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
                  WHERE n.run_at <= now_ AND n.status IN ('PENDING', 'COMMIT')
                  GROUP BY n.queue) q
          WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                                WHERE t.queue >= q.queue AND t.queue <= q.queue
                                  AND t.status IN ('PENDING', 'COMMIT')
                                ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                                LIMIT 1) head
                 WHERE head.run_at <= now_ AND head.id < q.first_id);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION pgtasks.wake_workers() IS
    'Trigger function: sends at most one pgtasks_wakeup per queue (payload: the queue''s tag) for inserted tasks a claim can take now, unless the queue''s head was ready already (off with pgtasks.wake_workers = off).';

CREATE TRIGGER tasks_wake_workers
    AFTER INSERT ON pgtasks.tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.wake_workers();

-- Clients blocked in wait() are told that a watched task ended: pgtasks_done, payload the
-- task id, a number every submitter sees anyway and no name or data; only for tasks in
-- task_waiters, so the common finish pays no NOTIFY.
CREATE FUNCTION pgtasks.notify_waiters() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('pgtasks_done', n.id::text)
       FROM new_rows n
      WHERE n.status IN ('DONE', 'FAILED', 'CANCELLED')
        AND EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = n.id);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION pgtasks.notify_waiters() IS
    'Trigger function: sends pgtasks_done (payload: the task id) for each updated task that ended while a client watches it (watch_task).';

CREATE TRIGGER tasks_notify_waiters
    AFTER UPDATE ON pgtasks.tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.notify_waiters();

-- History of updates: every status change (who, when, from, to). A batch claim or finish
-- of 100 tasks costs one INSERT ... SELECT, not 100 trigger calls; nested loops off for
-- the join of the transition tables (above).
CREATE FUNCTION pgtasks.record_status_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET enable_nestloop = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
AS $$
BEGIN
    -- A lookup, not a call, when no claim came first in this transaction (the usual case):
    -- the call and its SET clause cost more than the test, on every statement.
    IF current_setting('pgtasks.claim_commit', true) <> '' THEN
        PERFORM pgtasks.keep_durable();
    END IF;
    -- The history and the counters' deltas (task_counts, 01_tables.sql) in one statement
    -- over one join. A claim counts nothing; a rescue (rescue_expired sets
    -- pgtasks.rescuing) counts `rescued` besides what the attempt became.
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.attempt, o.status AS from_status, n.status AS to_status,
               coalesce(n.worker_id, o.worker_id) AS worker_id, n.queue, n.task_type,
               CASE WHEN n.status = 'DONE' THEN 'done'
                    WHEN n.status = 'FAILED' THEN 'failed'
                    WHEN n.status = 'CANCELLED' THEN 'cancelled'
                    WHEN n.status = 'COMMIT' AND n.retry_count > o.retry_count THEN 'retried'
                    WHEN o.status IN ('FAILED', 'CANCELLED') THEN 'requeued' END AS kind
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE o.status <> n.status
    ), history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status, worker_id)
        SELECT c.id, c.attempt, c.from_status, c.to_status, c.worker_id FROM changed c
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT c.queue, c.task_type, c.kind, count(*)
      FROM changed c
     WHERE c.kind IS NOT NULL
     GROUP BY c.queue, c.task_type, c.kind
    UNION ALL
    -- The setting alone decides (a one-time filter): outside a rescue this reads nothing.
    SELECT c.queue, c.task_type, 'rescued', count(*)
      FROM changed c
     WHERE current_setting('pgtasks.rescuing', true) = 'on' AND c.from_status = 'RUNNING'
     GROUP BY c.queue, c.task_type;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION pgtasks.record_status_changes() IS
    'Trigger function: records every status change of an updated task in task_events, and its count (done, failed, cancelled, retried, requeued, rescued) in task_count_deltas.';

CREATE TRIGGER tasks_record_status_changes
    AFTER UPDATE ON pgtasks.tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_status_changes();

------------------------------------------------------------------------------------------
-- Watchers: clients waiting for a result, live progress and logs

-- Tells live watchers (pgtasks watch, logs --follow, dashboards) that a task's progress or
-- log changed. Like the finish NOTIFY, it fires only when someone registered through
-- watch_task: a NOTIFY takes a database-wide lock at commit, and thousands of tasks
-- reporting progress nobody looks at should not pay for it. The payload is the task id.
CREATE FUNCTION pgtasks.notify_watchers(task_id bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT pg_notify('pgtasks_progress', notify_watchers.task_id::text)
     WHERE EXISTS (SELECT 1 FROM pgtasks.task_waiters w WHERE w.task_id = notify_watchers.task_id);
$$;

-- A client about to wait for a task (or follow its progress) registers here first, so the
-- finish NOTIFYs it; returns the status to check before waiting. One row per task and
-- backend; rescue sweeps the rows of backends that went away without unwatch_task.
CREATE FUNCTION pgtasks.watch_task(task_id bigint) RETURNS pgtasks.status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    s pgtasks.status;
BEGIN
    SELECT status INTO s FROM pgtasks.tasks WHERE id = watch_task.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: task % does not exist', task_id USING ERRCODE = 'PT003';
    END IF;
    INSERT INTO pgtasks.task_waiters (task_id) VALUES (watch_task.task_id)
    ON CONFLICT ON CONSTRAINT task_waiters_pkey DO UPDATE SET since = pgtasks.now();
    RETURN s;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.watch_task(bigint) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.watch_task(bigint) IS
    'Registers the calling backend as waiting for the task, so its end (pgtasks_done) and its progress and logs (pgtasks_progress) are notified; returns its current status.';

CREATE FUNCTION pgtasks.unwatch_task(task_id bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    DELETE FROM pgtasks.task_waiters w
     WHERE w.task_id = unwatch_task.task_id AND w.pid = pg_backend_pid();
$$;
GRANT EXECUTE ON FUNCTION pgtasks.unwatch_task(bigint) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.unwatch_task(bigint) IS
    'Ends the calling backend''s watch_task registration for the task.';
