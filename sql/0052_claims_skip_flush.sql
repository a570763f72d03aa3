-- Claims skip the WAL flush: claim_tasks, when it is its transaction's first write, lets the
-- commit return before the flush (skip_claim_flush, sql/schema/05_claim.sql); every write that
-- can follow it in the same transaction makes the commit durable again (keep_durable, in the
-- tasks triggers and checkpoint). And a NULL result no longer pays for the JSON shape test
-- (finish_tasks, finish_and_claim).
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

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
    PERFORM pgtasks.keep_durable();
    INSERT INTO pgtasks.task_steps (task_id, name, result, attempt)
    VALUES (task_id, step, result, t.attempt)
    ON CONFLICT ON CONSTRAINT task_steps_pkey DO UPDATE SET result = excluded.result, attempt = excluded.attempt,
                                              at = pgtasks.now();
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone, traceparent text, tracestate text)
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], lease_tokens text[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone, traceparent text, tracestate text)
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.keep_durable()
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    prior text := current_setting('pgtasks.claim_commit', true);
BEGIN
    IF prior <> '' THEN
        PERFORM set_config('synchronous_commit', prior, true);
        PERFORM set_config('pgtasks.claim_commit', '', true);
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_creations()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.keep_durable();
    -- The history and the submitted counter's delta (task_counts, 01_tables.sql) in one
    -- statement: one row per queue and type of the statement, not a hot counter row.
    WITH history AS (
        INSERT INTO pgtasks.task_events (task_id, attempt, from_status, to_status)
        SELECT n.id, n.attempt, NULL, n.status FROM new_rows n
    )
    INSERT INTO pgtasks.task_count_deltas (queue, task_type, kind, n)
    SELECT n.queue, n.task_type, 'submitted', count(*) FROM new_rows n GROUP BY n.queue, n.task_type;
    RETURN NULL;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.record_status_changes()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_nestloop TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
BEGIN
    PERFORM pgtasks.keep_durable();
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.skip_claim_flush()
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF current_setting('synchronous_standby_names') = '' AND current_setting('synchronous_commit') <> 'off' THEN
        -- The caller's setting, for keep_durable; both are transaction-local (is_local).
        PERFORM set_config('pgtasks.claim_commit', current_setting('synchronous_commit'), true);
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END $function$;
COMMENT ON FUNCTION pgtasks.keep_durable() IS 'Makes the transaction''s commit durable again after a claim let it skip the WAL flush (skip_claim_flush); called by every write that must survive a crash.';
COMMENT ON FUNCTION pgtasks.skip_claim_flush() IS 'For claim_tasks: lets the claim''s transaction commit without waiting for the WAL flush (synchronous_commit = off until keep_durable or the commit), unless synchronous standbys are configured.';
