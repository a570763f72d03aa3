-- pgtasks 0001: schema, state machine and the rules the database enforces.
--
-- Every rule that keeps a task safe lives here, so psql, a Go service and the Python
-- worker get the same guarantees. Functions live in 0002; this file holds tables,
-- constraints, the transition rule and the history it writes.
--
-- SQLSTATEs raised by pgtasks (class PT, documented in docs/sql-api.md):
--   PT001 illegal status transition        PT002 lease lost (stale fencing token)
--   PT003 task not found                   PT004 task already finished
--   PT101..PT111 invalid argument (one code per argument, see 0002; PT110 progress out of
--                bounds, PT111 log_many arrays of different lengths)

CREATE SCHEMA IF NOT EXISTS pgtasks;

CREATE TYPE pgtasks.status AS ENUM ('PENDING', 'RUNNING', 'COMMIT', 'DONE', 'FAILED', 'CANCELLED');

-- The allowed transitions, in one place: the BEFORE UPDATE trigger below asks this function
-- (inlined into its WHEN clause, so legal transitions cost no function call), and the
-- pgtasks.transitions view lists it for people and docs. NULL means "not allowed".
CREATE FUNCTION pgtasks.transition_reason(from_status pgtasks.status, to_status pgtasks.status)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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
    END
$$;

CREATE VIEW pgtasks.transitions AS
SELECT f AS from_status, t AS to_status, pgtasks.transition_reason(f, t) AS why
  FROM unnest(enum_range(NULL::pgtasks.status)) f, unnest(enum_range(NULL::pgtasks.status)) t
 WHERE pgtasks.transition_reason(f, t) IS NOT NULL;

CREATE TABLE pgtasks.tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_type        text NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}',
    queue            text NOT NULL DEFAULT 'default',
    priority         integer NOT NULL DEFAULT 0,
    status           pgtasks.status NOT NULL DEFAULT 'PENDING',
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- attempt counts claims; the current value is the fencing token a worker must present.
    attempt          integer NOT NULL DEFAULT 0,
    retry_count      integer NOT NULL DEFAULT 0,
    max_retries      integer NOT NULL DEFAULT 3,
    timeout          interval NOT NULL DEFAULT interval '4 hours',
    -- lease: set while RUNNING. lease_expires_at is extended by heartbeats; deadline is not.
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

    CONSTRAINT task_type_not_empty CHECK (task_type <> ''),
    CONSTRAINT queue_not_empty CHECK (queue <> ''),
    CONSTRAINT params_is_object CHECK (jsonb_typeof(params) = 'object'),
    CONSTRAINT retries_in_bounds CHECK (max_retries >= 0 AND retry_count BETWEEN 0 AND max_retries),
    CONSTRAINT timeout_positive CHECK (timeout > interval '0'),
    CONSTRAINT attempt_not_negative CHECK (attempt >= 0),
    -- RUNNING <=> a worker holds a lease; no other state may carry one.
    CONSTRAINT running_has_lease CHECK (CASE WHEN status = 'RUNNING'
        THEN worker_id IS NOT NULL AND lease_expires_at IS NOT NULL AND deadline IS NOT NULL
        ELSE worker_id IS NULL AND lease_expires_at IS NULL AND deadline IS NULL END),
    CONSTRAINT running_was_claimed CHECK (status <> 'RUNNING' OR (attempt > 0 AND started_at IS NOT NULL)),
    -- terminal <=> finished_at set.
    CONSTRAINT terminal_has_finished_at CHECK (
        (status IN ('DONE', 'FAILED', 'CANCELLED')) = (finished_at IS NOT NULL)),
    CONSTRAINT failed_has_error CHECK (status <> 'FAILED' OR error IS NOT NULL),
    CONSTRAINT only_done_has_result CHECK (status = 'DONE' OR result IS NULL),
    CONSTRAINT progress_in_bounds CHECK (
        (progress_current IS NULL OR progress_current >= 0)
        AND (progress_total IS NULL OR progress_total >= 0)
        AND (progress_total IS NULL OR progress_current IS NULL OR progress_current <= progress_total))
);

-- The claim path: exactly the rows a worker may take, in the order it takes them, for a
-- worker of every queue (tasks_claimable) and of one queue (tasks_claimable_queue).
-- Finished and running rows are in neither, so history does not slow claims.
CREATE INDEX tasks_claimable ON pgtasks.tasks (priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'COMMIT');
CREATE INDEX tasks_claimable_queue ON pgtasks.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'COMMIT');
-- Idle workers ask when the next task becomes ready (next_run_at): one probe here, instead
-- of reading every scheduled task (measured: 15 ms with 100,000 scheduled, per idle poll).
CREATE INDEX tasks_next_run_at ON pgtasks.tasks (run_at) WHERE status IN ('PENDING', 'COMMIT');
-- Rescue path: only RUNNING rows (a lease is set exactly when RUNNING, see running_has_lease).
-- The predicate names lease_expires_at, not status, on purpose: a predicate on status would
-- tempt the planner to hash every running task when a batched finish or heartbeat looks up
-- 100 of them by id (measured: 600 us per task instead of 20 with 20,000 running).
CREATE INDEX tasks_lease ON pgtasks.tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
-- Pruning path: only finished rows.
CREATE INDEX tasks_finished_at ON pgtasks.tasks (finished_at)
    WHERE status IN ('DONE', 'FAILED', 'CANCELLED');

-- Every status change, whoever made it (a worker, a function, a hand-written UPDATE).
CREATE TABLE pgtasks.task_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key on purpose: its check would lock every task row a batch touches
    -- (measured: it doubled the cost of a claim). prune_finished deletes events itself.
    task_id     bigint NOT NULL,
    attempt     integer NOT NULL,
    from_status pgtasks.status,          -- NULL for the insert that created the task
    to_status   pgtasks.status NOT NULL,
    worker_id   text,
    db_user     text NOT NULL DEFAULT current_user,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task ON pgtasks.task_events (task_id, id);

-- One row per failed attempt: the whole error history, not only the last.
CREATE TABLE pgtasks.task_errors (
    task_id   bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    attempt   integer NOT NULL,
    error     text NOT NULL,
    traceback text,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);

-- Durable step results: a resumed attempt skips steps found here.
CREATE TABLE pgtasks.task_steps (
    task_id  bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    name     text NOT NULL,
    result   jsonb,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, name)
);

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

-- Clients blocked in wait(): finishing a task NOTIFYs only when someone waits for it, so
-- the common path pays no notification lock at commit.
CREATE TABLE pgtasks.task_waiters (
    task_id bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    pid     integer NOT NULL DEFAULT pg_backend_pid(),
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, pid)
);

-- Workers. Their heartbeat keeps last_seen fresh. A worker not seen for its lease is dead
-- (its tasks are being rescued); the row stays a while so operators can see what died,
-- then rescue sweeps it.
CREATE TABLE pgtasks.worker_registry (
    worker_id   text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    queues      text[],                  -- NULL: every queue
    concurrency integer NOT NULL,
    lease       interval NOT NULL DEFAULT interval '60 seconds',
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

------------------------------------------------------------------------------------------
-- The transition rule. A BEFORE row trigger, so an illegal change is refused with PT001
-- before any CHECK constraint looks at the row. Its WHEN clause only lets illegal
-- transitions through, so a legal batch of 100 claims calls no PL/pgSQL at all.
CREATE FUNCTION pgtasks.reject_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pgtasks: task % cannot go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'PT001',
              HINT = 'Allowed transitions are listed in pgtasks.transitions; use the '
                     'pgtasks functions (cancel_task, retry_task, ...) instead of UPDATE.';
END $$;

CREATE TRIGGER tasks_check_transition
    BEFORE UPDATE OF status ON pgtasks.tasks
    FOR EACH ROW
    WHEN (OLD.status <> NEW.status
          AND pgtasks.transition_reason(OLD.status, NEW.status) IS NULL)
    EXECUTE FUNCTION pgtasks.reject_transition();

-- History is written per statement from transition tables: a batch claim of 100 tasks
-- costs one INSERT ... SELECT, not 100 trigger calls.
CREATE FUNCTION pgtasks.record_updates() RETURNS trigger
LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_record_updates
    AFTER UPDATE ON pgtasks.tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_updates();

-- Inserts: record creation in the history.
CREATE FUNCTION pgtasks.record_inserts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
    SELECT n.id, n.attempt, NULL, n.status FROM new_rows n;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_record_inserts
    AFTER INSERT ON pgtasks.tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.record_inserts();

-- Inserts: wake idle workers. The payload is the queue name, a hint, never task data.
--
-- A NOTIFY takes a database-wide lock while its transaction commits, so concurrent
-- submitters that all notify commit one at a time. We send at most one per statement and
-- queue, only for work that is ready now (future tasks are found by the workers' timers),
-- and not when the head of the queue (what a worker would claim next) was already ready
-- before this statement: a worker was woken for it already, or all are busy and will claim
-- again as soon as a slot frees. Looking at the head costs one index probe, whatever the
-- backlog. The worst case of a skipped wake-up is one poll interval of delay, never a lost
-- task; a queue whose head is stuck (a type no worker knows) gets no wake-ups, which is one
-- reason to give each worker pool its own queue.
-- Own trigger, so a deployment that only polls can `ALTER TABLE ... DISABLE TRIGGER`.
CREATE FUNCTION pgtasks.wake_workers() RETURNS trigger
LANGUAGE plpgsql
-- Keep the head probe an index walk even when statistics are stale (see claim_tasks).
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
BEGIN
    PERFORM pg_notify('pgtasks_wakeup', q.queue)
       FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
              WHERE n.run_at <= now()
              GROUP BY n.queue) q
      WHERE NOT EXISTS (
            SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                            WHERE t.queue = q.queue AND t.status IN ('PENDING', 'COMMIT')
                            ORDER BY t.priority DESC, t.run_at, t.id
                            LIMIT 1) head
             WHERE head.run_at <= now() AND head.id < q.first_id);
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_wake_workers
    AFTER INSERT ON pgtasks.tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.wake_workers();

-- Tasks start PENDING. Anything else on insert would skip the state machine.
CREATE FUNCTION pgtasks.check_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'PENDING' THEN
        RAISE EXCEPTION 'pgtasks: a new task must start PENDING, not %', NEW.status
            USING ERRCODE = 'PT001',
                  HINT = 'Submit with pgtasks.submit_task(); the workers move it on.';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER tasks_check_insert
    BEFORE INSERT ON pgtasks.tasks
    FOR EACH ROW WHEN (NEW.status <> 'PENDING')
    EXECUTE FUNCTION pgtasks.check_insert();
