-- pgtasks finishing: what a running attempt writes (its result, its failure, a yield, its
-- checkpoints, progress and logs), and the operator's cancel_task and retry_task.
--
-- Every write of an attempt is fenced: it names (task_id, lease_token) and goes through
-- lock_owned_task (05_claim.sql), so a worker that lost its lease (rescued, cancelled)
-- gets PT002 and its late write changes nothing, and a worker that never held the task
-- cannot write it at all. The batched functions (finish_tasks, finish_and_claim) never
-- raise for a stale token: they return it as rejected, so one lost task cannot fail the
-- batch of the others.
--
-- Every fenced function (these, heartbeat in 07_leases.sql, parent_results in
-- 10_workflows.sql) runs with lock_timeout = 1s. A caller without the token never locks
-- the row (the token is in the locking statement's WHERE clause), so the sessions that can
-- hold a running task's row for long are the owner's and an operator's open transaction
-- (cancel_task in a transaction not yet committed), and a worker must not hang on them:
-- after 1 s the call fails with 55P03 (lock_not_available), writes nothing, and the
-- worker tries again on its next round; heartbeat instead skips that row (07_leases.sql).
-- 1 s is far above the functions' own lock waits (milliseconds) and far below a worker's
-- heartbeat interval (a third of the lease: 20 s by default).

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- Results

-- RUNNING -> DONE with the result. A result over settings.max_result_bytes is PT203 and
-- the task stays RUNNING for the worker to fail.
--
-- Every finish (here, finish_tasks, finish_and_claim) clears `error`: the row shows the
-- outcome of its last attempt, so a task that failed, retried and succeeded does not read
-- as failed to a client that shows `error` whenever it is set. The earlier attempts'
-- errors stay in task_errors and the history.
CREATE FUNCTION pgtasks.finish_task(task_id bigint, lease_token text, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    PERFORM pgtasks.check_result_size(result, 'result');
    UPDATE pgtasks.tasks t
       SET status = 'DONE', result = finish_task.result, error = NULL, finished_at = pgtasks.now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL,
           progress_current = coalesce(t.progress_total, t.progress_current)
     WHERE t.id = finish_task.task_id;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.finish_task(bigint, text, jsonb) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_task(bigint, text, jsonb) IS
    'Finishes a running attempt with its result: RUNNING -> DONE. PT002 when the lease token no longer holds the task, PT203 when the result is over settings.max_result_bytes.';

-- The batched completer: many results in one statement. Never raises for a stale
-- token; it returns the ids it did not finish so the worker can log them. Nor does an
-- oversized result, or one clients could not decode (json_shape_error), fail the batch (no
-- single row may make a statement fail for the others): that task is FAILED, not retryable
-- (the same code would produce the same result), with the PT203 or PT123 message as its
-- error, and comes back in rejected_task_id like a stale token; the rest are finished.
-- Only results over 202 bytes of text pay for the shape test. The completer's poison-batch splitting never sees
-- a PT203 from here.
CREATE FUNCTION pgtasks.finish_tasks(task_ids bigint[], lease_tokens text[], results jsonb[])
RETURNS TABLE (rejected_task_id bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
    big bigint[];
    o record;
BEGIN
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, lease_tokens, results, with_results => true);
    -- Sizes first, from the arguments alone: the common batch has no oversized result and
    -- reads no table here. A NULL result (a task that returned nothing) is left out before
    -- the tests: NULL > 202 is NULL, not false, so AND would still call json_shape_error
    -- for it (measured: 2.7 us per task of a drain of no-op tasks).
    SELECT array_agg(u.ord) INTO big
      FROM (SELECT x.result, x.ord, octet_length(x.result::text) AS size_bytes
              FROM unnest(finish_tasks.results) WITH ORDINALITY AS x(result, ord)
             WHERE x.result IS NOT NULL OFFSET 0) u
     WHERE u.size_bytes > max_bytes
        OR (u.size_bytes > 202 AND pgtasks.json_shape_error(u.result, u.size_bytes) IS NOT NULL);
    IF big IS NOT NULL THEN
        FOR o IN
            SELECT k AS task, octet_length(u.result::text) AS size_bytes, u.result
              FROM unnest(finish_tasks.task_ids, finish_tasks.lease_tokens, finish_tasks.results)
                     WITH ORDINALITY AS u(task_id, lease_token, result, ord)
              JOIN pgtasks.tasks k ON k.id = u.task_id AND k.lease_token = u.lease_token AND k.status = 'RUNNING'
             WHERE u.ord = ANY (big)
               FOR NO KEY UPDATE OF k
        LOOP
            -- Now FAILED, so the UPDATE below (RUNNING rows only) leaves it and reports it.
            PERFORM pgtasks.record_failure(
                o.task, CASE WHEN o.size_bytes > max_bytes
                             THEN pg_catalog.format('pgtasks: result of %s bytes is larger than max_result_bytes (%s)',
                                                    o.size_bytes, max_bytes)
                             ELSE pg_catalog.format('pgtasks: result not accepted: %s, which clients cannot decode',
                                                    pgtasks.json_shape_error(o.result, o.size_bytes)) END,
                NULL, false, NULL);
        END LOOP;
    END IF;

    RETURN QUERY
    -- The token is compared in the UPDATE's own WHERE clause: a row it does not match is
    -- neither locked nor waited for. RETURNING names the token that matched (the row's
    -- own is cleared), so a task listed twice with two tokens is finished once and its
    -- other entry rejected.
    WITH batch AS (
        SELECT * FROM unnest(finish_tasks.task_ids, finish_tasks.lease_tokens, finish_tasks.results)
                   AS u(task_id, lease_token, result)
    ), done AS (
        UPDATE pgtasks.tasks t
           SET status = 'DONE', result = batch.result, error = NULL, finished_at = now_,
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.lease_token = batch.lease_token AND t.status = 'RUNNING'
        RETURNING t.id, batch.lease_token AS token
    )
    -- NOT EXISTS, not NOT IN: a NULL token must come back rejected (see heartbeat).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.token = batch.lease_token);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.finish_tasks(bigint[], text[], jsonb[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_tasks(bigint[], text[], jsonb[]) IS
    'Finishes many running attempts in one statement (parallel arrays of ids, lease tokens and results); returns the ids it did not finish (stale token, or result over the limit, which fails that task).';

-- "Results in, work out" in one round trip: finishes the batch exactly like finish_tasks,
-- then claims exactly like claim_tasks. Rejected finishes come first, as rows with only
-- rejected_task_id set; then the claimed tasks in claim order, with rejected_task_id NULL.
--
-- When nothing needs two statements, the tasks are picked first (pick_ready) and one
-- UPDATE moves the finished ones RUNNING -> DONE and the picked ones PENDING/COMMIT ->
-- RUNNING, each row getting exactly the columns finish_tasks or claim_tasks would give it
-- (a claimed row its new lease token, a finished one none).
-- Every UPDATE statement on pgtasks.tasks pays a fixed cost before its first row:
-- PostgreSQL parses the stored expressions of the table's CHECK constraints and of its
-- transition triggers' WHEN clauses once per statement, and runs its AFTER statement
-- triggers once per statement (perf on a backend draining with claim_max 10: stringToNode
-- alone 15 % of its time). At the batches a worker sends at concurrency 10 that fixed cost is most of the
-- call; one UPDATE instead of two measured 0.805 of the server CPU per task and 1.195x the
-- tasks/s at claim_max 10, 0.984 and 1.014x at claim_max 100 (bench.claim_ab).
--
-- The two-statement path (finish_tasks, then claim_tasks) remains for the calls that need
-- it:
--   * claim_max 0 (nothing to claim);
--   * a result over settings.max_result_bytes, or one clients could not decode
--     (finish_tasks fails that task alone);
--   * a finished task with dependents (has_dependents, or listed in unsettled_edges): its
--     children are released by the finish statement's trigger (settle_children) and must be
--     claimable by this same call (the chain hand-off of a workflow);
--   * flow control in use: claim_limited counts running tasks, and must see this call's
--     finishes as no longer running.
-- The claim arguments are checked before anything is finished, so a bad one fails the
-- whole call before it writes.
--
-- Lock order: the picked tasks are locked (SKIP LOCKED, so never waited for) before the
-- finished ones, which only this worker's lease keeper or a cancel would also lock.
CREATE FUNCTION pgtasks.finish_and_claim(
    worker_id    text,
    task_ids     bigint[],
    lease_tokens text[],
    results      jsonb[],
    claim_max    integer  DEFAULT 0,
    queues       text[]   DEFAULT NULL,
    lease        interval DEFAULT NULL,
    task_types   text[]   DEFAULT NULL
) RETURNS TABLE (
    rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer,
    attempt integer, retry_count integer, max_retries integer,
    timeout interval, deadline timestamptz, has_steps boolean, lease_token text,
    soft_deadline timestamptz,
    traceparent text, tracestate text
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    picked bigint[];
    lease_for interval;
    seed bytea;
    v pgtasks.worker_version_set;
BEGIN
    IF claim_max IS NULL OR claim_max < 0 THEN
        RAISE EXCEPTION 'pgtasks: claim_max must be 0 or more, got %', coalesce(claim_max::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Pass the number of free slots; 0 only finishes the batch.';
    END IF;
    PERFORM pgtasks.check_worker_id(worker_id);
    lease_for := pgtasks.lease_or_default(lease);

    -- The two-statement path, for the calls listed above this function.
    IF claim_max = 0
       OR EXISTS (SELECT 1 FROM (SELECT x.result, octet_length(x.result::text) AS size_bytes
                                   FROM unnest(finish_and_claim.results) AS x(result)
                                  WHERE x.result IS NOT NULL OFFSET 0) u,
                                pgtasks.settings s
                   WHERE u.size_bytes > s.max_result_bytes
                      OR (u.size_bytes > 202 AND pgtasks.json_shape_error(u.result, u.size_bytes) IS NOT NULL))
       OR EXISTS (SELECT 1 FROM pgtasks.tasks t
                   WHERE t.id = ANY (finish_and_claim.task_ids) AND t.has_dependents)
       OR EXISTS (SELECT 1 FROM pgtasks.unsettled_edges u WHERE u.parent_id = ANY (finish_and_claim.task_ids))
       OR pgtasks.flow_control_in_use(queues) THEN
        RETURN QUERY
        SELECT f.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
               NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean,
               NULL::text, NULL::timestamptz, NULL::text, NULL::text
          FROM pgtasks.finish_tasks(task_ids, lease_tokens, results) f;
        IF claim_max > 0 THEN
            RETURN QUERY
            SELECT NULL::bigint, c.* FROM pgtasks.claim_tasks(worker_id, queues, claim_max, lease, task_types) c;
        END IF;
        RETURN;
    END IF;

    -- One statement. finish_tasks checked the arrays itself; here they are checked before
    -- anything is written, with the same message.
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, lease_tokens, results, with_results => true);

    v := pgtasks.worker_versions(worker_id);
    picked := pgtasks.pick_ready(queues, claim_max, task_types, v.served);
    -- Claimed rows get their tokens as claim_tasks draws them (see there).
    IF picked IS NOT NULL THEN
        seed := uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());
    END IF;

    -- Finishing rows carry their lease token (a stale one matches nothing, is neither
    -- locked nor waited for, and comes back rejected, a NULL one too); picked rows are
    -- ours, locked above. A task can be in both only if it went back to PENDING/COMMIT
    -- since its attempt: then the claim takes it and the finish is rejected, as with two
    -- statements.
    RETURN QUERY
    WITH work AS (
        SELECT u.task_id, u.lease_token, u.result, true AS finishing
          FROM unnest(finish_and_claim.task_ids, finish_and_claim.lease_tokens, finish_and_claim.results)
                 AS u(task_id, lease_token, result)
        UNION ALL
        SELECT p.id, NULL::text, NULL::jsonb, false FROM unnest(picked) AS p(id)
    ), changed AS (
        UPDATE pgtasks.tasks t
           SET status = CASE WHEN w.finishing THEN 'DONE' ELSE 'RUNNING' END::pgtasks.status,
               result = w.result,
               error = CASE WHEN w.finishing THEN NULL ELSE t.error END,
               finished_at = CASE WHEN w.finishing THEN now_ END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, now_) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE now_ + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(now_ + lease_for, now_ + t.timeout) END,
               lease_token = CASE WHEN w.finishing THEN NULL
                                  ELSE encode(sha256(seed || int8send(t.id)), 'hex') END,
               code_version = CASE WHEN w.finishing THEN t.code_version
                                   ELSE coalesce(t.code_version,
                                                 v.run_versions[array_position(v.run_types, t.task_type)]) END,
               progress_current = CASE WHEN w.finishing THEN coalesce(t.progress_total, t.progress_current)
                                       ELSE t.progress_current END
          FROM work w
         WHERE t.id = w.task_id
           AND (NOT w.finishing OR (t.lease_token = w.lease_token AND t.status = 'RUNNING'))
        RETURNING w.finishing, w.lease_token AS given_token, t.id, t.task_type, t.params, t.queue,
                  t.priority, t.attempt, t.retry_count, t.max_retries, t.timeout, t.deadline,
                  NOT w.finishing AND t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at, t.lease_token,
                  CASE WHEN NOT w.finishing THEN now_ + t.soft_timeout END AS soft_deadline,
                  t.traceparent, t.tracestate
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean,
           NULL::text, NULL::timestamptz, NULL::text, NULL::text
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.given_token = w.lease_token)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline, c.traceparent,
               c.tracestate
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.finish_and_claim(text, bigint[], text[], jsonb[], integer, text[], interval, text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_and_claim(text, bigint[], text[], jsonb[], integer, text[], interval, text[]) IS
    'Finishes a batch like finish_tasks and claims up to claim_max tasks like claim_tasks, in one round trip: rejected finishes first (only rejected_task_id set), then the claimed tasks in claim order, each with its lease_token, soft_deadline, traceparent and tracestate.';

------------------------------------------------------------------------------------------
-- Failures

-- Records a failed attempt. Retryable and retries left: back to COMMIT after the task's
-- backoff (or the caller's retry_delay, bounded like a run_at); otherwise FAILED. Returns
-- the new status. The error and traceback are clipped to settings.max_log_bytes
-- (clip_text, 02_checks.sql) rather than refused: the attempt has ended either way.
CREATE FUNCTION pgtasks.fail_task(
    task_id     bigint,
    lease_token text,
    error       text,
    traceback   text     DEFAULT NULL,
    retryable   boolean  DEFAULT true,
    retry_delay interval DEFAULT NULL       -- exact delay (Retry(delay=...)); else backoff
) RETURNS pgtasks.status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t       pgtasks.tasks;
    longest integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    -- run_at becomes pgtasks.now() + retry_delay: the same 100-year bound as a submit's run_at.
    IF retry_delay IS NOT NULL
       AND NOT (retry_delay >= interval '0' AND retry_delay <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: retry_delay must be between 0 and 100 years, got %', retry_delay
            USING ERRCODE = 'PT119', HINT = 'Leave retry_delay out (NULL) for the task''s backoff.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    -- Only text over the limit pays for clip_text (a call with its own settings): measured
    -- with the calls unconditional, a short failure cost ~7 % more than without them.
    IF length(fail_task.error) > longest THEN
        fail_task.error := pgtasks.clip_text(fail_task.error, longest);
    END IF;
    IF length(fail_task.traceback) > longest THEN
        fail_task.traceback := pgtasks.clip_text(fail_task.traceback, longest);
    END IF;
    RETURN pgtasks.record_failure(t, coalesce(nullif(fail_task.error, ''), 'unknown error'),
                                  fail_task.traceback, coalesce(retryable, true), retry_delay);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.fail_task(bigint, text, text, text, boolean, interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.fail_task(bigint, text, text, text, boolean, interval) IS
    'Records a failed attempt: back to COMMIT after the backoff (or retry_delay) while retryable and retries are left, else FAILED. Returns the new status.';

-- Shared by fail_task, finish_tasks (oversized results) and rescue: writes the attempt's
-- error to task_errors, then moves the task on. The backoff comes from the row's own
-- backoff_base, so every path retries after the same delay as the type's policy says.
CREATE FUNCTION pgtasks.record_failure(
    t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval
) RETURNS pgtasks.status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    next_status pgtasks.status;
BEGIN
    INSERT INTO pgtasks.task_errors (task_id, attempt, error, traceback)
    VALUES (t.id, t.attempt, error, traceback)
    ON CONFLICT ON CONSTRAINT task_errors_pkey DO NOTHING;

    IF retryable AND t.retry_count < t.max_retries THEN
        next_status := 'COMMIT';
        UPDATE pgtasks.tasks
           SET status = 'COMMIT', retry_count = retry_count + 1, error = record_failure.error,
               run_at = pgtasks.now() + coalesce(retry_delay, pgtasks.backoff(t.retry_count + 1, t.backoff_base)),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
         WHERE id = t.id;
    ELSE
        next_status := 'FAILED';
        UPDATE pgtasks.tasks
           SET status = 'FAILED', error = record_failure.error, finished_at = pgtasks.now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
         WHERE id = t.id;
    END IF;
    RETURN next_status;
END $$;

------------------------------------------------------------------------------------------
-- Yielding and durable progress inside a running task

-- Hands a running task back without using a retry: sleep_until (run_at in the future) or a
-- graceful shutdown (run_at now, which wakes a worker). Its checkpoints stay, so the next
-- claim resumes from them.
CREATE FUNCTION pgtasks.yield_task(task_id bigint, lease_token text, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    t := pgtasks.lock_owned_task(task_id, lease_token);
    UPDATE pgtasks.tasks k
       SET status = 'COMMIT', run_at = coalesce(yield_task.run_at, pgtasks.now()),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE k.id = yield_task.task_id;
    IF yield_task.run_at IS NULL OR yield_task.run_at <= pgtasks.now() THEN
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(t.queue));
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.yield_task(bigint, text, timestamptz) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.yield_task(bigint, text, timestamptz) IS
    'Hands a running attempt back without using a retry: RUNNING -> COMMIT, claimable again at run_at (now: a graceful shutdown). Its checkpoints stay.';

-- Snooze: "not now, later", without a failure. RUNNING -> COMMIT, claimable again after
-- `delay` (0: at once, and a worker is woken), with no retry spent and the checkpoints
-- kept. Each snooze is recorded in task_pauses, which the history shows. A task that has
-- already snoozed settings.max_snoozes times is FAILED instead (not retryable: the same
-- code would snooze again), with an error that says so: an endless snooze loop ends.
-- Returns the new status, COMMIT or FAILED.
CREATE FUNCTION pgtasks.snooze_task(task_id bigint, lease_token text, delay interval DEFAULT interval '0')
RETURNS pgtasks.status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
    cap integer := (SELECT s.max_snoozes FROM pgtasks.settings s);
    taken bigint;
    wake timestamptz;
BEGIN
    IF delay IS NULL OR NOT (delay >= interval '0' AND delay <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: snooze delay must be between 0 and 1 year, got %', coalesce(delay::text, 'NULL')
            USING ERRCODE = 'PT127', HINT = 'For example delay => interval ''60 seconds''.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    SELECT count(*) INTO taken FROM pgtasks.task_pauses p
     WHERE p.task_id = snooze_task.task_id AND p.kind = 'snooze';
    IF taken >= cap THEN
        RETURN pgtasks.record_failure(
            t, pg_catalog.format('pgtasks: task snoozed %s times, the most settings.max_snoozes (%s) allows; '
                                 'raise it with pgtasks.configure(max_snoozes => ...) if the task is meant to wait longer',
                                 taken, cap),
            NULL, false, NULL);
    END IF;
    wake := pgtasks.now() + delay;
    INSERT INTO pgtasks.task_pauses (task_id, attempt, kind, until, at)
    VALUES (t.id, t.attempt, 'snooze', wake, pgtasks.now());
    UPDATE pgtasks.tasks k
       SET status = 'COMMIT', run_at = wake,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE k.id = t.id;
    IF delay = interval '0' THEN
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(t.queue));
    END IF;
    RETURN 'COMMIT';
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.snooze_task(bigint, text, interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.snooze_task(bigint, text, interval) IS
    'Puts a running attempt''s task back for delay without spending a retry (RUNNING -> COMMIT, checkpoints kept, recorded as a snooze); FAILED instead once the task snoozed settings.max_snoozes times. Returns the new status.';

-- Event names: what send_event and wait_for_event match on (PT126).
CREATE FUNCTION pgtasks.check_event_name(name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
BEGIN
    IF pgtasks.is_blank(name) OR octet_length(name) > 255 THEN
        RAISE EXCEPTION 'pgtasks: event name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT126', HINT = 'Name the event, e.g. wait_for_event(''approved'', ...).';
    END IF;
END $$;

-- Waits for an event, holding nothing. One call, three answers:
--   * 'received': the event is in event_inbox (sent before or during the wait); its
--     payload comes back and the attempt goes on running;
--   * 'timeout': an earlier wait for this name ran out (its wait_until passed) and no
--     event came; the attempt goes on running and decides (Python raises EventTimeout);
--   * 'waiting': none of the two. The wait is recorded (the first wait fixes wait_until:
--     now + timeout, or 100 years out when timeout is NULL) and the attempt ends: RUNNING
--     -> COMMIT with run_at = wait_until, no retry spent, checkpoints kept, no lease. The
--     worker forgets the task; send_event (or the timeout) makes it claimable again, and
--     the task's code, run again from the top, calls wait_for_event once more and gets
--     'received' or 'timeout'.
-- A lost attempt (stale token) gets PT002 and changes nothing, as every fenced call.
CREATE FUNCTION pgtasks.wait_for_event(task_id bigint, lease_token text, name text, timeout interval DEFAULT NULL)
RETURNS TABLE (state text, payload jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
    e pgtasks.event_inbox;
    now_ timestamptz := pgtasks.now();
BEGIN
    PERFORM pgtasks.check_event_name(name);
    IF timeout IS NOT NULL AND NOT (timeout > interval '0' AND timeout <= interval '1 year') THEN
        RAISE EXCEPTION 'pgtasks: event timeout must be positive and at most 1 year, got %', timeout
            USING ERRCODE = 'PT127', HINT = 'For example timeout => interval ''1 hour''; NULL waits without one.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    -- The task's row lock (above) orders this with send_event, which locks it too.
    SELECT * INTO e FROM pgtasks.event_inbox i
     WHERE i.task_id = wait_for_event.task_id AND i.name = wait_for_event.name;
    IF FOUND AND e.sent_at IS NOT NULL THEN
        RETURN QUERY SELECT 'received'::text, e.payload;
        RETURN;
    END IF;
    IF FOUND AND e.wait_until <= now_ THEN
        RETURN QUERY SELECT 'timeout'::text, NULL::jsonb;
        RETURN;
    END IF;
    IF NOT FOUND THEN
        e.wait_until := now_ + coalesce(timeout, interval '100 years');
        INSERT INTO pgtasks.event_inbox (task_id, name, waited_at, wait_until)
        VALUES (t.id, wait_for_event.name, now_, e.wait_until);
    END IF;
    INSERT INTO pgtasks.task_pauses (task_id, attempt, kind, event_name, until, at)
    VALUES (t.id, t.attempt, 'event', wait_for_event.name, e.wait_until, now_);
    UPDATE pgtasks.tasks k
       SET status = 'COMMIT', run_at = e.wait_until,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE k.id = t.id;
    RETURN QUERY SELECT 'waiting'::text, NULL::jsonb;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.wait_for_event(bigint, text, text, interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.wait_for_event(bigint, text, text, interval) IS
    'Waits for the named event: returns (received, payload) when it was sent, (timeout, NULL) when an earlier wait ran out, else ends the attempt without spending a retry ((waiting, NULL): RUNNING -> COMMIT until the event or the timeout).';

-- Stores a step's result; a resumed attempt reads it instead of running the step again.
-- Step names are bounded like other names (PT109), step results like results (PT203).
CREATE FUNCTION pgtasks.checkpoint(task_id bigint, lease_token text, step text, result jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    IF pgtasks.is_blank(step) OR octet_length(step) > 255 THEN
        RAISE EXCEPTION 'pgtasks: step name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT109', HINT = 'Name each step, e.g. ctx.step(''download'', ...).';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    PERFORM pgtasks.check_result_size(result, pg_catalog.format('result of step %s', step));
    PERFORM pgtasks.keep_durable();
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (task_id, step, result, t.attempt)
    ON CONFLICT ON CONSTRAINT task_steps_pkey DO UPDATE SET result = excluded.result, attempt = excluded.attempt,
                                              at = pgtasks.now();
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.checkpoint(bigint, text, text, jsonb) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.checkpoint(bigint, text, text, jsonb) IS
    'Stores the result of a named step of a running attempt; a resumed attempt reads it (task_steps_of) instead of running the step again.';

-- A resumed attempt's completed steps, read through the fence: a worker that lost the
-- task gets PT002 instead of steps it must not act on. db_now lets the worker relate its
-- clock to the database's (sleep_until deadlines are database time).
CREATE FUNCTION pgtasks.task_steps_of(task_id bigint, lease_token text)
RETURNS TABLE (name text, result jsonb, db_now timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    RETURN QUERY
    SELECT s.name, s.result, pgtasks.now() FROM pgtasks.task_steps s
     WHERE s.task_id = task_steps_of.task_id
     ORDER BY s.at, s.name;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.task_steps_of(bigint, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.task_steps_of(bigint, text) IS
    'The completed steps of a running attempt''s task (name, result), read through the fence, with the database''s pgtasks.now().';

-- Progress of a running attempt; the message is bounded like a log line (PT204).
CREATE FUNCTION pgtasks.report_progress(
    task_id bigint, lease_token text, current bigint, total bigint DEFAULT NULL, message text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
BEGIN
    IF current IS NULL OR current < 0 OR (total IS NOT NULL AND (total < 0 OR current > total)) THEN
        RAISE EXCEPTION 'pgtasks: progress % of % is out of bounds', current, total
            USING ERRCODE = 'PT110', HINT = 'Use 0 <= current <= total.';
    END IF;
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    PERFORM pgtasks.check_log_size(message, 'progress message');
    UPDATE pgtasks.tasks t
       SET progress_current = current, progress_total = total,
           progress_message = coalesce(message, t.progress_message)
     WHERE t.id = report_progress.task_id;
    PERFORM pgtasks.notify_watchers(task_id);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.report_progress(bigint, text, bigint, bigint, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.report_progress(bigint, text, bigint, bigint, text) IS
    'Sets the progress (current of total, message) of a running attempt; live watchers are notified.';

-- One log line (PT204 when over settings.max_log_bytes, PT124 for a blank level).
CREATE FUNCTION pgtasks.log(task_id bigint, lease_token text, level text, message text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_owned_task(task_id, lease_token);
    PERFORM pgtasks.check_log_size(message, 'log line');
    PERFORM pgtasks.check_log_size(level, 'log level');
    PERFORM pgtasks.check_log_lines(ARRAY[level], NULL, NULL);
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message)
    VALUES (task_id, t.attempt, upper(coalesce(level, 'INFO')), coalesce(message, ''));
    PERFORM pgtasks.notify_watchers(task_id);
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.log(bigint, text, text, text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.log(bigint, text, text, text) IS
    'Appends one log line to a running attempt''s task.';

-- Many log lines of one attempt in one round trip: workers buffer a task's lines (ctx.log
-- and Python `logging`) and write them here in batches. Lines get ids in array order, so
-- id order is logging order. `ats` carries when each line was logged (worker clock);
-- `loggers` the Python logger names. Returns the count. One line over the limit rejects
-- the whole call with PT204 and writes nothing, rather than truncating: the caller knows
-- which line and can shorten it; a silently cut line could hide the part that mattered.
-- So does a blank level or logger (PT124) or a time more than 100 years from now (PT105).
CREATE FUNCTION pgtasks.log_many(
    task_id     bigint,
    lease_token text,
    levels   text[],
    messages text[],
    ats      timestamptz[] DEFAULT NULL,   -- NULL: now
    loggers  text[]        DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    n integer := coalesce(cardinality(messages), 0);
    longest bigint;
    t pgtasks.tasks;
BEGIN
    IF coalesce(cardinality(levels), 0) <> n
       OR (ats IS NOT NULL AND cardinality(ats) <> n)
       OR (loggers IS NOT NULL AND cardinality(loggers) <> n) THEN
        RAISE EXCEPTION 'pgtasks: log_many needs arrays of one length (% messages, % levels, % ats, % loggers)',
                n, coalesce(cardinality(levels), 0), cardinality(ats), cardinality(loggers)
            USING ERRCODE = 'PT111', HINT = 'Pass one level (and at, logger) per message, or NULL for ats/loggers.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pgtasks.check_log_lines(levels, loggers, ats);
    SELECT max(greatest(octet_length(m), octet_length(l), octet_length(g))) INTO longest
      FROM unnest(log_many.messages, log_many.levels, log_many.loggers) AS u(m, l, g);
    IF longest > (SELECT s.max_log_bytes FROM pgtasks.settings s) THEN
        RAISE EXCEPTION 'pgtasks: a log line of % bytes is larger than max_log_bytes (%)',
                longest, (SELECT s.max_log_bytes FROM pgtasks.settings s)
            USING ERRCODE = 'PT204',
                  HINT = 'Nothing of this batch was written. Log less per line, or raise the limit: '
                         'SELECT pgtasks.configure(max_log_bytes => ...).';
    END IF;
    INSERT INTO pgtasks.task_logs (task_id, attempt, level, message, logger, at)
    SELECT log_many.task_id, t.attempt, upper(coalesce(u.level, 'INFO')), coalesce(u.message, ''),
           log_many.loggers[u.ord], coalesce(log_many.ats[u.ord], clock_timestamp())
      FROM unnest(log_many.levels, log_many.messages) WITH ORDINALITY AS u(level, message, ord)
     ORDER BY u.ord;
    PERFORM pgtasks.notify_watchers(task_id);
    RETURN n;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.log_many(bigint, text, text[], text[], timestamptz[], text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.log_many(bigint, text, text[], text[], timestamptz[], text[]) IS
    'Appends many log lines (parallel arrays of levels, messages, optional times and logger names) to a running attempt''s task in one call; returns how many.';

------------------------------------------------------------------------------------------
-- Operator actions

-- Cancels a task that has not finished; returns the status it had. A running task's
-- worker is told on pgtasks_cancel with the task id as payload. Any role may send that
-- notification, so it is only a hint: a worker that holds the task asks the database
-- (one heartbeat of its tokens) whether it still does, and stops it only if not. Fencing
-- rejects whatever the cancelled attempt writes after.
CREATE FUNCTION pgtasks.cancel_task(task_id bigint) RETURNS pgtasks.status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    t := pgtasks.lock_task(task_id);
    IF t.status IN ('DONE', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % already finished as %; nothing to cancel', task_id, t.status
            USING ERRCODE = 'PT004', HINT = 'Use retry_task() to run a FAILED or CANCELLED task again.';
    END IF;
    UPDATE pgtasks.tasks
       SET status = 'CANCELLED', finished_at = pgtasks.now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL
     WHERE id = t.id;
    IF t.status = 'RUNNING' THEN
        -- A hint to its worker, which confirms it with a heartbeat before stopping the task.
        PERFORM pg_notify('pgtasks_cancel', t.id::text);
    END IF;
    RETURN t.status;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.cancel_task(bigint) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.cancel_task(bigint) IS
    'Cancels a task that has not finished (its worker is notified if it runs) and returns the status it had; PT004 when it already finished.';

-- Runs a FAILED or CANCELLED task again from PENDING (or WAITING, while parents are
-- unfinished), with its retries reset. Waits for events that never came are forgotten
-- (their event_inbox rows without an event), so the retried task waits afresh with its
-- own timeout instead of meeting the old one's EventTimeout at once; events that did
-- arrive are kept, and the retried task finds them. A unique key held meanwhile by another active task
-- is PT306 (raise_unique_held): checked first so the common case costs one index probe
-- and no subtransaction, and caught again from the unique index when a concurrent submit
-- wins between the probe and the UPDATE.
CREATE FUNCTION pgtasks.retry_task(task_id bigint, run_at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t pgtasks.tasks;
BEGIN
    PERFORM pgtasks.check_run_at(run_at);
    t := pgtasks.lock_task(task_id);
    IF t.status NOT IN ('FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % is %; only FAILED or CANCELLED tasks can be retried', task_id, t.status
            USING ERRCODE = 'PT001', HINT = 'Wait for it to finish, or cancel it first.';
    END IF;
    -- Checked first so the common case costs one index probe and no subtransaction. A
    -- concurrent submit of the key can still win between this probe and the UPDATE; the
    -- unique index then refuses the UPDATE, caught below and given the same code.
    IF t.unique_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM pgtasks.tasks o
         WHERE o.task_type = t.task_type AND o.unique_key = t.unique_key
           AND o.status IN ('PENDING', 'COMMIT', 'RUNNING') AND o.id <> t.id) THEN
        PERFORM pgtasks.raise_unique_held(t);
    END IF;
    BEGIN
        UPDATE pgtasks.tasks
           SET status = 'PENDING', retry_count = 0, finished_at = NULL, result = NULL,
               run_at = coalesce(retry_task.run_at, pgtasks.now())
         WHERE id = t.id;
    EXCEPTION WHEN unique_violation THEN
        PERFORM pgtasks.raise_unique_held(t);
    END;
    DELETE FROM pgtasks.event_inbox i WHERE i.task_id = t.id AND i.sent_at IS NULL;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.retry_task(bigint, timestamptz) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.retry_task(bigint, timestamptz) IS
    'Runs a FAILED or CANCELLED task again: back to PENDING at run_at with its retries reset.';

-- Delivers an event to a task. Kept in event_inbox whatever the task is doing, so an event
-- sent before the task waits is not lost; when the task is parked waiting for this very
-- event (COMMIT, run_at = the wait's wait_until), it becomes claimable now and a worker of
-- its queue is woken. Returns true when the event was stored, false when an event of
-- this name was already delivered to the task (the first is kept: a retried webhook
-- changes nothing). PT003 for a task that does not exist, PT128 for one that finished,
-- PT126 for a bad name, PT203/PT123 for a payload over settings.max_result_bytes or one
-- clients cannot decode.
--
-- An event resumes a task and hands it data its code acts on (an approval, say), so it
-- is an operator's write to that task: granted to pgtasks_admin, which may already
-- cancel or retry any task, and to no submitter (who could otherwise approve anybody's
-- task). docs/security.md says how to let an application send only its own events.
CREATE FUNCTION pgtasks.send_event(task_id bigint, name text, payload jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    t pgtasks.tasks;
    e pgtasks.event_inbox;
    now_ timestamptz := pgtasks.now();
BEGIN
    PERFORM pgtasks.check_event_name(name);
    PERFORM pgtasks.check_result_size(payload, 'event payload');
    t := pgtasks.lock_task(task_id);
    IF t.status IN ('DONE', 'FAILED', 'CANCELLED') THEN
        RAISE EXCEPTION 'pgtasks: task % already finished as %; it waits for no event', task_id, t.status
            USING ERRCODE = 'PT128', HINT = 'Send events to a task before it ends; retry_task() runs it again.';
    END IF;
    INSERT INTO pgtasks.event_inbox AS i (task_id, name, payload, sent_at, sent_by)
    VALUES (t.id, send_event.name, send_event.payload, now_, session_user)
    ON CONFLICT ON CONSTRAINT event_inbox_pkey DO UPDATE
       SET payload = excluded.payload, sent_at = excluded.sent_at, sent_by = excluded.sent_by
     WHERE i.sent_at IS NULL
    RETURNING * INTO e;
    IF NOT FOUND THEN
        RETURN false;                     -- delivered before: the first event is kept
    END IF;
    IF t.status = 'COMMIT' AND e.wait_until IS NOT NULL AND t.run_at = e.wait_until AND t.run_at > now_ THEN
        UPDATE pgtasks.tasks k SET run_at = now_ WHERE k.id = t.id;
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(t.queue));
    END IF;
    RETURN true;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.send_event(bigint, text, jsonb) TO pgtasks_admin;
COMMENT ON FUNCTION pgtasks.send_event(bigint, text, jsonb) IS
    'Delivers a named event with its payload to a task, kept until the task waits for it; a task parked waiting for it is claimable at once. Returns false when an event of that name was already delivered (the first is kept). PT128 for a finished task.';
