-- The hot paths read the clock once per call: claim_tasks, pick_ready, finish_tasks,
-- finish_and_claim and heartbeat keep pgtasks.now() in a variable instead of calling it in
-- their statements, where it ran once per row (about 4 us each: its body reads
-- pgtasks.clock, so it is never inlined), 5 times per claimed and finished task. The same
-- value: pgtasks.now() is constant within a transaction. Replaced functions only.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone, traceparent text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    picked bigint[];
    lease_for interval;
    started timestamptz := now_;
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
                  t.traceparent
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline, c.traceparent
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], lease_tokens text[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone, traceparent text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
CREATE OR REPLACE FUNCTION pgtasks.finish_tasks(task_ids bigint[], lease_tokens text[], results jsonb[])
 RETURNS TABLE(rejected_task_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
           SET status = 'DONE', result = batch.result, finished_at = now_,
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.pick_ready(queues text[], max_tasks integer, task_types text[], served text[])
 RETURNS bigint[]
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    -- pgtasks.now() read once: called in a statement it runs once per row (its body reads
    -- pgtasks.clock, so it is never inlined), which cost a claim or finish about 4 us per row.
    now_ timestamptz := pgtasks.now();
    picked bigint[];
BEGIN
    IF queues IS NULL THEN
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
END $function$;
