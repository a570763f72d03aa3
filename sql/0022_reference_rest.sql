-- pgtasks 0022: brings a migrated database to the catalog of sql/schema/07-12 (leases, flow
-- control, schedules, workflows, the read views, the roles).
--
--   1. The COMMENT ON texts those files write on every granted function, trigger function,
--      view and view column, so psql's \d+ and \df+ explain them in an upgraded database as
--      in a fresh one. The texts are copied from the topic files, which are their home.
--   2. Two function bodies whose comments named old migration files, as the topic files
--      correct them (the statements are unchanged).
--   3. The catalog sweep goes. secure_objects() and grant_roles() gave the objects of each
--      migration their owner, SECURITY DEFINER, pinned search_path and grants after the fact;
--      the topic files now write all of that on each definition, and so does every later
--      migration (CONTRIBUTING.md). Nothing calls either procedure any more.
--   4. The migration ledger belongs to the role that migrates, as in a fresh install
--      (pgtasks/migrations.py); the sweep had handed it to pgtasks_owner with everything else.

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;

------------------------------------------------------------------------------------------
-- 1. Comments

-- sql/schema/07_leases.sql

COMMENT ON FUNCTION pgtasks.register_worker(text, text, integer, text[], integer, interval) IS
    'Adds a worker to the registry (pgtasks.workers), or refreshes its last_seen if it is '
    'there already. Workers call it at start and after every reconnect; lease NULL means '
    'settings.default_lease.';
COMMENT ON FUNCTION pgtasks.unregister_worker(text) IS
    'Removes a worker from the registry when it stops cleanly.';
COMMENT ON FUNCTION pgtasks.heartbeat(text, bigint[], integer[], interval) IS
    'Extends the leases of a worker''s running tasks (never past their deadlines) and returns '
    'the ids of the tasks it no longer holds, which the worker must stop. lease NULL means '
    'settings.default_lease.';
COMMENT ON FUNCTION pgtasks.rescue_expired(integer) IS
    'Hands up to max_tasks tasks whose lease expired or whose deadline passed on as a failed '
    'attempt (COMMIT to resume, or FAILED); returns how many. maintain() calls it.';
COMMENT ON FUNCTION pgtasks.prune_finished(interval, integer) IS
    'Deletes up to max_tasks tasks that finished more than older_than ago (NULL: '
    'settings.retention), with their history; returns how many. maintain() calls it.';
COMMENT ON FUNCTION pgtasks.maintain(integer) IS
    'The periodic maintenance every worker calls: rescues expired leases and prunes one batch '
    'of finished tasks, returning both counts; returns (0, 0) at once while another call is at '
    'work.';

-- sql/schema/08_flow_control.sql

COMMENT ON FUNCTION pgtasks.configure_queue(text, integer, integer, interval) IS
    'Replaces a queue''s limits: at most max_running tasks RUNNING at once, at most rate_limit '
    'starts per rate_period; NULL means no limit. The pause is left as it is.';
COMMENT ON FUNCTION pgtasks.pause_queue(text) IS
    'Stops claims from a queue until resume_queue: running tasks finish, submits are accepted.';
COMMENT ON FUNCTION pgtasks.resume_queue(text) IS
    'Lets workers claim from a paused queue again, and wakes them.';

-- sql/schema/09_schedules.sql

COMMENT ON FUNCTION
    pgtasks.create_schedule(text, text, text, interval, jsonb, text, integer, text, text,
                            interval) IS
    'Creates or replaces a schedule: exactly one of cron (5 fields, in timezone) or every (a '
    'fixed interval), the task it enqueues per tick, and its catch_up window and overlap '
    'policy.';
COMMENT ON FUNCTION
    pgtasks.declare_schedule(text, text, text, interval, jsonb, text, integer, text, text,
                             interval) IS
    'A worker''s schedule declaration: like create_schedule, but it never overwrites a '
    'schedule made through SQL (then it returns false).';
COMMENT ON FUNCTION pgtasks.drop_schedule(text) IS
    'Deletes a schedule; the tasks it enqueued stay.';
COMMENT ON FUNCTION pgtasks.pause_schedule(text) IS
    'Stops a schedule from firing until resume_schedule.';
COMMENT ON FUNCTION pgtasks.resume_schedule(text) IS
    'Lets a paused schedule fire again from now on; the ticks that passed while it was paused '
    'are not fired.';
COMMENT ON FUNCTION pgtasks.trigger_schedule(text) IS
    'Enqueues a schedule''s task now, once, whatever its overlap policy; returns the task id.';
COMMENT ON FUNCTION pgtasks.due_schedules(integer, interval, text) IS
    'Claims up to max_schedules due schedules for a few seconds, so each goes to one worker '
    'per round; returns what that worker needs to fire them.';
COMMENT ON FUNCTION pgtasks.fire_schedule(text, bigint, timestamptz[], timestamptz, bigint) IS
    'Fires one schedule''s due ticks (computed here for every schedules, passed in for cron '
    'ones), applying its catch-up and overlap policies, and advances it; returns the task ids '
    'enqueued.';
COMMENT ON FUNCTION pgtasks.fire_every_schedules(integer) IS
    'Fires every due `every` schedule entirely in SQL, for deployments without a Python worker '
    '(call it about once a second); returns how many tasks it enqueued.';
COMMENT ON VIEW pgtasks.schedules IS
    'Every schedule: its definition, when it fires next, what it last enqueued and that '
    'task''s status, and how many ticks it skipped (missed or overlapping).';

-- sql/schema/10_workflows.sql

COMMENT ON FUNCTION pgtasks.await_parents() IS
    'Trigger function of tasks_await_parents: a retried task with parents goes back to WAITING '
    'while any parent is unfinished, and is refused (PT510) while one is FAILED or CANCELLED.';
COMMENT ON FUNCTION pgtasks.submit_workflow(jsonb) IS
    'Submits a whole graph of tasks in one transaction (nodes with their "after" lists) and '
    'returns {"workflow_id": ..., "nodes": {name: task id}}; a node waits until its parents '
    'have ended.';
COMMENT ON FUNCTION pgtasks.parent_results(bigint) IS
    'The parents of a task as one JSON object keyed by parent id: node name, status, and the '
    'result (DONE) or error (FAILED, CANCELLED).';
COMMENT ON FUNCTION pgtasks.cancel_workflow(bigint) IS
    'Cancels every unfinished task of a workflow, running ones included (their workers are '
    'told); returns how many.';
COMMENT ON FUNCTION pgtasks.workflow_graph(bigint) IS
    'A workflow''s tasks in submit (topological) order, each with its node name, status, '
    'progress and parent task ids.';
COMMENT ON VIEW pgtasks.workflows IS
    'One row per submitted workflow: its state (running, done, failed or cancelled) and how '
    'many of its tasks are in each status.';
COMMENT ON COLUMN pgtasks.workflows.state IS
    'running while any task is unfinished; then done when every sink (a task nothing depends '
    'on) is DONE, else failed if a task FAILED, else cancelled.';
COMMENT ON COLUMN pgtasks.workflows.pending IS
    'Tasks PENDING or COMMIT: ready to run, or waiting to continue from a checkpoint or a '
    'retry.';

-- sql/schema/11_views.sql

COMMENT ON VIEW pgtasks.task_status IS
    'Every task with everything about it (params, result, error, progress, schedule, '
    'workflow), for readers.';
COMMENT ON COLUMN pgtasks.task_status.retries IS
    'retry_count/max_retries: the retries used, of those allowed.';
COMMENT ON COLUMN pgtasks.task_status.percent IS
    'progress_current as a percentage of progress_total, when the task reported a total.';
COMMENT ON COLUMN pgtasks.task_status.elapsed IS
    'Time since the first start, up to the finish (or up to now while unfinished).';
COMMENT ON VIEW pgtasks.task_overview IS
    'Every task''s status, progress and times, without params, results or errors; for '
    'submitters.';
COMMENT ON VIEW pgtasks.task_history IS
    'Every status change of every task: when, from and to which status, in which attempt, by '
    'which worker and login role.';
COMMENT ON VIEW pgtasks.task_log_lines IS
    'Every log line of every task, in the order logged (id); at is when the line was logged.';
COMMENT ON VIEW pgtasks.task_attempt_errors IS
    'One row per failed attempt of every task: its error and traceback.';
COMMENT ON VIEW pgtasks.task_step_names IS
    'The checkpointed steps of every task, with the attempt that stored each and its result.';
COMMENT ON VIEW pgtasks.failed_tasks IS
    'The dead letters: every FAILED task with its last error, how many attempts failed, and '
    'the last traceback.';
COMMENT ON VIEW pgtasks.queue_stats IS
    'Per queue: how many tasks are in each status, how many are ready and how long the oldest '
    'ready one has waited, and how many finished in the last minute.';
COMMENT ON COLUMN pgtasks.queue_stats.waiting IS
    'Tasks in COMMIT: waiting to continue after a checkpoint, a retryable error or a rescue. '
    '(WAITING tasks are waiting_on_parents.)';
COMMENT ON COLUMN pgtasks.queue_stats.ready IS
    'PENDING or COMMIT tasks whose run_at has come: what a worker may claim now, limits aside.';
COMMENT ON COLUMN pgtasks.queue_stats.waiting_on_parents IS
    'Tasks in WAITING: their parents (depends_on, or a workflow) have not all ended.';
COMMENT ON VIEW pgtasks.queues IS
    'Each queue with settings or active tasks: its limits and pause (configure_queue, '
    'pause_queue) next to how many of its tasks are ready, scheduled, running and waiting on '
    'parents.';
COMMENT ON COLUMN pgtasks.queues.scheduled IS
    'PENDING or COMMIT tasks whose run_at is still in the future.';
COMMENT ON COLUMN pgtasks.queues.recent_starts IS
    'Starts within the current rate window (rate-limited queues only).';
COMMENT ON COLUMN pgtasks.queues.waiting_on_parents IS
    'Tasks in WAITING: their parents (depends_on, or a workflow) have not all ended.';
COMMENT ON VIEW pgtasks.workers IS
    'The registered workers: where they run, their queues and slots, whether they are alive '
    'and how many tasks they are running.';
COMMENT ON COLUMN pgtasks.workers.alive IS
    'Seen (registered or heartbeating) within its lease. A dead worker''s tasks are rescued '
    'once their leases run out.';
COMMENT ON COLUMN pgtasks.workers.running IS
    'Tasks RUNNING under this worker''s id, including those of a dead worker that are still to '
    'be rescued.';
COMMENT ON VIEW pgtasks.registered_types IS
    'Every task type the workers registered, with the policy a submit of it gets when the '
    'caller leaves an argument out (the type''s own, else the settings default).';
COMMENT ON VIEW pgtasks.metrics IS
    'Everything /metrics exports, in one row of JSON documents: per-queue counts, workers, '
    'per-type run times of the last runtime_window (histogram buckets at runtime_bounds) and '
    'schedule lag.';

------------------------------------------------------------------------------------------
-- 2. prune_finished and release_children, as the topic files define them: their body
--    comments named the migration files that once explained a rule and now name the rule's
--    home. Statements and attributes are unchanged.

-- sql/schema/07_leases.sql
CREATE OR REPLACE FUNCTION pgtasks.prune_finished(
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
    cutoff := now() - coalesce(older_than, (SELECT s.retention FROM pgtasks.settings s));
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

-- sql/schema/10_workflows.sql
CREATE OR REPLACE FUNCTION pgtasks.release_children(parents bigint[]) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET enable_nestloop = on
AS $$
DECLARE
    doomed bigint[];
    causes bigint[];
    kids bigint[];
    ended integer[];
    n integer;
BEGIN
    WITH RECURSIVE doom(id, cause) AS (
        SELECT e.child_id, p.id
          FROM pgtasks.tasks p
          JOIN pgtasks.task_edges e ON e.parent_id = p.id
          JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE p.id = ANY (parents) AND p.status IN ('FAILED', 'CANCELLED')
           AND c.status = 'WAITING' AND c.on_parent_failure = 'cancel'
        UNION
        SELECT e.child_id, d.cause
          FROM doom d
          JOIN pgtasks.task_edges e ON e.parent_id = d.id
          JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE c.status = 'WAITING' AND c.on_parent_failure = 'cancel'
    )
    SELECT array_agg(x.id ORDER BY x.id), array_agg(x.cause ORDER BY x.id) INTO doomed, causes
      FROM (SELECT DISTINCT ON (d.id) d.id, d.cause FROM doom d ORDER BY d.id, d.cause) x;
    IF doomed IS NOT NULL THEN
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (doomed) ORDER BY t.id FOR NO KEY UPDATE;
        UPDATE pgtasks.tasks c
           SET status = 'CANCELLED', finished_at = now(), cancelled_by = u.cause,
               error = pg_catalog.format('cancelled: parent task %s%s ended %s', u.cause,
                                         coalesce(' (' || p.workflow_node || ')', ''), p.status)
          FROM unnest(doomed, causes) AS u(id, cause)
          JOIN pgtasks.tasks p ON p.id = u.cause
         WHERE c.id = u.id AND c.status = 'WAITING';
    END IF;

    SELECT array_agg(k.child_id ORDER BY k.child_id), array_agg(k.n ORDER BY k.child_id) INTO kids, ended
      FROM (SELECT e.child_id, count(*)::integer AS n FROM pgtasks.task_edges e
             WHERE e.parent_id = ANY (parents) GROUP BY e.child_id) k;
    IF kids IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (kids) AND t.status = 'WAITING'
     ORDER BY t.id FOR NO KEY UPDATE;
    WITH released AS (
        UPDATE pgtasks.tasks c
           SET waiting_on = greatest(c.waiting_on - u.n, 0),
               status = CASE WHEN c.waiting_on - u.n <= 0 THEN 'PENDING'::pgtasks.status
                             ELSE 'WAITING'::pgtasks.status END
          FROM unnest(kids, ended) AS u(id, n)
         WHERE c.id = u.id AND c.status = 'WAITING'
        RETURNING c.queue, c.status, c.run_at
    )
    -- Honours the off switch (pgtasks.wake_workers = off) like an insert does.
    SELECT count(pg_notify('pgtasks_wakeup', q.queue)) INTO n
      FROM (SELECT DISTINCT r.queue FROM released r
             WHERE r.status = 'PENDING' AND r.run_at <= now()
               AND current_setting('pgtasks.wake_workers', true) IS DISTINCT FROM 'off') q;
END $$;

------------------------------------------------------------------------------------------
-- 3. The sweep. grant_roles() is called only by secure_objects(), which no migration from
--    here on calls.

DROP PROCEDURE pgtasks.secure_objects();
DROP PROCEDURE pgtasks.grant_roles();

------------------------------------------------------------------------------------------
-- 4. The ledger, as migrations.py creates it in a fresh install: owned by the migrating role.

ALTER TABLE pgtasks.migrations OWNER TO CURRENT_USER;
