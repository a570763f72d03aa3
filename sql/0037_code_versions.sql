-- Code versions: a worker registers the version of each task type it runs and the older
-- ones it can resume (register_worker's code_versions, compatible_versions); a task's first
-- claim records the claimer's version (tasks.code_version), and later claims take it only
-- for a worker that serves that version (pick_ready, claim_limited, finish_and_claim).
-- pgtasks.stranded_tasks lists the ready tasks no live worker serves. The topic files'
-- definitions (sql/schema/01_tables.sql, 05_claim.sql, 06_finish.sql, 07_leases.sql,
-- 08_flow_control.sql, 11_views.sql). The ALTER of pgtasks.tasks comes last, followed only
-- by the view that reads its new column: its ACCESS EXCLUSIVE lock is held only for that
-- and the commit.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE TYPE pgtasks.worker_version_set AS (served text[], run_types text[], run_versions text[]);
COMMENT ON TYPE pgtasks.worker_version_set IS
    'What a claimer serves: type@version pairs, and the version it runs of each type.';

-- One row per worker: nullable columns, no rewrite.
ALTER TABLE pgtasks.worker_registry
    ADD COLUMN code_versions text[],
    ADD COLUMN compatible_versions text[];

-- register_worker gains two trailing arguments with defaults, so a call of the old one with
-- named arguments (a worker of the release before) resolves to the new one; keeping both
-- would make such calls ambiguous. pick_ready and claim_limited are internal (no grants),
-- called only by the claim functions replaced below.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.claim_limited(text[],integer,text[]);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.pick_ready(text[],integer,text[]);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.register_worker(text,text,integer,text[],integer,interval);

CREATE OR REPLACE FUNCTION pgtasks.claim_limited(queues text[], max_tasks integer, task_types text[], served text[], OUT picked bigint[], OUT started timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_sort TO 'off'
 SET enable_bitmapscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
DECLARE
    lq_names  text[] := '{}';
    lq_budget integer[] := '{}';
    lq_rated  boolean[] := '{}';
    blocked_q text[];
    blocked_k text[] := '{}';
    key_names text[] := '{}';
    key_running integer[] := '{}';   -- running + picked here, per key
    s record;
    c record;
    qi integer;
    ki integer;
    n integer;
    again boolean;
BEGIN
    picked := '{}';
    blocked_q := '{}';
    -- Every settings row of the claim's queues, paused ones too: pause_queue then waits for
    -- the claims holding the row, and a claim that locks it after the pause sees the pause,
    -- so nothing starts after a pause commits.
    PERFORM 1 FROM pgtasks.queue_settings qs
      WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
      ORDER BY qs.queue
        FOR NO KEY UPDATE OF qs;
    started := clock_timestamp();

    -- Settings as of now (after the locks: a configure_queue that committed meanwhile counts).
    FOR s IN SELECT qs.* FROM pgtasks.queue_settings qs
              WHERE claim_limited.queues IS NULL OR qs.queue = ANY (claim_limited.queues)
              ORDER BY qs.queue
    LOOP
        IF s.paused THEN
            blocked_q := blocked_q || s.queue;
            CONTINUE;
        END IF;
        n := max_tasks;
        IF s.max_running IS NOT NULL THEN
            n := least(n, s.max_running - (SELECT count(*) FROM pgtasks.tasks t
                                            WHERE t.queue = s.queue AND t.lease_expires_at IS NOT NULL));
        END IF;
        IF s.rate_limit IS NOT NULL THEN
            DELETE FROM pgtasks.queue_starts q WHERE q.queue = s.queue AND q.at < started - s.rate_period;
            n := least(n, s.rate_limit - (SELECT count(*) FROM pgtasks.queue_starts q
                                           WHERE q.queue = s.queue AND q.at >= started - s.rate_period));
        END IF;
        lq_names := lq_names || s.queue;
        lq_budget := lq_budget || n;
        lq_rated := lq_rated || (s.rate_limit IS NOT NULL);
        IF n <= 0 THEN
            blocked_q := blocked_q || s.queue;
        END IF;
    END LOOP;

    -- No keyed task ready: one set-based pick, as on the fast path, minus blocked queues.
    -- Kept when no queue went over its budget (the usual case: the limit is not reached);
    -- else the walk below redoes it (the rows stay locked by us, it may pick them again).
    -- (measured: the row-by-row walk alone drained a never-full max_running queue at ~0.77
    -- of drain_1.)
    IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                    WHERE t.concurrency_key IS NOT NULL AND t.status IN ('PENDING', 'COMMIT')
                      AND t.run_at <= pgtasks.now()) THEN
        -- A claim of limited queues only takes no more than their budgets together.
        n := max_tasks;
        IF queues IS NOT NULL AND queues <@ (lq_names || blocked_q) THEN
            n := least(n, (SELECT coalesce(sum(greatest(b, 0)), 0) FROM unnest(lq_budget) b));
        END IF;
        IF n <= 0 THEN
            RETURN;
        END IF;
        SELECT coalesce(array_agg(pick.id), '{}') INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (claim_limited.served))
               AND t.queue <> ALL (blocked_q)
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT n
             FOR NO KEY UPDATE SKIP LOCKED) pick;
        IF NOT EXISTS (SELECT 1 FROM pgtasks.tasks t
                         JOIN unnest(lq_names, lq_budget) AS b(queue, budget) ON b.queue = t.queue
                        WHERE t.id = ANY (picked)
                        GROUP BY b.queue, b.budget
                       HAVING count(*) > b.budget) THEN
            started := clock_timestamp();
            INSERT INTO pgtasks.queue_starts (queue, at)
            SELECT t.queue, started FROM pgtasks.tasks t
             WHERE t.id = ANY (picked) AND lq_rated[array_position(lq_names, t.queue)];
            RETURN;
        END IF;
        picked := '{}';
    END IF;

    LOOP
        again := false;
        FOR c IN
            SELECT t.id, t.queue, t.concurrency_key, t.concurrency_limit FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (claim_limited.queues IS NULL OR t.queue = ANY (claim_limited.queues))
               AND (claim_limited.task_types IS NULL OR t.task_type = ANY (claim_limited.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (claim_limited.served))
               AND t.queue <> ALL (blocked_q)
               AND (t.concurrency_key IS NULL OR t.concurrency_key <> ALL (blocked_k))
               AND t.id <> ALL (picked)
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks - cardinality(picked)
             FOR NO KEY UPDATE SKIP LOCKED
        LOOP
            IF c.concurrency_key IS NOT NULL THEN
                ki := array_position(key_names, c.concurrency_key);
                IF ki IS NULL THEN
                    IF pgtasks.lock_concurrency_key(c.concurrency_key) THEN
                        SELECT count(*)::integer INTO n FROM pgtasks.tasks t
                         WHERE t.concurrency_key = c.concurrency_key AND t.status = 'RUNNING';
                    ELSE
                        n := 2147483647;   -- another claimer is deciding for this key
                    END IF;
                    key_names := key_names || c.concurrency_key;
                    key_running := key_running || n;
                    ki := cardinality(key_names);
                END IF;
                -- The task's own limit decides (a key's tasks normally share one).
                IF key_running[ki] >= coalesce(c.concurrency_limit, 1) THEN
                    blocked_k := blocked_k || c.concurrency_key;
                    again := true;
                    EXIT;
                END IF;
                key_running[ki] := key_running[ki] + 1;
            END IF;
            picked := picked || c.id;
            qi := array_position(lq_names, c.queue);
            IF qi IS NOT NULL THEN
                lq_budget[qi] := lq_budget[qi] - 1;
                IF lq_budget[qi] <= 0 THEN
                    blocked_q := blocked_q || c.queue;
                    again := true;
                    EXIT;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN NOT again OR cardinality(picked) >= max_tasks;
    END LOOP;

    -- The start time, taken after every count: a task whose finish a count saw ended
    -- before this (so the recorded RUNNING periods never overlap more than the limits).
    -- Still under the queue locks, so later than every earlier holder's.
    started := clock_timestamp();
    -- The rate window's log: one row per start.
    INSERT INTO pgtasks.queue_starts (queue, at)
    SELECT t.queue, started FROM pgtasks.tasks t
     WHERE t.id = ANY (picked) AND lq_rated[array_position(lq_names, t.queue)];
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone)
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
                  t.run_at, t.lease_token, pgtasks.now() + t.soft_timeout AS soft_deadline
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], lease_tokens text[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
 RETURNS TABLE(rejected_task_id bigint, id bigint, task_type text, params jsonb, queue text, priority integer, attempt integer, retry_count integer, max_retries integer, timeout interval, deadline timestamp with time zone, has_steps boolean, lease_token text, soft_deadline timestamp with time zone)
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
               NULL::text, NULL::timestamptz
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
                  CASE WHEN NOT w.finishing THEN pgtasks.now() + t.soft_timeout END AS soft_deadline
    )
    SELECT r.rejected_task_id, NULL::bigint, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
           NULL::integer, NULL::integer, NULL::integer, NULL::interval, NULL::timestamptz, NULL::boolean,
           NULL::text, NULL::timestamptz
      FROM (SELECT w.task_id AS rejected_task_id FROM work w
             WHERE w.finishing
               AND NOT EXISTS (SELECT 1 FROM changed c
                                WHERE c.finishing AND c.id = w.task_id AND c.given_token = w.lease_token)) r
    UNION ALL
    SELECT * FROM (
        SELECT NULL::bigint, c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
               c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline
          FROM changed c
         WHERE NOT c.finishing
         ORDER BY c.priority DESC, c.run_at, c.id) cl;
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
    picked bigint[];
BEGIN
    IF queues IS NULL THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSIF cardinality(queues) = 1 THEN
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND t.queue = pick_ready.queues[1]
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT t.id FROM pgtasks.tasks t
             WHERE t.status IN ('PENDING', 'COMMIT') AND t.run_at <= pgtasks.now()
               AND t.queue = ANY (pick_ready.queues)
               AND (pick_ready.task_types IS NULL OR t.task_type = ANY (pick_ready.task_types))
               AND (t.code_version IS NULL OR t.task_type || '@' || t.code_version = ANY (pick_ready.served))
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT max_tasks
             FOR NO KEY UPDATE SKIP LOCKED) c;
    END IF;
    RETURN picked;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.register_worker(worker_id text, host text, pid integer, queues text[] DEFAULT NULL::text[], concurrency integer DEFAULT 1, lease interval DEFAULT NULL::interval, code_versions text[] DEFAULT NULL::text[], compatible_versions text[] DEFAULT NULL::text[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgtasks.check_worker_id(worker_id);
    IF pgtasks.is_blank(host) OR octet_length(host) > 255 OR pid IS NULL
       OR concurrency IS NULL OR concurrency < 1
       OR EXISTS (SELECT 1 FROM unnest(queues) q WHERE pgtasks.is_blank(q) OR octet_length(q) > 255) THEN
        RAISE EXCEPTION 'pgtasks: register_worker needs a host name, a pid, a concurrency of 1 or more '
                        'and non-blank queue names (got host %, pid %, concurrency %, queues %)',
                left(host, 40), pid, concurrency, left(queues::text, 80)
            USING ERRCODE = 'PT206', HINT = 'For example register_worker(''host:123:ab'', ''host'', 123, NULL, 10).';
    END IF;
    -- A version is 1 to 64 of [A-Za-z0-9._+-], so 'type@version' splits at its last '@'
    -- and the claim can compare task_type || '@' || code_version with these as plain text.
    IF EXISTS (SELECT 1 FROM unnest(code_versions || compatible_versions) v
                WHERE v IS NULL OR v !~ '^.+@[A-Za-z0-9._+-]{1,64}$' OR octet_length(v) > 320)
       OR EXISTS (SELECT 1 FROM unnest(code_versions) v
                   GROUP BY left(v, length(v) - strpos(reverse(v), '@')) HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'pgtasks: code versions must be ''type@version'' (version: 1 to 64 of A-Z a-z 0-9 . _ + -), one running version per type, got % and %',
                left(code_versions::text, 80), left(compatible_versions::text, 80)
            USING ERRCODE = 'PT130',
                  HINT = 'For example code_versions => ARRAY[''report@2''], compatible_versions => ARRAY[''report@1''].';
    END IF;
    INSERT INTO pgtasks.worker_registry AS w (worker_id, host, pid, queues, concurrency, lease,
                                              code_versions, compatible_versions)
    VALUES (register_worker.worker_id, register_worker.host, register_worker.pid, register_worker.queues,
            register_worker.concurrency, pgtasks.lease_or_default(register_worker.lease),
            register_worker.code_versions, register_worker.compatible_versions)
    ON CONFLICT ON CONSTRAINT worker_registry_pkey DO UPDATE
       SET last_seen = pgtasks.now(), code_versions = EXCLUDED.code_versions,
           compatible_versions = EXCLUDED.compatible_versions;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.worker_versions(worker_id text)
 RETURNS pgtasks.worker_version_set
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
    SELECT ROW(w.code_versions || w.compatible_versions,
               ARRAY(SELECT left(c, length(c) - strpos(reverse(c), '@')) FROM unnest(w.code_versions) c),
               ARRAY(SELECT right(c, strpos(reverse(c), '@') - 1) FROM unnest(w.code_versions) c)
              )::pgtasks.worker_version_set
      FROM pgtasks.worker_registry w WHERE w.worker_id = worker_versions.worker_id
$function$;
GRANT EXECUTE ON FUNCTION pgtasks.register_worker(text,text,integer,text[],integer,interval,text[],text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.register_worker(text,text,integer,text[],integer,interval,text[],text[]) IS 'Adds a worker to the registry (pgtasks.workers), or refreshes its last_seen if it is there already. Workers call it at start and after every reconnect; lease NULL means settings.default_lease. code_versions (type@version) are the versions it runs and records on the tasks it starts; compatible_versions the older ones it may resume.';
COMMENT ON COLUMN pgtasks.worker_registry.code_versions IS 'The version of each task type the worker runs, as type@version: recorded on the tasks it starts.';
COMMENT ON COLUMN pgtasks.worker_registry.compatible_versions IS 'Older versions, as type@version, whose started tasks the worker may also resume.';
COMMENT ON TYPE pgtasks.worker_version_set IS 'What a claimer serves: type@version pairs, and the version it runs of each type.';

-- Last: a nullable column without default, no rewrite; then the view that reads it.
ALTER TABLE pgtasks.tasks ADD COLUMN code_version text;
COMMENT ON COLUMN pgtasks.tasks.code_version IS 'The code version of the type that ran the first attempt; only workers serving it claim the task again. NULL: unrecorded, any worker of the type may claim it.';

CREATE VIEW pgtasks.stranded_tasks AS
 SELECT id,
    task_type,
    queue,
    status,
    code_version,
    attempt,
    run_at,
    ( SELECT array_agg(DISTINCT "right"(c.c, (strpos(reverse(c.c), '@'::text) - 1))) AS array_agg
           FROM pgtasks.worker_registry w,
            LATERAL unnest(w.code_versions) c(c)
          WHERE (((w.last_seen + w.lease) > now()) AND ("left"(c.c, (length(c.c) - strpos(reverse(c.c), '@'::text))) = t.task_type))) AS live_versions
   FROM pgtasks.tasks t
  WHERE ((status = ANY (ARRAY['PENDING'::pgtasks.status, 'COMMIT'::pgtasks.status])) AND (code_version IS NOT NULL) AND (NOT (EXISTS ( SELECT 1
           FROM pgtasks.worker_registry w
          WHERE (((w.last_seen + w.lease) > now()) AND (((t.task_type || '@'::text) || t.code_version) = ANY ((w.code_versions || w.compatible_versions))))))));
GRANT SELECT ON TABLE pgtasks.stranded_tasks TO pgtasks_reader;
COMMENT ON VIEW pgtasks.stranded_tasks IS 'Ready tasks whose recorded code version no live worker runs or declares compatible: no claim takes them until such a worker starts.';
COMMENT ON COLUMN pgtasks.stranded_tasks.live_versions IS 'The versions of the task''s type that the live workers run (NULL: no live worker runs a versioned one).';
