-- Trace context across the queue: tasks.traceparent holds the W3C trace context of the
-- submit, taken from submit_task's new traceparent argument or else from the session
-- setting pgtasks.traceparent (checked by check_traceparent, PT131); claim_tasks and
-- finish_and_claim return it so the worker's attempt spans join the submitter's trace.
-- The table change is a nullable column whose default is set after it is added, so no row
-- is rewritten; it comes last, its ACCESS EXCLUSIVE held for a moment.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.check_traceparent(traceparent text)
 RETURNS text
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF traceparent IS NULL OR traceparent = '' THEN
        RETURN NULL;
    END IF;
    IF octet_length(traceparent) <> 55
       OR traceparent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       OR substr(traceparent, 4, 32) = repeat('0', 32)
       OR substr(traceparent, 37, 16) = repeat('0', 16) THEN
        RAISE EXCEPTION 'pgtasks: traceparent must be a W3C trace context of version 00, got %',
                pg_catalog.quote_literal(left(traceparent, 80))
            USING ERRCODE = 'PT131',
                  HINT = 'Pass 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, lower case, ids not all zeros (55 characters), or NULL for none.';
    END IF;
    RETURN traceparent;
END $function$;

-- claim_tasks and finish_and_claim return one column more, which CREATE OR REPLACE cannot
-- change; each is made again below in this transaction, so no caller sees it missing.
-- Workers of the release before read the rows by column name and ignore the new one.
-- squawk-ignore ban-drop-function

GRANT EXECUTE ON FUNCTION pgtasks.check_traceparent(text) TO pgtasks_submitter;
GRANT EXECUTE ON FUNCTION pgtasks.check_traceparent(text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.check_traceparent(text) IS 'Returns a W3C traceparent of version 00 as given (NULL for NULL or empty), or raises PT131 when it is malformed.';

-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]);
CREATE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone, traceparent text)
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
               deadline = pgtasks.now() + t.timeout,
               lease_expires_at = least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout),
               lease_token = encode(sha256(seed || int8send(t.id)), 'hex'),
               code_version = coalesce(t.code_version, v.run_versions[array_position(v.run_types, t.task_type)])
         WHERE t.id = ANY (picked)
        RETURNING t.id, t.task_type, t.params, t.queue, t.priority, t.attempt, t.retry_count,
                  t.max_retries, t.timeout, t.deadline,
                  t.attempt > 1
                  AND EXISTS (SELECT 1 FROM pgtasks.task_steps s WHERE s.task_id = t.id) AS has_steps,
                  t.run_at, t.lease_token, pgtasks.now() + t.soft_timeout AS soft_deadline,
                  t.traceparent
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline, c.traceparent
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $function$;
GRANT EXECUTE ON FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]) IS 'Claims up to max_tasks ready tasks of the given queues (NULL: every queue) and task types for worker_id, in claim order (priority, run_at, id), honouring queue limits, pauses and concurrency keys. Each row''s lease_token is the secret the task''s later calls must present; soft_deadline is when the task should be asked to stop (NULL: no soft limit); traceparent is the submit''s W3C trace context (NULL: none).';

-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]);
CREATE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], lease_tokens text[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone, traceparent text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
DECLARE
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
               NULL::text, NULL::timestamptz, NULL::text
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
               finished_at = CASE WHEN w.finishing THEN pgtasks.now() END,
               worker_id = CASE WHEN w.finishing THEN NULL ELSE finish_and_claim.worker_id END,
               attempt = t.attempt + CASE WHEN w.finishing THEN 0 ELSE 1 END,
               started_at = CASE WHEN w.finishing THEN t.started_at ELSE coalesce(t.started_at, pgtasks.now()) END,
               deadline = CASE WHEN w.finishing THEN NULL ELSE pgtasks.now() + t.timeout END,
               lease_expires_at = CASE WHEN w.finishing THEN NULL
                                       ELSE least(pgtasks.now() + lease_for, pgtasks.now() + t.timeout) END,
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
                  CASE WHEN NOT w.finishing THEN pgtasks.now() + t.soft_timeout END AS soft_deadline,
                  t.traceparent
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean,
           NULL::text, NULL::timestamptz, NULL::text
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.given_token = w.lease_token)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline, c.traceparent
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
END $function$;
GRANT EXECUTE ON FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]) IS 'Finishes a batch like finish_tasks and claims up to claim_max tasks like claim_tasks, in one round trip: rejected finishes first (only rejected_task_id set), then the claimed tasks in claim order, each with its lease_token, soft_deadline and traceparent.';

-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.submit_task(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,bigint[],text,interval);
CREATE OR REPLACE FUNCTION pgtasks.submit_task(task_type text, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_key text DEFAULT NULL::text, unique_for interval DEFAULT NULL::interval, concurrency_key text DEFAULT NULL::text, concurrency_limit integer DEFAULT NULL::integer, depends_on bigint[] DEFAULT NULL::bigint[], on_parent_failure text DEFAULT NULL::text, soft_timeout interval DEFAULT NULL::interval, traceparent text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
    prior text;
BEGIN
    IF traceparent IS NOT NULL THEN
        -- Every path below inserts the trace context through the column default (the
        -- session setting), so the argument is put there for this call and the setting put
        -- back after it. A submit without the argument pays one NULL test.
        PERFORM pgtasks.check_traceparent(traceparent);
        prior := current_setting('pgtasks.traceparent', true);
        PERFORM set_config('pgtasks.traceparent', traceparent, true);
        new_id := pgtasks.submit_task(
            task_type => task_type, params => params, queue => queue, priority => priority,
            run_at => run_at, max_retries => max_retries, timeout => timeout,
            backoff_base => backoff_base, unique_key => unique_key, unique_for => unique_for,
            concurrency_key => concurrency_key, concurrency_limit => concurrency_limit,
            depends_on => depends_on, on_parent_failure => on_parent_failure,
            soft_timeout => soft_timeout);
        PERFORM set_config('pgtasks.traceparent', coalesce(prior, ''), true);
        RETURN new_id;
    END IF;
    IF depends_on IS NOT NULL OR on_parent_failure IS NOT NULL THEN
        IF unique_key IS NOT NULL OR unique_for IS NOT NULL THEN
            RAISE EXCEPTION 'pgtasks: depends_on cannot be combined with unique_key'
                USING ERRCODE = 'PT506',
                      HINT = 'A unique key may return an existing task, which has parents of its own.';
        END IF;
        p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base,
                                   soft_timeout);
        PERFORM pgtasks.check_params(params);
        PERFORM pgtasks.check_flow_args(NULL, NULL, concurrency_key, concurrency_limit);
        RETURN pgtasks.submit_dependent(
            p, params, concurrency_key,
            CASE WHEN concurrency_key IS NOT NULL THEN coalesce(concurrency_limit, 1) END,
            coalesce(depends_on, '{}'), on_parent_failure);
    END IF;
    IF unique_key IS NOT NULL OR unique_for IS NOT NULL OR concurrency_key IS NOT NULL
       OR concurrency_limit IS NOT NULL THEN
        SELECT s.id INTO new_id
          FROM pgtasks.submit_or_get(task_type, params, queue, priority, run_at, max_retries, timeout,
                                     backoff_base, unique_key, unique_for, concurrency_key,
                                     concurrency_limit, soft_timeout) s;
        RETURN new_id;
    END IF;
    -- Without flow control or parents: the plain submit, no extra calls (enqueue_single is measured).
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base,
                               soft_timeout);
    PERFORM pgtasks.check_params(params);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout, backoff_base,
                               soft_timeout)
    VALUES (p.task_type, submit_task.params, p.queue, p.priority, p.run_at, p.max_retries,
            p.timeout, p.backoff_base, p.soft_timeout)
    RETURNING id INTO new_id;
    RETURN new_id;
END $function$;
GRANT EXECUTE ON FUNCTION pgtasks.submit_task(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,bigint[],text,interval,text) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_task(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,bigint[],text,interval,text) IS 'Submits one task and returns its id. Arguments left out (NULL) take the task type''s registered policy, else the settings defaults; unique_key, concurrency_key and depends_on add flow control and parents; traceparent (else the session setting pgtasks.traceparent) is the W3C trace context the task''s attempts join.';


ALTER TABLE pgtasks.tasks ADD COLUMN traceparent text;
ALTER TABLE pgtasks.tasks ALTER COLUMN traceparent SET DEFAULT
    CASE WHEN coalesce(current_setting('pgtasks.traceparent', true), '') <> ''
         THEN pgtasks.check_traceparent(current_setting('pgtasks.traceparent', true)) END;
