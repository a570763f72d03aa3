-- pgtasks 0028: lease tokens and opaque wake-ups.
--
--   1. Every claim draws a secret lease token (tasks.lease_token: sha256 of a 244-bit
--      random seed and the task id, in hex), returns it to its claimer only, and every
--      fenced function takes it in place of the
--      attempt number, which task_overview shows to every submitter. The attempt-only
--      signatures are dropped, so no call accepts a guess. The token is compared in the
--      locking statement itself, so a wrong one locks nothing; fenced functions run with
--      lock_timeout = 1s; heartbeat skips a row another session keeps locked.
--   2. parent_results takes the child's lease token and is the worker's alone.
--   3. Notifications name nothing: pgtasks_wakeup carries queue_tag(queue) (a keyed hash,
--      the key in the new owner-only table wakeup_key), pgtasks_cancel the bare task id.
--
-- Workers of earlier releases cannot go on with this schema: their fenced calls no longer
-- exist (the DROP FUNCTIONs below are the point of the change). Start the new workers as
-- soon as it has run. A task RUNNING at the migration gets a token its worker never sees,
-- so it is rescued once its lease runs out, as if its worker had died. 0029 validates
-- running_has_lease, added here NOT VALID (new rows are checked at once).
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

-- tables
ALTER TABLE pgtasks.tasks ADD COLUMN lease_token text;
UPDATE pgtasks.tasks SET lease_token = encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'hex')
 WHERE status = 'RUNNING';
-- The constraint is replaced in the same statement by a stricter one: the lease token
-- belongs to a running task and to no other.
-- squawk-ignore ban-drop-constraint
ALTER TABLE pgtasks.tasks DROP CONSTRAINT running_has_lease,
    ADD CONSTRAINT running_has_lease CHECK (CASE WHEN status = 'RUNNING'
        THEN worker_id IS NOT NULL AND lease_expires_at IS NOT NULL AND deadline IS NOT NULL
             AND lease_token IS NOT NULL
        ELSE worker_id IS NULL AND lease_expires_at IS NULL AND deadline IS NULL
             AND lease_token IS NULL END) NOT VALID;
CREATE TABLE pgtasks.wakeup_key (
    key      bytea NOT NULL DEFAULT (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO pgtasks.wakeup_key DEFAULT VALUES;

-- claim_tasks returns one column more, which CREATE OR REPLACE cannot change; it is made
-- again below in this transaction, so no caller sees it missing.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]);
-- The attempt-only signatures: each accepted the public attempt number as its fence.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.check_batch(text,bigint[],integer[],jsonb[],boolean);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.checkpoint(bigint,integer,text,jsonb);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.fail_task(bigint,integer,text,text,boolean,interval);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.finish_and_claim(text,bigint[],integer[],jsonb[],integer,text[],interval,text[]);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.finish_task(bigint,integer,jsonb);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.finish_tasks(bigint[],integer[],jsonb[]);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.heartbeat(text,bigint[],integer[],interval);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.lock_owned_task(bigint,integer);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.log(bigint,integer,text,text);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.log_many(bigint,integer,text[],text[],timestamp with time zone[],text[]);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.parent_results(bigint);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.report_progress(bigint,integer,bigint,bigint,text);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.task_steps_of(bigint,integer);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.yield_task(bigint,integer,timestamp with time zone);

CREATE OR REPLACE FUNCTION pgtasks.cancel_task(task_id bigint)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.cancel_workflow(workflow_id bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.check_batch(what text, task_ids bigint[], lease_tokens text[], results jsonb[] DEFAULT NULL::jsonb[], with_results boolean DEFAULT false)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF coalesce(cardinality(task_ids), 0) <> coalesce(cardinality(lease_tokens), 0)
       OR (with_results AND coalesce(cardinality(task_ids), 0) <> coalesce(cardinality(results), 0)) THEN
        RAISE EXCEPTION 'pgtasks: % needs arrays of one length (% task_ids, % lease_tokens%)', what,
                coalesce(cardinality(task_ids), 0), coalesce(cardinality(lease_tokens), 0),
                CASE WHEN with_results THEN pg_catalog.format(', %s results', coalesce(cardinality(results), 0)) ELSE '' END
            USING ERRCODE = 'PT116', HINT = 'Pass one lease token (and result) per task id, in the same order.';
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.checkpoint(task_id bigint, lease_token text, step text, result jsonb DEFAULT NULL::jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    t pgtasks.tasks;
BEGIN
    IF pgtasks.is_blank(step) OR octet_length(step) > 255 THEN
        RAISE EXCEPTION 'pgtasks: step name must be a non-blank string of at most 255 bytes'
            USING ERRCODE = 'PT109', HINT = 'Name each step, e.g. ctx.step(''download'', ...).';
    END IF;
    t := pgtasks.lock_owned_task(task_id, lease_token);
    PERFORM pgtasks.check_result_size(result, pg_catalog.format('result of step %s', step));
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (task_id, step, result, t.attempt)
    ON CONFLICT ON CONSTRAINT task_steps_pkey DO UPDATE SET result = excluded.result, attempt = excluded.attempt,
                                              at = pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    picked bigint[];
    lease_for interval;
    started timestamptz := pgtasks.now();
    seed bytea;
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    -- NULL must not mean "no LIMIT": claim_tasks(max_tasks => NULL) would take every ready task.
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'pgtasks: max_tasks must be 1 or more, got %', coalesce(max_tasks::text, 'NULL')
            USING ERRCODE = 'PT115', HINT = 'Claim as many tasks as the worker has free slots.';
    END IF;
    lease_for := pgtasks.lease_or_default(lease);

    IF pgtasks.flow_control_in_use(queues) THEN
        SELECT l.picked, l.started INTO picked, started
          FROM pgtasks.claim_limited(queues, max_tasks, task_types) l;
        IF cardinality(picked) = 0 THEN
            picked := NULL;
        END IF;
    ELSE
        picked := pgtasks.pick_ready(queues, max_tasks, task_types);
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
               deadline = pgtasks.now() + t.timeout,
               lease_expires_at = least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout),
               lease_token = encode(sha256(seed || int8send(t.id)), 'hex')
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at, t.lease_token
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.configure_queue(queue text, max_running integer DEFAULT NULL::integer, rate_limit integer DEFAULT NULL::integer, rate_period interval DEFAULT '00:00:01'::interval)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    IF max_running IS NOT NULL AND max_running NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'pgtasks: max_running must be between 1 and 1000000, got %', max_running
            USING ERRCODE = 'PT301',
                  HINT = 'Use NULL for no limit; to stop a queue use pgtasks.pause_queue(queue).';
    END IF;
    IF (rate_limit IS NOT NULL AND rate_limit NOT BETWEEN 1 AND 1000000)
       OR rate_period IS NULL OR NOT (rate_period > interval '0' AND rate_period <= interval '1 day') THEN
        RAISE EXCEPTION 'pgtasks: rate_limit must be between 1 and 1000000 and rate_period in (0, 1 day], got % per %',
                rate_limit, rate_period
            USING ERRCODE = 'PT302',
                  HINT = 'For example rate_limit => 10, rate_period => interval ''1 second''; NULL rate_limit: no limit.';
    END IF;
    INSERT INTO pgtasks.queue_settings AS s (queue, max_running, rate_limit, rate_period)
    VALUES (configure_queue.queue, configure_queue.max_running, configure_queue.rate_limit,
            configure_queue.rate_period)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE
       SET max_running = excluded.max_running, rate_limit = excluded.rate_limit,
           rate_period = excluded.rate_period, updated_at = pgtasks.now();
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    -- Raised limits may free slots at once.
    PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(queue));
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.fail_task(task_id bigint, lease_token text, error text, traceback text DEFAULT NULL::text, retryable boolean DEFAULT true, retry_delay interval DEFAULT NULL::interval)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], lease_tokens text[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    picked bigint[];
    lease_for interval;
    seed bytea;
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
                                   FROM unnest(finish_and_claim.results) AS x(result) OFFSET 0) u,
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
               NULL::text
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

    picked := pgtasks.pick_ready(queues, claim_max, task_types);
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
               finished_at = CASE WHEN w.finishing THEN pgtasks.now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, pgtasks.now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE pgtasks.now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout) END,
               lease_token = CASE WHEN w.finishing THEN NULL
                                  ELSE encode(sha256(seed || int8send(t.id)), 'hex') END,
               progress_current = CASE WHEN w.finishing THEN coalesce(t.progress_total, t.progress_current)
                                       ELSE t.progress_current END
          FROM work w
         WHERE t.id = w.task_id
           AND (NOT w.finishing OR (t.lease_token = w.lease_token AND t.status = 'RUNNING'))
        RETURNING w.finishing, w.lease_token AS given_token, t.id, t.task_type, t.params, t.queue,
                  t.priority, t.attempt, t.retry_count, t.max_retries, t.timeout, t.deadline,
                  NOT w.finishing AND t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at, t.lease_token
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean,
           NULL::text
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.given_token = w.lease_token)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_task(task_id bigint, lease_token text, result jsonb DEFAULT NULL::jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    PERFORM pgtasks.check_result_size(result, 'result');
    UPDATE pgtasks.tasks t
       SET status = 'DONE', result = finish_task.result, finished_at = pgtasks.now(),
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL,
           progress_current = coalesce(t.progress_total, t.progress_current)
     WHERE t.id = finish_task.task_id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_tasks(task_ids bigint[], lease_tokens text[], results jsonb[])
 RETURNS TABLE(rejected_task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    max_bytes integer := (SELECT s.max_result_bytes FROM pgtasks.settings s);
    big bigint[];
    o record;
BEGIN
    PERFORM pgtasks.check_batch('finish_tasks', task_ids, lease_tokens, results, with_results => true);
    -- Sizes first, from the arguments alone: the common batch has no oversized result and
    -- reads no table here.
    SELECT array_agg(u.ord) INTO big
      FROM (SELECT x.result, x.ord, octet_length(x.result::text) AS size_bytes
              FROM unnest(finish_tasks.results) WITH ORDINALITY AS x(result, ord) OFFSET 0) u
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
           SET status = 'DONE', result = batch.result, finished_at = pgtasks.now(),
               worker_id = NULL, lease_expires_at = NULL, deadline = NULL, lease_token = NULL,
               progress_current = coalesce(t.progress_total, t.progress_current)
          FROM batch
         WHERE t.id = batch.task_id AND t.lease_token = batch.lease_token AND t.status = 'RUNNING'
        RETURNING t.id, batch.lease_token AS token
    )
    -- NOT EXISTS, not NOT IN: a NULL token must come back rejected (see heartbeat).
    SELECT batch.task_id FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = batch.task_id AND d.token = batch.lease_token);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.heartbeat(worker_id text, task_ids bigint[], lease_tokens text[], lease interval DEFAULT NULL::interval)
 RETURNS TABLE(lost_task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    lease_for interval;
    lost bigint[];
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    PERFORM pgtasks.check_batch('heartbeat', task_ids, lease_tokens);
    lease_for := pgtasks.lease_or_default(lease);

    UPDATE pgtasks.worker_registry w SET last_seen = pgtasks.now()
     WHERE w.worker_id = heartbeat.worker_id;

    BEGIN
        WITH mine AS (
            SELECT u.task_id, u.lease_token
              FROM unnest(heartbeat.task_ids, heartbeat.lease_tokens) AS u(task_id, lease_token)
        ), extended AS (
            UPDATE pgtasks.tasks t
               SET lease_expires_at = least(pgtasks.now() + lease_for, t.deadline)
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
               SET lease_expires_at = least(pgtasks.now() + lease_for, t.deadline)
             WHERE t.id IN (SELECT f.id FROM free f)
        )
        SELECT array_agg(mine.task_id) INTO lost FROM mine
         WHERE NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                            WHERE t.id = mine.task_id AND t.lease_token = mine.lease_token
                              AND t.status = 'RUNNING' AND t.worker_id = heartbeat.worker_id);
    END;
    RETURN QUERY SELECT u.id FROM unnest(lost) AS u(id);
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.lock_owned_task(task_id bigint, lease_token text)
 RETURNS pgtasks.tasks
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.log(task_id bigint, lease_token text, level text, message text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.log_many(task_id bigint, lease_token text, levels text[], messages text[], ats timestamp with time zone[] DEFAULT NULL::timestamp with time zone[], loggers text[] DEFAULT NULL::text[])
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.parent_results(task_id bigint, lease_token text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.queue_tag(queue text)
 RETURNS text
 LANGUAGE sql
 STABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT coalesce(left(encode(sha256((SELECT k.key FROM pgtasks.wakeup_key k)
                                       || convert_to(queue_tag.queue, 'UTF8')), 'hex'), 8), '')
$function$;
CREATE OR REPLACE FUNCTION pgtasks.record_failure(t pgtasks.tasks, error text, traceback text, retryable boolean, retry_delay interval)
 RETURNS pgtasks.status
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_inserts()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    first_queue text;
    last_queue  text;
    first_id    bigint;
BEGIN
    INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
    SELECT n.id, n.attempt, NULL, n.status FROM new_rows n;

    IF current_setting('pgtasks.wake_workers', true) IS NOT DISTINCT FROM 'off' THEN
        RETURN NULL;
    END IF;
    SELECT min(n.queue), max(n.queue), min(n.id) INTO first_queue, last_queue, first_id
      FROM new_rows n
     WHERE n.run_at <= pgtasks.now() AND n.status IN ('PENDING', 'COMMIT');
    IF first_queue IS NULL THEN
        RETURN NULL;                      -- nothing ready now: a timer or a release wakes
    ELSIF first_queue = last_queue THEN
        IF NOT EXISTS (
               SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                               WHERE t.queue >= first_queue AND t.queue <= first_queue
                                 AND t.status IN ('PENDING', 'COMMIT')
                               ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                               LIMIT 1) head
                WHERE head.run_at <= pgtasks.now() AND head.id < first_id) THEN
            PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(first_queue));
        END IF;
    ELSE
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(q.queue))
           FROM (SELECT n.queue, min(n.id) AS first_id FROM new_rows n
                  WHERE n.run_at <= pgtasks.now() AND n.status IN ('PENDING', 'COMMIT')
                  GROUP BY n.queue) q
          WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT t.id, t.run_at FROM pgtasks.tasks t
                                WHERE t.queue >= q.queue AND t.queue <= q.queue
                                  AND t.status IN ('PENDING', 'COMMIT')
                                ORDER BY t.queue, t.priority DESC, t.run_at, t.id
                                LIMIT 1) head
                 WHERE head.run_at <= pgtasks.now() AND head.id < q.first_id);
    END IF;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.reject_transition()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.release_children(parents bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET enable_nestloop TO 'on'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.report_progress(task_id bigint, lease_token text, current bigint, total bigint DEFAULT NULL::bigint, message text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.resume_queue(queue text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_queue_name(queue);
    UPDATE pgtasks.queue_settings s SET paused = false, updated_at = pgtasks.now()
     WHERE s.queue = resume_queue.queue;
    PERFORM pgtasks.drop_idle_queue_settings(queue);
    PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(queue));
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
        PERFORM pg_notify('pgtasks_wakeup', pgtasks.queue_tag(c.queue));
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.task_steps_of(task_id bigint, lease_token text)
 RETURNS TABLE(name text, result jsonb, db_now timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
BEGIN
    PERFORM pgtasks.lock_owned_task(task_id, lease_token);
    RETURN QUERY
    SELECT s.name, s.result, pgtasks.now() FROM pgtasks.task_steps s
     WHERE s.task_id = task_steps_of.task_id
     ORDER BY s.at, s.name;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.yield_task(task_id bigint, lease_token text, run_at timestamp with time zone DEFAULT now())
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
GRANT EXECUTE ON FUNCTION pgtasks.checkpoint(bigint,text,text,jsonb) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.checkpoint(bigint,text,text,jsonb) IS 'Stores the result of a named step of a running attempt; a resumed attempt reads it (task_steps_of) instead of running the step again.';
COMMENT ON FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]) IS 'Claims up to max_tasks ready tasks of the given queues (NULL: every queue) and task types for worker_id, in claim order (priority, run_at, id), honouring queue limits, pauses and concurrency keys. Each row''s lease_token is the secret the task''s later calls must present.';
GRANT EXECUTE ON FUNCTION pgtasks.fail_task(bigint,text,text,text,boolean,interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.fail_task(bigint,text,text,text,boolean,interval) IS 'Records a failed attempt: back to COMMIT after the backoff (or retry_delay) while retryable and retries are left, else FAILED. Returns the new status.';
GRANT EXECUTE ON FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]) IS 'Finishes a batch like finish_tasks and claims up to claim_max tasks like claim_tasks, in one round trip: rejected finishes first (only rejected_task_id set), then the claimed tasks in claim order, each with its lease_token.';
GRANT EXECUTE ON FUNCTION pgtasks.finish_task(bigint,text,jsonb) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_task(bigint,text,jsonb) IS 'Finishes a running attempt with its result: RUNNING -> DONE. PT002 when the lease token no longer holds the task, PT203 when the result is over settings.max_result_bytes.';
GRANT EXECUTE ON FUNCTION pgtasks.finish_tasks(bigint[],text[],jsonb[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_tasks(bigint[],text[],jsonb[]) IS 'Finishes many running attempts in one statement (parallel arrays of ids, lease tokens and results); returns the ids it did not finish (stale token, or result over the limit, which fails that task).';
GRANT EXECUTE ON FUNCTION pgtasks.heartbeat(text,bigint[],text[],interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.heartbeat(text,bigint[],text[],interval) IS 'Extends the leases of a worker''s running tasks (parallel arrays of ids and lease tokens; never past their deadlines) and returns the ids of the tasks it no longer holds, which the worker must stop. A task another session keeps locked is neither extended nor returned. lease NULL means settings.default_lease.';
GRANT EXECUTE ON FUNCTION pgtasks.log(bigint,text,text,text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.log(bigint,text,text,text) IS 'Appends one log line to a running attempt''s task.';
GRANT EXECUTE ON FUNCTION pgtasks.log_many(bigint,text,text[],text[],timestamp with time zone[],text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.log_many(bigint,text,text[],text[],timestamp with time zone[],text[]) IS 'Appends many log lines (parallel arrays of levels, messages, optional times and logger names) to a running attempt''s task in one call; returns how many.';
GRANT EXECUTE ON FUNCTION pgtasks.parent_results(bigint,text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.parent_results(bigint,text) IS 'The parents of a running task as one JSON object keyed by parent id: node name, status, and the result (DONE) or error (FAILED, CANCELLED). Fenced: pass the task''s lease token.';
GRANT EXECUTE ON FUNCTION pgtasks.queue_tag(text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.queue_tag(text) IS 'The opaque tag that pgtasks_wakeup notifications name the queue by; a worker compares payloads with the tags of its queues.';
COMMENT ON FUNCTION pgtasks.record_inserts() IS 'Trigger function: records each inserted task in task_events and sends at most one pgtasks_wakeup per queue (payload: the queue''s tag) to idle workers (off with pgtasks.wake_workers = off).';
GRANT EXECUTE ON FUNCTION pgtasks.report_progress(bigint,text,bigint,bigint,text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.report_progress(bigint,text,bigint,bigint,text) IS 'Sets the progress (current of total, message) of a running attempt; live watchers are notified.';
GRANT EXECUTE ON FUNCTION pgtasks.task_steps_of(bigint,text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.task_steps_of(bigint,text) IS 'The completed steps of a running attempt''s task (name, result), read through the fence, with the database''s pgtasks.now().';
GRANT EXECUTE ON FUNCTION pgtasks.yield_task(bigint,text,timestamp with time zone) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.yield_task(bigint,text,timestamp with time zone) IS 'Hands a running attempt back without using a retry: RUNNING -> COMMIT, claimable again at run_at (now: a graceful shutdown). Its checkpoints stay.';
COMMENT ON TABLE pgtasks.wakeup_key IS 'The secret that wake-up tags are computed with (queue_tag): one random row, drawn at install, read by the owner only.';
COMMENT ON COLUMN pgtasks.tasks.attempt IS 'How many times the task was claimed: a counter for people; the fence is lease_token.';
COMMENT ON COLUMN pgtasks.tasks.lease_token IS 'The running attempt''s secret, drawn at random by its claim and known only to its claimer, who presents it with every write; set exactly while RUNNING. No view shows it.';
-- claim_tasks was made again above (its result gained lease_token), so its grant is too.
GRANT EXECUTE ON FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]) TO pgtasks_worker;
