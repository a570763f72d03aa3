-- Workflows: chains, groups, chords and any DAG of tasks, resolved by the database.
-- docs/workflows.md is the guide, with the measured costs.
--
-- The graph lives apart from run state: task_edges holds one (parent, child) row per
-- dependency, workflow_runs one row per submitted graph (01_tables.sql). A task with
-- unfinished parents is WAITING and counts them in waiting_on; no claim looks at WAITING,
-- so the claim path knows nothing of workflows, and the CHECK constraint
-- ready_has_no_unfinished_parents keeps even a hand-written UPDATE from making such a task
-- claimable.
--
-- When parents end, the statement that ended them (finish_tasks, finish_and_claim,
-- fail_task, cancel_task, rescue ...) counts their children down in its AFTER UPDATE
-- statement trigger, settle_children (below), which calls release_children
-- below: one UPDATE per child per statement, with the number of its parents that statement
-- ended, so a chord's callback row is written once per completer batch, not once per child
-- (measured: 42 writes for 10,000 children). The child that reaches 0 becomes PENDING in
-- that same transaction, so the completer's claim in finish_and_claim can take it in the
-- same round trip; a NOTIFY wakes the other workers. A parent that ends FAILED or CANCELLED
-- cancels its waiting dependents, transitively, unless a child says
-- on_parent_failure = 'run'; retrying the parent brings them back to WAITING.
--
-- Plain tasks pay one test per UPDATE statement: has_dependents is NULL on every row that
-- no task depends on, and settle_children looks no further when no row of the statement has
-- it (measured: a plain drain with and without workflows, no difference beyond the noise).
--
-- Lock order: a child's id is always larger than its parents' (submit_workflow inserts in
-- topological order; depends_on names tasks that exist already, and the edge_goes_forward
-- constraint holds every edge to it), and every function here locks rows in id order, so
-- the fan-in cannot deadlock with a cancel that walks a workflow in id order.
--
-- SQLSTATEs (docs/sql-api.md):
--   PT501 spec not an object, without nodes, or with a bad name
--   PT502 a node without a valid name, or a name used twice
--   PT503 `after` names no node of the spec; depends_on names no task, or holds NULL
--   PT504 the graph has a cycle           PT505 on_parent_failure not cancel or run
--   PT506 a node key unknown, of the wrong JSON type, or a value that does not cast;
--         depends_on with unique_key
--   PT507 a depends_on parent already ended FAILED or CANCELLED
--   PT508 no workflow with that id
--   PT510 retrying a task whose parent is FAILED or CANCELLED
--   PT511 depends_on from a role that may not read the parents' results (not pgtasks_reader)
--   PT512 spawn_children's children not a non-empty list of objects with a type, a key
--         unknown, of the wrong JSON type, or a value that does not cast
--   PT513 spawn_children's step name already taken by a step that is no spawn

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- A retried child waits for its parents again

-- retry_task of a child (FAILED or CANCELLED -> PENDING) must not make it claimable while
-- a parent is unfinished: this trigger counts its parents again and keeps it WAITING if
-- any is. A child whose parent ended FAILED or CANCELLED cannot run (unless it runs on
-- parent failure): retry the parent, which revives it (PT510 says so).
CREATE FUNCTION pgtasks.await_parents() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    dead record;
    unmet integer;
BEGIN
    IF NEW.on_parent_failure IS DISTINCT FROM 'run' THEN
        SELECT p.id, p.status INTO dead
          FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
         WHERE e.child_id = NEW.id AND p.status IN ('FAILED', 'CANCELLED')
         ORDER BY p.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgtasks: task % cannot run again: its parent task % is %', NEW.id, dead.id, dead.status
                USING ERRCODE = 'PT510',
                      HINT = 'Retry the parent instead: the dependents it cancelled come back with it.';
        END IF;
    END IF;
    SELECT count(*) INTO unmet
      FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
     WHERE e.child_id = NEW.id AND p.status NOT IN ('DONE', 'FAILED', 'CANCELLED');
    NEW.waiting_on := unmet;
    NEW.cancelled_by := NULL;
    IF unmet > 0 THEN
        NEW.status := 'WAITING';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION pgtasks.await_parents() IS
    'Trigger function of tasks_await_parents: a retried task with parents goes back to WAITING '
    'while any parent is unfinished, and is refused (PT510) while one is FAILED or CANCELLED.';

-- Named to run before tasks_check_transition (BEFORE triggers run in name order), which then
-- checks the pair as it will be stored; only rows with parents that are being retried call
-- it.
CREATE TRIGGER tasks_await_parents
    BEFORE UPDATE ON pgtasks.tasks
    FOR EACH ROW
    WHEN (OLD.status IN ('FAILED', 'CANCELLED') AND NEW.status = 'PENDING'
          AND OLD.waiting_on IS NOT NULL)
    EXECUTE FUNCTION pgtasks.await_parents();

------------------------------------------------------------------------------------------
-- Parents ending: count down, release, cancel; and revive on retry
--
-- settle_children runs with enable_nestloop off, to hash-join its transition tables (see
-- 03_state_machine.sql). The two functions below look tasks and edges up by index in nested
-- loops, so they set it back on for themselves: without that, a batch with dependents would
-- hash-join pgtasks.tasks whole.

-- Called by settle_children with the parents (has_dependents) that this statement moved to
-- DONE, FAILED or CANCELLED. Two statements on the children, whatever the batch size:
--   1. failure: the WAITING descendants of a FAILED or CANCELLED parent that do not run on
--      parent failure are CANCELLED, all of them at once (a recursive walk, not one nested
--      trigger per generation: a chain of 1,000 would otherwise recurse 1,000 deep), each
--      with the reason in error and the parent in cancelled_by;
--   2. count-down: every other WAITING child loses the parents that ended here; at 0 it
--      becomes PENDING, and its queue gets one NOTIFY (per statement and queue) like a fresh
--      insert, so a listening worker claims it at once.
-- The fan-in's hot row is the callback of a chord: it is written once per completer
-- statement (a batch of up to --concurrency results), not once per child.
CREATE FUNCTION pgtasks.release_children(parents bigint[]) RETURNS void
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
           SET status = 'CANCELLED', finished_at = pgtasks.now(), cancelled_by = u.cause,
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
    SELECT count(pg_notify('pgtasks_wakeup', pgtasks.queue_tag(q.queue))) INTO n
      FROM (SELECT DISTINCT r.queue FROM released r
             WHERE r.status = 'PENDING' AND r.run_at <= pgtasks.now()
               AND current_setting('pgtasks.wake_workers', true) IS DISTINCT FROM 'off') q;
END $$;

-- A retried parent (FAILED or CANCELLED -> PENDING or WAITING) brings back the dependents
-- its failure cancelled (cancelled_by set; a task cancelled by hand or by cancel_workflow
-- stays cancelled), one generation per loop, each WAITING on its unfinished parents again.
-- A child with another parent still FAILED or CANCELLED stays cancelled (and so do its
-- dependents). A child that already left WAITING (it ran on parent failure) is left alone.
CREATE FUNCTION pgtasks.revive_children(parents bigint[]) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET enable_nestloop = on
AS $$
DECLARE
    frontier bigint[] := parents;
BEGIN
    -- The revivals below are updates too; settle_children must not walk them again.
    PERFORM set_config('pgtasks.reviving', 'on', true);
    -- A child that runs on parent failure counted the failed parent as ended; if it still
    -- waits on others, it now waits for the retried one too.
    UPDATE pgtasks.tasks c SET waiting_on = c.waiting_on + k.n
      FROM (SELECT e.child_id, count(*)::integer AS n FROM pgtasks.task_edges e
             WHERE e.parent_id = ANY (parents) GROUP BY e.child_id) k
     WHERE c.id = k.child_id AND c.status = 'WAITING';
    LOOP
        SELECT array_agg(DISTINCT c.id ORDER BY c.id) INTO frontier
          FROM pgtasks.task_edges e JOIN pgtasks.tasks c ON c.id = e.child_id
         WHERE e.parent_id = ANY (frontier) AND c.status = 'CANCELLED' AND c.cancelled_by IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pgtasks.task_edges e2 JOIN pgtasks.tasks p ON p.id = e2.parent_id
                            WHERE e2.child_id = c.id AND p.status IN ('FAILED', 'CANCELLED'));
        EXIT WHEN frontier IS NULL;
        PERFORM 1 FROM pgtasks.tasks t WHERE t.id = ANY (frontier) ORDER BY t.id FOR NO KEY UPDATE;
        WITH revived AS (
            UPDATE pgtasks.tasks c
               SET status = 'WAITING', finished_at = NULL, error = NULL, cancelled_by = NULL,
                   waiting_on = (SELECT count(*) FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
                                  WHERE e.child_id = c.id AND p.status <> 'DONE')
             WHERE c.id = ANY (frontier) AND c.status = 'CANCELLED'
            RETURNING c.id
        )
        SELECT array_agg(r.id) INTO frontier FROM revived r;
        EXIT WHEN frontier IS NULL;
    END LOOP;
    PERFORM set_config('pgtasks.reviving', '', true);
END $$;

-- The trigger that runs the two functions above: after every UPDATE statement on tasks,
-- the children of the parents it ended are released or cancelled (release_children), and
-- those of the parents it retried revived (revive_children). It also settles child tasks
-- (spawn_children, below): the parents of children that ended may wake (wake_spawners),
-- and a cancelled parent's unfinished children are cancelled (cancel_children). Plain
-- tasks pay one pass over the statement's rows and one probe: has_dependents is NULL on
-- every row that no task depends on and spawned_by on every task that is no child, and
-- unsettled_edges, which lists the parents a depends_on submit added children to without
-- marking them (submit_dependent, below), is empty but for those submitted since the last
-- maintain(). Nested loops off for the join of the transition tables, like the history's
-- (03_state_machine.sql); the functions it calls turn them back on.
CREATE FUNCTION pgtasks.settle_children() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET enable_nestloop = off
SET search_path = pg_catalog, pgtasks, pg_temp
SET jit = off
AS $$
DECLARE
    ended bigint[];
    retried bigint[];
    spawners bigint[];
    cancelled bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows n
                    WHERE n.has_dependents OR n.spawned_by IS NOT NULL OR n.status = 'CANCELLED')
       AND NOT EXISTS (SELECT 1 FROM pgtasks.unsettled_edges) THEN
        RETURN NULL;
    END IF;

    -- Child tasks: the parents of the children that ended here, and the cancelled tasks
    -- that spawned children.
    SELECT array_agg(DISTINCT n.spawned_by ORDER BY n.spawned_by)
               FILTER (WHERE n.spawned_by IS NOT NULL AND n.status IN ('DONE', 'FAILED', 'CANCELLED')),
           array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status = 'CANCELLED')
      INTO spawners, cancelled
      FROM new_rows n JOIN old_rows o USING (id)
     WHERE o.status <> n.status AND (n.spawned_by IS NOT NULL OR n.status = 'CANCELLED');
    IF cancelled IS NOT NULL THEN
        SELECT array_agg(DISTINCT s.parent_id ORDER BY s.parent_id) INTO cancelled
          FROM pgtasks.task_spawns s WHERE s.parent_id = ANY (cancelled);
        IF cancelled IS NOT NULL THEN
            PERFORM pgtasks.cancel_children(cancelled);
        END IF;
    END IF;
    IF spawners IS NOT NULL THEN
        PERFORM pgtasks.wake_spawners(spawners);
    END IF;

    -- Workflows and dependencies.
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
END $$;
COMMENT ON FUNCTION pgtasks.settle_children() IS
    'Trigger function: releases, cancels or revives the workflow children of the tasks an UPDATE ended or retried; wakes the parents of spawned children that ended and cancels the children of cancelled parents.';

-- Named to fire after tasks_record_status_changes (AFTER statement triggers fire in name
-- order), so a parent's history row comes before its children's.
CREATE TRIGGER tasks_settle_children
    AFTER UPDATE ON pgtasks.tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgtasks.settle_children();

------------------------------------------------------------------------------------------
-- Submitting with parents

-- The role a call comes from. These functions run as their owner, so current_user names
-- pgtasks_owner: the caller is the role the session acts as, the one SET ROLE chose (the
-- setting `role`), else the login role (session_user). A session that narrowed itself with
-- SET ROLE is judged as that role, like every query it runs; SET ROLE cannot be run inside
-- a SECURITY DEFINER function, so no function between the session and this one can widen
-- it.
CREATE FUNCTION pgtasks.calling_role() RETURNS name
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN session_user
                ELSE pg_catalog.current_setting('role')::name END
$$;
COMMENT ON FUNCTION pgtasks.calling_role() IS
    'The role the calling session acts as (SET ROLE, else the login role), seen from inside a pgtasks function.';

-- submit_task(..., depends_on => ...) ends here (04_submit.sql). Links a new task to
-- existing parents and inserts it WAITING on the unfinished ones.
--
-- Who may name parents: a role that may read their results (a member of pgtasks_reader,
-- counted as calling_role). The child's worker reads its parents' results and errors
-- (parent_results), so a depends_on on any task handed them to whoever ran the child.
-- submit_workflow needs no such rule: its edges join nodes of one submission.
--
-- No lock that a parent's worker waits for: the submitter may keep its transaction open,
-- and a parent lock held that long stalled the worker's heartbeat and finish until its
-- lease ran out (all three running tasks of a worker were rescued and run again behind one
-- submit held open for 30 s). The parents are read FOR KEY SHARE, which only a delete
-- conflicts with (pruning skips such rows), and none is written: has_dependents is marked
-- later, by maintain() (settle_new_edges), and until then unsettled_edges lists the edge,
-- which settle_children reads as a mark.
--
-- A parent may then end while the submit is still open, and neither side would see the
-- other: the finisher's trigger does not see the uncommitted edge, and the submit counted
-- the parent unfinished. So the child is settled again at the submit's commit
-- (settle_at_commit, a deferred trigger): it waits for every transaction writing one of its
-- parents at that moment, then counts the parents again and is released, or cancelled, as
-- release_children would have done. A parent that ends after the commit finds the child
-- through unsettled_edges. What remains is the moment between that last count and the
-- commit (a WAL flush; longer if the submitter ran SET CONSTRAINTS ALL IMMEDIATE, which
-- moves the count to the end of its statement): a parent that ends unseen then leaves the
-- child WAITING until the next maintain(), which settles it. Either way it is released
-- exactly once: every count sets waiting_on to the number of unfinished parents, and a
-- finisher only subtracts the parents it saw end.
CREATE FUNCTION pgtasks.submit_dependent(
    p                 pgtasks.tasks,   -- the resolved policy (submit_policy)
    params            jsonb,
    concurrency_key   text,
    concurrency_limit integer,
    depends_on        bigint[],
    on_parent_failure text
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
                               waiting_on, on_parent_failure, soft_timeout)
    VALUES (p.task_type, submit_dependent.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base, submit_dependent.concurrency_key, submit_dependent.concurrency_limit,
            CASE WHEN unmet > 0 THEN 'WAITING'::pgtasks.status ELSE 'PENDING'::pgtasks.status END,
            unmet, policy, p.soft_timeout)
    RETURNING id INTO new_id;
    INSERT INTO pgtasks.task_edges (parent_id, child_id) SELECT u, new_id FROM unnest(parents) u;
    INSERT INTO pgtasks.unsettled_edges (parent_id, child_id) SELECT u, new_id FROM unnest(parents) u;
    RETURN new_id;
END $$;

-- Settles a WAITING child against what its parents are now, as release_children would
-- have had it seen the child's edges: CANCELLED when a parent ended FAILED or CANCELLED and
-- the child does not run on parent failure; else waiting_on becomes the number of
-- unfinished parents, and at 0 the child becomes PENDING (with the wake-up a release sends).
-- It sets the count rather than subtracting, so settling twice changes nothing. Its callers
-- keep other writers off the child: the submit settles it before commit, while no other
-- transaction sees it; settle_new_edges holds its row.
CREATE FUNCTION pgtasks.settle_child(child_id bigint) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(c.queue));
    END IF;
END $$;

-- The deferred trigger of unsettled_edges: a depends_on submit settles its child at its
-- commit, once per child (on the row of its first parent). First it waits for every
-- transaction writing one of the child's parents right now, such as a finish not yet
-- committed: its count then sees how that ended. Each such parent is locked FOR SHARE in a
-- subtransaction that is rolled back at once, which waits like a lock and keeps none; the
-- parents nobody writes are found with one SKIP LOCKED pass. No worker waits for this.
CREATE FUNCTION pgtasks.settle_at_commit() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;
COMMENT ON FUNCTION pgtasks.settle_at_commit() IS
    'Trigger function of unsettled_edges_settle: at the commit of a depends_on submit, waits '
    'for the transactions writing its parents, then settles the child (settle_child).';

-- Deferred: it runs at the submit's commit, however long its transaction stays open.
CREATE CONSTRAINT TRIGGER unsettled_edges_settle
    AFTER INSERT ON pgtasks.unsettled_edges
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pgtasks.settle_at_commit();

-- maintain()'s part: up to max_rows unsettled edges. Each edge's parent, then its child,
-- is locked without waiting (a row someone is writing waits for the next round); the child
-- is settled (settle_child: a parent that ended unseen just before the submit's commit
-- releases it now) and the parent marked has_dependents, after which the edge is like any
-- other and leaves unsettled_edges. Marking a running parent writes its row: its worker's
-- next heartbeat may wait for the rest of this maintain() call, once per parent. Returns
-- how many edges it settled.
CREATE FUNCTION pgtasks.settle_new_edges(max_rows integer) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- One call, one graph, all of it or nothing. The spec:
--   {"name": "etl",
--    "nodes": [{"name": "extract", "type": "extract", "params": {...}},
--              {"name": "load", "type": "load", "after": ["extract"],
--               "queue": "q", "priority": 5, "run_at": "2026-12-02T10:00:00Z",
--               "max_retries": 3, "timeout": 60 | "1 minute", "backoff_base": ...,
--               "soft_timeout": 50 | "50 seconds",
--               "concurrency_key": "k", "concurrency_limit": 2,
--               "on_parent_failure": "cancel" | "run"}]}
-- ("nodes" may also be an object keyed by node name.) Returns
--   {"workflow_id": 7, "nodes": {"extract": 101, "load": 102}}.
-- Nodes are inserted in topological order (Kahn's algorithm, ties in spec order), so a
-- parent's id is always smaller than its children's: parent_results lists parents in
-- submit order, and locks taken in id order meet parents first. Policy (queue, retries...)
-- is resolved like submit_task's, once per distinct combination, not once per node.
CREATE FUNCTION pgtasks.submit_workflow(
    spec        jsonb,
    traceparent text DEFAULT NULL, -- W3C trace context of every node; NULL: the session's pgtasks.traceparent
    tracestate  text DEFAULT NULL  -- its W3C tracestate, given with traceparent; NULL: none
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    nodes jsonb;
    n integer;
    names text[];
    bad record;
    e_par integer[];
    e_kid integer[];
    m integer;
    indeg integer[];
    first_kid integer[];
    kid_count integer[];
    n_parents integer[];
    kid_list integer[];
    fill integer[];
    queue_ integer[];
    head integer := 1;
    tail integer := 0;
    u integer;
    v integer;
    i integer;
    wf_id bigint;
    ids bigint[];
    out_nodes jsonb;
    prior text;
    prior_state text;
BEGIN
    IF traceparent IS NOT NULL OR tracestate IS NOT NULL THEN
        -- As in submit_task: the argument is the session setting for this call only, so
        -- every node goes in with it (the tasks.traceparent default).
        PERFORM pgtasks.check_trace_context(traceparent, tracestate);
        prior := current_setting('pgtasks.traceparent', true);
        prior_state := current_setting('pgtasks.tracestate', true);
        PERFORM set_config('pgtasks.traceparent', traceparent, true),
                set_config('pgtasks.tracestate', coalesce(tracestate, ''), true);
        out_nodes := pgtasks.submit_workflow(spec);
        PERFORM set_config('pgtasks.traceparent', coalesce(prior, ''), true),
                set_config('pgtasks.tracestate', coalesce(prior_state, ''), true);
        RETURN out_nodes;
    END IF;
    IF spec IS NULL OR jsonb_typeof(spec) <> 'object' THEN
        RAISE EXCEPTION 'pgtasks: a workflow spec is a JSON object with a "nodes" list, got %',
                coalesce(jsonb_typeof(spec), 'NULL')
            USING ERRCODE = 'PT501', HINT = 'E.g. {"nodes": [{"name": "a", "type": "extract"}, '
                                            '{"name": "b", "type": "load", "after": ["a"]}]}.';
    END IF;
    IF spec ? 'name' AND jsonb_typeof(spec->'name') <> 'null'
       AND (jsonb_typeof(spec->'name') <> 'string' OR pgtasks.is_blank(spec->>'name')
            OR octet_length(spec->>'name') > 255) THEN
        RAISE EXCEPTION 'pgtasks: a workflow name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT501', HINT = 'Leave "name" out or name what the workflow does, e.g. "nightly-etl".';
    END IF;
    nodes := spec->'nodes';
    IF jsonb_typeof(nodes) = 'object' THEN
        nodes := (SELECT jsonb_agg(CASE WHEN jsonb_typeof(x.v) = 'object'
                                        THEN x.v || jsonb_build_object('name', x.k) ELSE x.v END
                                   ORDER BY x.k)
                    FROM jsonb_each(nodes) AS x(k, v));
    END IF;
    IF nodes IS NULL OR jsonb_typeof(nodes) <> 'array' OR jsonb_array_length(nodes) = 0 THEN
        RAISE EXCEPTION 'pgtasks: a workflow needs at least one node (spec->''nodes'' is %)',
                coalesce(jsonb_typeof(nodes), 'missing')
            USING ERRCODE = 'PT501', HINT = 'Pass "nodes": [{"name": ..., "type": ..., "after": [...]}, ...].';
    END IF;
    n := jsonb_array_length(nodes);

    -- Node shape: an object, a unique non-blank name, a type, known keys with JSON types
    -- that fit. The first bad node is named.
    SELECT x.ord, x.v INTO bad
      FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
     WHERE jsonb_typeof(x.v) <> 'object'
        OR jsonb_typeof(x.v->'name') IS DISTINCT FROM 'string'
        OR pgtasks.is_blank(x.v->>'name') OR octet_length(x.v->>'name') > 255
     ORDER BY x.ord LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node % of the workflow has no valid name (a non-blank string of at most 255 bytes)', bad.ord
            USING ERRCODE = 'PT502', HINT = 'Every node is an object with "name" and "type".';
    END IF;
    SELECT x.v->>'name' AS name INTO bad
      FROM jsonb_array_elements(nodes) AS x(v) GROUP BY x.v->>'name' HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node name % appears twice in the workflow', quote_literal(bad.name)
            USING ERRCODE = 'PT502', HINT = 'Node names are unique within a workflow.';
    END IF;
    SELECT x.v->>'name' AS name,
           CASE WHEN k.key NOT IN ('name', 'type', 'params', 'after', 'queue', 'priority', 'run_at',
                                   'max_retries', 'timeout', 'backoff_base', 'soft_timeout',
                                   'concurrency_key', 'concurrency_limit', 'on_parent_failure')
                THEN pg_catalog.format('has an unknown key %s', quote_literal(k.key))
                ELSE pg_catalog.format('has %s of JSON type %s', k.key, jsonb_typeof(k.value)) END AS what
      INTO bad
      FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord), jsonb_each(x.v) AS k(key, value)
     WHERE jsonb_typeof(k.value) <> 'null' AND NOT CASE k.key
            WHEN 'name' THEN true
            WHEN 'type' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'params' THEN jsonb_typeof(k.value) = 'object'
            WHEN 'after' THEN jsonb_typeof(k.value) = 'array'
                         AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(k.value) a WHERE jsonb_typeof(a) <> 'string')
            WHEN 'queue' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'priority' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'run_at' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'max_retries' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'timeout' THEN jsonb_typeof(k.value) IN ('number', 'string')
            WHEN 'backoff_base' THEN jsonb_typeof(k.value) IN ('number', 'string')
            WHEN 'soft_timeout' THEN jsonb_typeof(k.value) IN ('number', 'string')
            WHEN 'concurrency_key' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'concurrency_limit' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'on_parent_failure' THEN k.value #>> '{}' IN ('cancel', 'run')
            ELSE false END
     ORDER BY x.ord LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node % %', quote_literal(bad.name), bad.what
            USING ERRCODE = 'PT506',
                  HINT = 'Node keys: type (string), params (object), after (list of node names), queue, priority, '
                         'run_at, max_retries, timeout, backoff_base, soft_timeout, concurrency_key, '
                         'concurrency_limit, on_parent_failure (cancel or run).';
    END IF;

    names := ARRAY(SELECT x.v->>'name' FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord) ORDER BY x.ord);

    -- Edges by node position; an unknown name is an error, a repeated one counts once.
    SELECT x.v->>'name' AS name, a.parent INTO bad
      FROM jsonb_array_elements(nodes) AS x(v), jsonb_array_elements_text(coalesce(x.v->'after', '[]')) AS a(parent)
     WHERE a.parent <> ALL (names) OR a.parent = x.v->>'name'
     LIMIT 1;
    IF FOUND THEN
        IF bad.parent = bad.name THEN
            RAISE EXCEPTION 'pgtasks: node % is after itself: a cycle', quote_literal(bad.name)
                USING ERRCODE = 'PT504', HINT = 'A workflow is a graph without cycles; remove the node from its own "after".';
        END IF;
        RAISE EXCEPTION 'pgtasks: node % is after %, which is not a node of this workflow',
                quote_literal(bad.name), quote_literal(bad.parent)
            USING ERRCODE = 'PT503', HINT = '"after" lists names of other nodes of the same spec.';
    END IF;
    SELECT coalesce(array_agg(pp.ord::integer ORDER BY pp.ord, x.ord), '{}'),
           coalesce(array_agg(x.ord::integer ORDER BY pp.ord, x.ord), '{}')
      INTO e_par, e_kid
      FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
     CROSS JOIN LATERAL (SELECT DISTINCT a.parent FROM jsonb_array_elements_text(coalesce(x.v->'after', '[]')) AS a(parent)) a
      JOIN unnest(names) WITH ORDINALITY AS pp(name, ord) ON pp.name = a.parent;
    m := cardinality(e_par);

    -- Kahn's algorithm on arrays (assignment to an element of a PL/pgSQL array is O(1)):
    -- O(nodes + edges), ~20 ms for a chord of 10,000.
    indeg := array_fill(0, ARRAY[n]);
    kid_count := array_fill(0, ARRAY[n]);
    FOR i IN 1 .. m LOOP
        indeg[e_kid[i]] := indeg[e_kid[i]] + 1;
        kid_count[e_par[i]] := kid_count[e_par[i]] + 1;
    END LOOP;
    n_parents := indeg;
    first_kid := array_fill(1, ARRAY[n]);
    FOR i IN 2 .. n LOOP
        first_kid[i] := first_kid[i - 1] + kid_count[i - 1];
    END LOOP;
    kid_list := e_kid;  -- sorted by parent: node u's children are kid_list[first_kid[u] ..]
    queue_ := array_fill(0, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        IF indeg[i] = 0 THEN
            tail := tail + 1;
            queue_[tail] := i;
        END IF;
    END LOOP;
    WHILE head <= tail LOOP
        u := queue_[head];
        head := head + 1;
        FOR i IN first_kid[u] .. first_kid[u] + kid_count[u] - 1 LOOP
            v := kid_list[i];
            indeg[v] := indeg[v] - 1;
            IF indeg[v] = 0 THEN
                tail := tail + 1;
                queue_[tail] := v;
            END IF;
        END LOOP;
    END LOOP;
    IF tail < n THEN
        RAISE EXCEPTION 'pgtasks: the workflow has a cycle through %',
                left((SELECT string_agg(quote_literal(names[i2]), ', ' ORDER BY i2) FROM generate_series(1, n) i2
                       WHERE indeg[i2] > 0), 300)
            USING ERRCODE = 'PT504', HINT = 'A workflow is a graph without cycles: check the "after" lists of these nodes.';
    END IF;

    INSERT INTO pgtasks.workflow_runs (name, nodes) VALUES (nullif(spec->>'name', ''), n)
    RETURNING id INTO wf_id;

    -- Values cast here; a text that is no interval, time or integer is PT506, not 22xxx.
    BEGIN
        -- Concurrency keys get submit_task's checks (PT304), once per distinct pair.
        PERFORM pgtasks.check_flow_args(NULL, NULL, f.k, f.l)
           FROM (SELECT DISTINCT x.v->>'concurrency_key' AS k, (x.v->>'concurrency_limit')::integer AS l
                   FROM jsonb_array_elements(nodes) AS x(v)
                  WHERE x.v->>'concurrency_key' IS NOT NULL OR x.v->>'concurrency_limit' IS NOT NULL) f;
        WITH parsed AS (
            SELECT x.ord::integer AS ord, x.v->>'name' AS name, x.v->>'type' AS task_type,
                   coalesce(x.v->'params', '{}') AS params,
                   x.v->>'queue' AS queue, (x.v->>'priority')::integer AS priority,
                   (x.v->>'run_at')::timestamptz AS run_at,
                   (x.v->>'max_retries')::integer AS max_retries,
                   CASE jsonb_typeof(x.v->'timeout') WHEN 'number' THEN make_interval(secs => (x.v->>'timeout')::float8)
                        WHEN 'string' THEN (x.v->>'timeout')::interval END AS timeout,
                   CASE jsonb_typeof(x.v->'backoff_base') WHEN 'number' THEN make_interval(secs => (x.v->>'backoff_base')::float8)
                        WHEN 'string' THEN (x.v->>'backoff_base')::interval END AS backoff_base,
                   CASE jsonb_typeof(x.v->'soft_timeout') WHEN 'number' THEN make_interval(secs => (x.v->>'soft_timeout')::float8)
                        WHEN 'string' THEN (x.v->>'soft_timeout')::interval END AS soft_timeout,
                   x.v->>'concurrency_key' AS concurrency_key,
                   (x.v->>'concurrency_limit')::integer AS concurrency_limit,
                   coalesce(x.v->>'on_parent_failure', 'cancel') AS on_parent_failure
              FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
        ), keyed AS (
            SELECT p.*, jsonb_build_array(p.task_type, p.queue, p.priority, p.run_at, p.max_retries,
                                          p.timeout, p.backoff_base, p.soft_timeout) AS policy_key
              FROM parsed p
        ), policy AS MATERIALIZED (
            SELECT g.policy_key,
                   pgtasks.submit_policy(g.task_type, g.queue, g.priority, g.run_at, g.max_retries,
                                         g.timeout, g.backoff_base, g.soft_timeout) AS p
              FROM (SELECT DISTINCT ON (k.policy_key) k.* FROM keyed k ORDER BY k.policy_key) g
        ), ins AS (
            INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                       backoff_base, concurrency_key, concurrency_limit, status,
                                       workflow_id, workflow_node, waiting_on, has_dependents,
                                       on_parent_failure, soft_timeout)
            SELECT (pol.p).task_type, k.params, (pol.p).queue, (pol.p).priority, (pol.p).run_at,
                   (pol.p).max_retries, (pol.p).timeout, (pol.p).backoff_base,
                   k.concurrency_key,
                   CASE WHEN k.concurrency_key IS NOT NULL THEN coalesce(k.concurrency_limit, 1) END,
                   CASE WHEN d.parents > 0 THEN 'WAITING'::pgtasks.status ELSE 'PENDING'::pgtasks.status END,
                   wf_id, k.name,
                   CASE WHEN d.parents > 0 THEN d.parents END,
                   CASE WHEN d.kids > 0 THEN true END,
                   CASE WHEN d.parents > 0 THEN k.on_parent_failure END,
                   (pol.p).soft_timeout
              FROM unnest(queue_) WITH ORDINALITY AS o(node, pos)
              JOIN keyed k ON k.ord = o.node
              JOIN policy pol ON pol.policy_key = k.policy_key
             CROSS JOIN LATERAL (SELECT n_parents[o.node] AS parents, kid_count[o.node] AS kids) d
             ORDER BY o.pos
            RETURNING id, workflow_node
        )
        SELECT array_agg(ins.id ORDER BY nm.ord), jsonb_object_agg(ins.workflow_node, ins.id)
          INTO ids, out_nodes
          FROM ins JOIN unnest(names) WITH ORDINALITY AS nm(name, ord) ON nm.name = ins.workflow_node;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'pgtasks: a workflow node has a value that does not fit: %', SQLERRM
            USING ERRCODE = 'PT506',
                  HINT = 'priority, max_retries and concurrency_limit are integers; run_at a timestamp; '
                         'timeout, backoff_base and soft_timeout seconds or an interval such as ''5 minutes''.';
    END;
    PERFORM pgtasks.check_params_list(ARRAY(SELECT coalesce(x.v->'params', '{}')
                                              FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
                                             ORDER BY x.ord));
    INSERT INTO pgtasks.task_edges (parent_id, child_id)
    SELECT ids[e.p], ids[e.k] FROM unnest(e_par, e_kid) AS e(p, k);
    RETURN jsonb_build_object('workflow_id', wf_id, 'nodes', out_nodes);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.submit_workflow(jsonb, text, text) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_workflow(jsonb, text, text) IS
    'Submits a whole graph of tasks in one transaction (nodes with their "after" lists) and '
    'returns {"workflow_id": ..., "nodes": {name: task id}}; a node waits until its parents '
    'have ended. traceparent (else the session setting pgtasks.traceparent) is the W3C trace '
    'context every node''s attempts join, with its tracestate.';

------------------------------------------------------------------------------------------
-- Reading and cancelling

-- The parents of a task, keyed by parent id (jsonb orders numeric keys of one length by
-- value, and shorter ones first, so the keys come in id order, which is submit order):
--   {"41": {"node": "extract", "status": "DONE", "result": ...},
--    "42": {"node": "sms", "status": "FAILED", "error": "..."}}
-- A child runs only after its parents ended, so a worker reads them once, when it needs
-- them (ctx.parent_results in Python): the plain claim carries nothing extra.
--
-- Results are data: only the worker running the child reads them here, presenting the
-- child's lease token (fenced like task_steps_of: PT002 once the attempt lost the task),
-- and only the child's own parents. Readers see results through task_status.
CREATE FUNCTION pgtasks.parent_results(task_id bigint, lease_token text) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    r jsonb;
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    SELECT coalesce(jsonb_object_agg(p.id::text,
               CASE WHEN p.status = 'DONE'
                    THEN jsonb_build_object('node', p.workflow_node, 'status', p.status, 'result', p.result)
                    WHEN p.status IN ('FAILED', 'CANCELLED')
                    THEN jsonb_build_object('node', p.workflow_node, 'status', p.status,
                                            'error', coalesce(p.error, 'cancelled'))
                    ELSE jsonb_build_object('node', p.workflow_node, 'status', p.status) END), '{}')
      INTO r
      FROM pgtasks.task_edges e JOIN pgtasks.tasks p ON p.id = e.parent_id
     WHERE e.child_id = parent_results.task_id;
    RETURN r;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.parent_results(bigint, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.parent_results(bigint, text) IS
    'The parents of a running task as one JSON object keyed by parent id: node name, status, '
    'and the result (DONE) or error (FAILED, CANCELLED). Fenced: pass the task''s lease token.';

-- Every unfinished task of the workflow, running ones included, as cancel_task does it:
-- CANCELLED, lease and token dropped, and a pgtasks_cancel hint (the task id) to the
-- worker of each running one (fencing rejects whatever it writes after). One statement for all of them,
-- rows locked in id order first. Each task it cancels says why in error
-- ('cancelled: workflow 7 (nightly) cancelled', the prefix of a parent failure's reason), so
-- a workflow cancelled on purpose reads differently from one that failed; an earlier
-- attempt's error stays in task_errors. cancelled_by stays NULL, so a retried parent does
-- not revive these tasks. Returns how many it cancelled.
CREATE FUNCTION pgtasks.cancel_workflow(workflow_id bigint) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    wf_name text;
    reason text;
    running bigint[];
    n integer;
BEGIN
    SELECT w.name INTO wf_name FROM pgtasks.workflow_runs w WHERE w.id = cancel_workflow.workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: workflow % does not exist', coalesce(workflow_id::text, 'NULL')
            USING ERRCODE = 'PT508', HINT = 'SELECT id, name, state FROM pgtasks.workflows lists them.';
    END IF;
    reason := pg_catalog.format('cancelled: workflow %s%s cancelled', workflow_id,
                                coalesce(' (' || wf_name || ')', ''));
    PERFORM 1 FROM pgtasks.tasks t
      WHERE t.workflow_id = cancel_workflow.workflow_id
        AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING')
      ORDER BY t.id FOR NO KEY UPDATE;
    SELECT array_agg(t.id) INTO running
      FROM pgtasks.tasks t
     WHERE t.workflow_id = cancel_workflow.workflow_id AND t.status = 'RUNNING';
    UPDATE pgtasks.tasks t
       SET status = 'CANCELLED', finished_at = pgtasks.now(), error = reason,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE t.workflow_id = cancel_workflow.workflow_id
       AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('pgtasks_cancel', r::text) FROM unnest(running) r;
    RETURN n;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.cancel_workflow(bigint) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.cancel_workflow(bigint) IS
    'Cancels every unfinished task of a workflow, running ones included (their workers are '
    'told); returns how many.';

-- A workflow's tasks with their parents, in submit (= topological) order.
CREATE FUNCTION pgtasks.workflow_graph(workflow_id bigint)
RETURNS TABLE (task_id bigint, node text, task_type text, status pgtasks.status,
               progress_current bigint, progress_total bigint, parent_ids bigint[])
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT t.id, t.workflow_node, t.task_type, t.status, t.progress_current, t.progress_total,
           ARRAY(SELECT e.parent_id FROM pgtasks.task_edges e WHERE e.child_id = t.id ORDER BY e.parent_id)
      FROM pgtasks.tasks t
     WHERE t.workflow_id = workflow_graph.workflow_id
     ORDER BY t.id
$$;
GRANT EXECUTE ON FUNCTION pgtasks.workflow_graph(bigint) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.workflow_graph(bigint) IS
    'A workflow''s tasks in submit (topological) order, each with its node name, status, '
    'progress and parent task ids.';

-- One row per workflow. pending counts PENDING and COMMIT (ready, or to continue). The
-- state of the whole: running while any task is unfinished; then done when every sink
-- (a task nothing depends on) is DONE, so a chord callback that ran on partial results
-- makes its workflow done; else failed if a task FAILED; else cancelled.
CREATE VIEW pgtasks.workflows AS
SELECT w.id, w.name, w.created_at,
       CASE WHEN c.waiting + c.pending + c.running > 0 THEN 'running'
            WHEN c.sinks_done THEN 'done'
            WHEN c.failed > 0 THEN 'failed'
            ELSE 'cancelled' END AS state,
       c.total, c.waiting, c.pending, c.running, c.done, c.failed, c.cancelled
  FROM pgtasks.workflow_runs w
 CROSS JOIN LATERAL (
       SELECT count(*)::integer AS total,
              count(*) FILTER (WHERE t.status = 'WAITING')::integer AS waiting,
              count(*) FILTER (WHERE t.status IN ('PENDING', 'COMMIT'))::integer AS pending,
              count(*) FILTER (WHERE t.status = 'RUNNING')::integer AS running,
              count(*) FILTER (WHERE t.status = 'DONE')::integer AS done,
              count(*) FILTER (WHERE t.status = 'FAILED')::integer AS failed,
              count(*) FILTER (WHERE t.status = 'CANCELLED')::integer AS cancelled,
              coalesce(bool_and(t.status = 'DONE') FILTER (WHERE t.has_dependents IS NULL), true) AS sinks_done
         FROM pgtasks.tasks t
        WHERE t.workflow_id = w.id) c;
GRANT SELECT ON pgtasks.workflows TO pgtasks_reader;
COMMENT ON VIEW pgtasks.workflows IS
    'One row per submitted workflow: its state (running, done, failed or cancelled) and how '
    'many of its tasks are in each status.';
COMMENT ON COLUMN pgtasks.workflows.state IS
    'running while any task is unfinished; then done when every sink (a task nothing depends '
    'on) is DONE, else failed if a task FAILED, else cancelled.';
COMMENT ON COLUMN pgtasks.workflows.pending IS
    'Tasks PENDING or COMMIT: ready to run, or waiting to continue from a checkpoint or a '
    'retry.';

------------------------------------------------------------------------------------------
-- Child tasks: a running task spawns children and waits for them, holding nothing
--
-- A workflow is declared before it is submitted; a task that finds its work at run time
-- (one child per file it listed) spawns it instead. spawn_children submits the children of
-- the running attempt, fenced by its lease token, as one checkpointed step; each child
-- carries its parent in tasks.spawned_by and the spawn is a task_spawns row (01_tables.sql).
-- wait_for_children ends the attempt like wait_for_event does (RUNNING -> COMMIT, no retry
-- spent, no lease, run_at 100 years out, a task_pauses row of kind 'children'), and the
-- statement that ends the last unfinished child makes the parent claimable in the same
-- transaction (settle_children -> wake_spawners), with a wake-up for its queue. The
-- parent's code runs again from the top: its spawn steps return the ids they spawned, and
-- wait_for_children returns every child's outcome in spawn order.
--
-- Children are ordinary tasks: they retry, time out and are rescued by their own policy.
-- A child that ends FAILED or CANCELLED is reported to the parent as a failure (its
-- status and error), as parent_results reports a failed parent; the parent decides what
-- that means. Cancelling a parent cancels its unfinished children, and theirs
-- (cancel_children); a parent that ends in any other way leaves them running.
--
-- Locks: a child that ends locks its parent (wake_spawners), after its own row; a
-- cancelled parent locks its children (cancel_children), after its own row. The two
-- orders meet only when a parent is cancelled while its child ends: the child's side
-- waits at most 200 ms for the parent (below the server's 1 s deadlock_timeout), then
-- fails with lock_not_available, which workers retry (the completer and the writer treat
-- it as transient), and the cancel goes through.
--
-- Who sees what: only the worker holding the parent's lease spawns (a worker is already a
-- submitter, so this lets it submit nothing it could not submit anyway), and only it
-- reads the children's results through wait_for_children, children that its own spawn
-- created: unlike depends_on (PT511), this hands no one the results of tasks somebody
-- else submitted. Readers see the tree in task_children and task_status.spawned_by.

-- Submits the children of a running attempt as the step `step`, or returns the ids that
-- an earlier call of this step spawned (the same attempt or an earlier one). children is a
-- JSON list of objects, one per child, in the order their results come back:
--   [{"type": "resize", "params": {"f": "a.png"}, "queue": "q", "priority": 5,
--     "run_at": "2026-12-02T10:00:00Z", "max_retries": 3, "timeout": 60 | "1 minute",
--     "backoff_base": ..., "soft_timeout": ..., "concurrency_key": "k",
--     "concurrency_limit": 2}]
-- Omitted keys resolve as in submit_task (the type's policy, else settings). The spawn
-- row, the children and the step's checkpoint ({"spawned": [ids]}, which the dashboard
-- lists with the other steps) commit together: an attempt killed before the commit
-- spawned nothing, one killed after it gets the same ids from a resumed call, so no child
-- is ever submitted twice. A resumed call's children argument is not read again.
-- traceparent (else the session setting pgtasks.traceparent, as for every submit) is the
-- W3C trace context the children's attempts join: the parent's attempt span, from Python.
CREATE FUNCTION pgtasks.spawn_children(
    task_id     bigint,
    lease_token text,
    step        text,
    children    jsonb,
    traceparent text DEFAULT NULL
) RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
    done_ids bigint[];
    bad record;
    ids bigint[];
    trace text;
BEGIN
    IF pgtasks.is_blank(step) OR octet_length(step) > 255 THEN
        RAISE EXCEPTION 'pgtasks: step name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT109', HINT = 'Name each spawn, e.g. ctx.spawn([...], name => ''resize-all'').';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    -- Under the parent's row lock: a concurrent call of the same attempt waits here and
    -- then finds the row.
    SELECT s.child_ids INTO done_ids FROM pgtasks.task_spawns s
     WHERE s.parent_id = t.id AND s.step = spawn_children.step;
    IF FOUND THEN
        RETURN done_ids;
    END IF;
    IF EXISTS (SELECT 1 FROM pgtasks.task_steps st WHERE st.task_id = t.id AND st.name = spawn_children.step) THEN
        RAISE EXCEPTION 'pgtasks: step % of task % is a checkpointed step, not a spawn', quote_literal(step), t.id
            USING ERRCODE = 'PT513', HINT = 'Give the spawn a name of its own, e.g. ''spawn-resize''.';
    END IF;
    IF children IS NULL OR jsonb_typeof(children) <> 'array' OR jsonb_array_length(children) = 0 THEN
        RAISE EXCEPTION 'pgtasks: children must be a non-empty JSON list, got %',
                coalesce(jsonb_typeof(children), 'NULL')
            USING ERRCODE = 'PT512', HINT = 'E.g. [{"type": "resize", "params": {"f": "a.png"}}].';
    END IF;
    SELECT x.ord,
           CASE WHEN jsonb_typeof(x.v) <> 'object' THEN pg_catalog.format('is a JSON %s, not an object', jsonb_typeof(x.v))
                ELSE 'has no type (a non-blank string)' END AS what
      INTO bad
      FROM jsonb_array_elements(children) WITH ORDINALITY AS x(v, ord)
     WHERE jsonb_typeof(x.v) <> 'object' OR jsonb_typeof(x.v->'type') IS DISTINCT FROM 'string'
        OR pgtasks.is_blank(x.v->>'type')
     ORDER BY x.ord LIMIT 1;
    IF NOT FOUND THEN
        SELECT x.ord,
               CASE WHEN k.key NOT IN ('type', 'params', 'queue', 'priority', 'run_at', 'max_retries', 'timeout',
                                       'backoff_base', 'soft_timeout', 'concurrency_key', 'concurrency_limit')
                    THEN pg_catalog.format('has an unknown key %s', quote_literal(k.key))
                    ELSE pg_catalog.format('has %s of JSON type %s', k.key, jsonb_typeof(k.value)) END AS what
          INTO bad
          FROM jsonb_array_elements(children) WITH ORDINALITY AS x(v, ord), jsonb_each(x.v) AS k(key, value)
         WHERE jsonb_typeof(k.value) <> 'null' AND NOT CASE k.key
                WHEN 'type' THEN true
                WHEN 'params' THEN jsonb_typeof(k.value) = 'object'
                WHEN 'queue' THEN jsonb_typeof(k.value) = 'string'
                WHEN 'priority' THEN jsonb_typeof(k.value) = 'number'
                WHEN 'run_at' THEN jsonb_typeof(k.value) = 'string'
                WHEN 'max_retries' THEN jsonb_typeof(k.value) = 'number'
                WHEN 'timeout' THEN jsonb_typeof(k.value) IN ('number', 'string')
                WHEN 'backoff_base' THEN jsonb_typeof(k.value) IN ('number', 'string')
                WHEN 'soft_timeout' THEN jsonb_typeof(k.value) IN ('number', 'string')
                WHEN 'concurrency_key' THEN jsonb_typeof(k.value) = 'string'
                WHEN 'concurrency_limit' THEN jsonb_typeof(k.value) = 'number'
                ELSE false END
         ORDER BY x.ord LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: child % of the spawn %', bad.ord, bad.what
            USING ERRCODE = 'PT512',
                  HINT = 'Child keys: type (string), params (object), queue, priority, run_at, max_retries, '
                         'timeout, backoff_base, soft_timeout, concurrency_key, concurrency_limit.';
    END IF;
    PERFORM pgtasks.check_params_list(ARRAY(SELECT coalesce(x.v->'params', '{}')
                                              FROM jsonb_array_elements(children) WITH ORDINALITY AS x(v, ord)
                                             ORDER BY x.ord));
    trace := coalesce(pgtasks.check_traceparent(traceparent),
                      pgtasks.check_traceparent(current_setting('pgtasks.traceparent', true)));
    -- Values cast here; a text that is no interval, time or integer is PT512, not 22xxx.
    BEGIN
        PERFORM pgtasks.check_flow_args(NULL, NULL, f.k, f.l)
           FROM (SELECT DISTINCT x.v->>'concurrency_key' AS k, (x.v->>'concurrency_limit')::integer AS l
                   FROM jsonb_array_elements(children) AS x(v)
                  WHERE x.v->>'concurrency_key' IS NOT NULL OR x.v->>'concurrency_limit' IS NOT NULL) f;
        -- The policy is resolved as submit_workflow resolves it, once per distinct
        -- combination, and the children go in with one INSERT in list order.
        WITH parsed AS (
            SELECT x.ord, x.v->>'type' AS task_type, coalesce(x.v->'params', '{}') AS params,
                   x.v->>'queue' AS queue, (x.v->>'priority')::integer AS priority,
                   (x.v->>'run_at')::timestamptz AS run_at,
                   (x.v->>'max_retries')::integer AS max_retries,
                   CASE jsonb_typeof(x.v->'timeout') WHEN 'number' THEN make_interval(secs => (x.v->>'timeout')::float8)
                        WHEN 'string' THEN (x.v->>'timeout')::interval END AS timeout,
                   CASE jsonb_typeof(x.v->'backoff_base') WHEN 'number' THEN make_interval(secs => (x.v->>'backoff_base')::float8)
                        WHEN 'string' THEN (x.v->>'backoff_base')::interval END AS backoff_base,
                   CASE jsonb_typeof(x.v->'soft_timeout') WHEN 'number' THEN make_interval(secs => (x.v->>'soft_timeout')::float8)
                        WHEN 'string' THEN (x.v->>'soft_timeout')::interval END AS soft_timeout,
                   x.v->>'concurrency_key' AS concurrency_key,
                   (x.v->>'concurrency_limit')::integer AS concurrency_limit
              FROM jsonb_array_elements(children) WITH ORDINALITY AS x(v, ord)
        ), keyed AS (
            SELECT p.*, jsonb_build_array(p.task_type, p.queue, p.priority, p.run_at, p.max_retries,
                                          p.timeout, p.backoff_base, p.soft_timeout) AS policy_key
              FROM parsed p
        ), policy AS MATERIALIZED (
            SELECT g.policy_key,
                   pgtasks.submit_policy(g.task_type, g.queue, g.priority, g.run_at, g.max_retries,
                                         g.timeout, g.backoff_base, g.soft_timeout) AS p
              FROM (SELECT DISTINCT ON (k.policy_key) k.* FROM keyed k ORDER BY k.policy_key) g
        ), ins AS (
            INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                       backoff_base, concurrency_key, concurrency_limit, soft_timeout,
                                       spawned_by, traceparent)
            SELECT (pol.p).task_type, k.params, (pol.p).queue, (pol.p).priority, (pol.p).run_at,
                   (pol.p).max_retries, (pol.p).timeout, (pol.p).backoff_base, k.concurrency_key,
                   CASE WHEN k.concurrency_key IS NOT NULL THEN coalesce(k.concurrency_limit, 1) END,
                   (pol.p).soft_timeout, t.id, trace
              FROM keyed k JOIN policy pol ON pol.policy_key = k.policy_key
             ORDER BY k.ord
            RETURNING id
        )
        SELECT array_agg(ins.id ORDER BY ins.id) INTO ids FROM ins;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'pgtasks: a child of the spawn has a value that does not fit: %', SQLERRM
            USING ERRCODE = 'PT512',
                  HINT = 'priority, max_retries and concurrency_limit are integers; run_at a timestamp; '
                         'timeout, backoff_base and soft_timeout seconds or an interval such as ''5 minutes''.';
    END;
    INSERT INTO pgtasks.task_spawns (parent_id, step, child_ids, attempt, at)
    VALUES (t.id, spawn_children.step, ids, t.attempt, pgtasks.now());
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (t.id, spawn_children.step, jsonb_build_object('spawned', to_jsonb(ids)), t.attempt);
    RETURN ids;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.spawn_children(bigint, text, text, jsonb, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.spawn_children(bigint, text, text, jsonb, text) IS
    'Submits the children (a JSON list of {"type", "params", ...}) of a running attempt as the '
    'checkpointed step `step` and returns their ids in list order; a later call of the same step '
    'returns the same ids and submits nothing. Fenced: pass the task''s lease token (PT002).';

-- The children's outcomes, or the end of the attempt until they are all over. Returns
--   ('done', [{"id": 101, "status": "DONE", "result": ...},
--             {"id": 102, "status": "FAILED", "error": "..."}, ...])
-- in spawn order when no child is unfinished (also for a task that spawned none: []), and
-- the attempt goes on running; else ('waiting', NULL): the attempt ended, RUNNING ->
-- COMMIT with run_at 100 years out, no retry spent, checkpoints kept, no lease, recorded in
-- task_pauses as kind 'children' (the history's note). The end of the last child makes the
-- task claimable (wake_spawners), and its code, run again, calls this once more.
-- A child pruned before its parent read it (it ended more than the retention ago) is
-- {"id": ..., "status": "MISSING", "error": "..."}.
CREATE FUNCTION pgtasks.wait_for_children(task_id bigint, lease_token text)
RETURNS TABLE (state text, results jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
    now_ timestamptz := pgtasks.now();
    wake timestamptz;
BEGIN
    t := pgtasks.lock_owned_task(task_id, lease_token);
    -- Under the parent's row lock, which each ending child's statement takes too
    -- (wake_spawners): a child that ends now either is seen ended here, or finds the task
    -- parked and wakes it.
    IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks c
                    WHERE c.spawned_by = t.id AND c.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING')) THEN
        RETURN QUERY
        SELECT 'done'::text,
               coalesce(jsonb_agg(CASE WHEN c.id IS NULL
                                       THEN jsonb_build_object('id', u.child_id, 'status', 'MISSING',
                                                               'error', 'pruned: the child ended more than the retention ago')
                                       WHEN c.status = 'DONE'
                                       THEN jsonb_build_object('id', c.id, 'status', c.status, 'result', c.result)
                                       ELSE jsonb_build_object('id', c.id, 'status', c.status,
                                                               'error', coalesce(c.error, 'cancelled')) END
                                  ORDER BY u.child_id), '[]'::jsonb)
          FROM pgtasks.task_spawns s
         CROSS JOIN LATERAL unnest(s.child_ids) AS u(child_id)
          LEFT JOIN pgtasks.tasks c ON c.id = u.child_id
         WHERE s.parent_id = t.id;
        RETURN;
    END IF;
    wake := now_ + interval '100 years';
    INSERT INTO pgtasks.task_pauses (task_id, attempt, kind, until, at)
    VALUES (t.id, t.attempt, 'children', wake, now_);
    UPDATE pgtasks.tasks k
       SET status = 'COMMIT', run_at = wake,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE k.id = t.id;
    RETURN QUERY SELECT 'waiting'::text, NULL::jsonb;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.wait_for_children(bigint, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.wait_for_children(bigint, text) IS
    'Returns (done, [outcome of each child in spawn order]) once every child of the running '
    'task has ended, else ends the attempt without spending a retry ((waiting, NULL): RUNNING '
    '-> COMMIT until the last child ends). Fenced: pass the task''s lease token (PT002).';

-- Called by settle_children with the parents of the spawned children that the statement
-- ended: each parent parked in wait_for_children (COMMIT at the run_at its task_pauses row
-- holds, for its current attempt) whose children are now all over becomes claimable now,
-- and each of their queues gets one wake-up. The parents are locked first, in id order,
-- whatever their status as this statement saw it: a parent running wait_for_children right
-- now holds its row, and the count below, a statement later, sees how that ended. (Locking
-- only the parents this statement's snapshot saw running or parked would miss one that was
-- retried, claimed and parked in the meantime, and leave it parked for good.) lock_timeout
-- 200 ms: see the lock order above.
CREATE FUNCTION pgtasks.wake_spawners(parents bigint[]) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET enable_nestloop = on
SET lock_timeout = '200ms'
AS $$
DECLARE
    now_ timestamptz := pgtasks.now();
    n integer;
BEGIN
    PERFORM 1 FROM pgtasks.tasks p WHERE p.id = ANY (parents) ORDER BY p.id FOR NO KEY UPDATE;
    WITH woken AS (
        UPDATE pgtasks.tasks p SET run_at = now_
          FROM pgtasks.task_pauses w
         WHERE p.id = ANY (parents) AND p.status = 'COMMIT'
           AND w.task_id = p.id AND w.attempt = p.attempt AND w.kind = 'children'
           AND p.run_at = w.until AND p.run_at > now_
           AND NOT EXISTS (SELECT 1 FROM pgtasks.tasks c
                            WHERE c.spawned_by = p.id AND c.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING'))
        RETURNING p.queue
    )
    -- Honours the off switch (pgtasks.wake_workers = off) like an insert does.
    SELECT count(pg_notify('pgtasks_wakeup', pgtasks.queue_tag(q.queue))) INTO n
      FROM (SELECT DISTINCT w.queue FROM woken w
             WHERE current_setting('pgtasks.wake_workers', true) IS DISTINCT FROM 'off') q;
END $$;
COMMENT ON FUNCTION pgtasks.wake_spawners(bigint[]) IS
    'Makes the parents waiting in wait_for_children whose children have all ended claimable now (settle_children calls it).';

-- Called by settle_children with the parents (that spawned children) the statement
-- cancelled: their unfinished children are CANCELLED too, running ones included, as
-- cancel_task does it (lease and token dropped, a pgtasks_cancel hint to the worker; the
-- cancelled attempt's later writes are fenced off), each saying why in error. The update
-- fires settle_children again, so their own children follow, one generation per level.
CREATE FUNCTION pgtasks.cancel_children(parents bigint[]) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET enable_nestloop = on
AS $$
DECLARE
    kids bigint[];
    running bigint[];
BEGIN
    SELECT array_agg(c.id ORDER BY c.id) INTO kids
      FROM pgtasks.tasks c
     WHERE c.spawned_by = ANY (parents) AND c.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
    IF kids IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM pgtasks.tasks c WHERE c.id = ANY (kids) ORDER BY c.id FOR NO KEY UPDATE;
    SELECT array_agg(c.id) INTO running FROM pgtasks.tasks c WHERE c.id = ANY (kids) AND c.status = 'RUNNING';
    UPDATE pgtasks.tasks c
       SET status = 'CANCELLED', finished_at = pgtasks.now(),
           error = pg_catalog.format('cancelled: parent task %s was cancelled', c.spawned_by),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE c.id = ANY (kids) AND c.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
    PERFORM pg_notify('pgtasks_cancel', r::text) FROM unnest(running) r;
END $$;
COMMENT ON FUNCTION pgtasks.cancel_children(bigint[]) IS
    'Cancels the unfinished children of cancelled parents (settle_children calls it).';

-- A task's children, spawn by spawn, in spawn order, with their status and progress: the
-- tree the dashboard's task page shows. A child pruned before its parent has NULLs here.
CREATE VIEW pgtasks.task_children AS
SELECT s.parent_id, s.step, u.position, u.child_id, c.task_type, c.status,
       c.progress_current, c.progress_total, c.created_at, c.finished_at
  FROM pgtasks.task_spawns s
 CROSS JOIN LATERAL unnest(s.child_ids) WITH ORDINALITY AS u(child_id, position)
  LEFT JOIN pgtasks.tasks c ON c.id = u.child_id;
GRANT SELECT ON pgtasks.task_children TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_children IS
    'The children spawned by every task (spawn_children), one row each: the spawn step, the '
    'position in it, the child''s id, type, status and progress. WHERE parent_id = $1 ORDER BY child_id '
    'lists one task''s children in spawn order.';
