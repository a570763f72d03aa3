-- Soft time limits: a task's soft_timeout (from submit, else its type's policy) is stored on
-- the row beside timeout, and each claim returns soft_deadline (claim time + soft_timeout),
-- when the worker raises inside the task; the hard deadline stays the database's. The
-- topic files' definitions (sql/schema/01_tables.sql, 02_checks.sql, 04_submit.sql,
-- 05_claim.sql, 06_finish.sql, 09_schedules.sql, 10_workflows.sql, 11_views.sql).
-- The CHECK on tasks is added NOT VALID here and validated by the next delta, outside this
-- transaction. The ALTER of pgtasks.tasks comes last: its ACCESS EXCLUSIVE lock is held
-- only for the commit that follows it.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

-- task_types holds one row per registered type: its CHECK comes with its new column.
ALTER TABLE pgtasks.task_types
    ADD COLUMN soft_timeout interval CONSTRAINT soft_timeout_range
        CHECK (soft_timeout > interval '0' AND soft_timeout < interval '1 year');

-- Each signature below gains a trailing argument with a default (register_task_type,
-- submit_task, submit_or_get, submit_tasks, the internal submit_policy), so a call of the
-- old one with named arguments (a worker or client of the release before) resolves to the
-- new one; keeping both would make every such call ambiguous. claim_tasks and
-- finish_and_claim keep their arguments and return one more column (soft_deadline), which
-- CREATE OR REPLACE cannot change; a caller reading the columns by name is unaffected.
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.register_task_type(text,text,integer,integer,interval,interval,text);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.submit_or_get(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.submit_policy(text,text,integer,timestamp with time zone,integer,interval,interval);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.submit_task(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,bigint[],text);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.submit_tasks(text,jsonb[],text,integer,timestamp with time zone,integer,interval,interval,text[],interval,text[],integer);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]);
-- squawk-ignore ban-drop-function
DROP FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]);

CREATE OR REPLACE FUNCTION pgtasks.check_soft_timeout(soft_timeout interval, timeout interval, what text DEFAULT 'the task'::text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
BEGIN
    IF soft_timeout IS NOT NULL AND NOT (soft_timeout > interval '0' AND soft_timeout < interval '1 year'
                                         AND (timeout IS NULL OR soft_timeout < timeout)) THEN
        RAISE EXCEPTION 'pgtasks: soft_timeout must be positive and less than the timeout of % (%), got %',
                what, coalesce(timeout::text, 'NULL'), soft_timeout
            USING ERRCODE = 'PT129',
                  HINT = 'The soft limit warns the task before the hard one stops it, e.g. soft_timeout => ''55 minutes'', timeout => ''1 hour''.';
    END IF;
END $function$;
CREATE FUNCTION pgtasks.claim_tasks(worker_id text, queues text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1, lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
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
                  t.run_at, t.lease_token, pgtasks.now() + t.soft_timeout AS soft_deadline
    )
    SELECT c.id, c.task_type, c.params, c.queue, c.priority, c.attempt, c.retry_count,
           c.max_retries, c.timeout, c.deadline, c.has_steps, c.lease_token, c.soft_deadline
      FROM claimed c
     ORDER BY c.priority DESC, c.run_at, c.id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.enqueue_tick(s pgtasks.schedule_defs, tick timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    p      pgtasks.tasks;
    new_id bigint;
BEGIN
    -- The same policy resolution as submit_task (type's policy, else settings), but an
    -- INSERT of our own: ON CONFLICT needs to name the (schedule, tick) index.
    p := pgtasks.submit_policy(s.task_type, s.queue, s.priority, NULL, NULL, NULL, NULL);
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                               backoff_base, schedule, schedule_tick, soft_timeout)
    VALUES (p.task_type, s.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
            p.backoff_base, s.name, tick, p.soft_timeout)
    ON CONFLICT (schedule, schedule_tick) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END $function$;
CREATE FUNCTION pgtasks.finish_and_claim(worker_id text, task_ids bigint[], lease_tokens text[], results jsonb[], claim_max integer DEFAULT 0, queues text[] DEFAULT NULL::text[], lease interval DEFAULT NULL::interval, task_types text[] DEFAULT NULL::text[])
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
CREATE OR REPLACE FUNCTION pgtasks.register_task_type(task_type text, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, worker_id text DEFAULT NULL::text, soft_timeout interval DEFAULT NULL::interval)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    t pgtasks.task_types;
BEGIN
    PERFORM pgtasks.check_policy(task_type, queue, max_retries, timeout, backoff_base);
    -- Against the timeout the type's tasks get when a submit names none.
    PERFORM pgtasks.check_soft_timeout(soft_timeout,
                                       coalesce(timeout, (SELECT s.default_timeout FROM pgtasks.settings s)),
                                       'the type');
    IF worker_id IS NOT NULL THEN
        PERFORM pgtasks.check_worker_id(worker_id);
    END IF;
    SELECT * INTO t FROM pgtasks.task_types tt WHERE tt.task_type = register_task_type.task_type;
    IF NOT FOUND THEN
        INSERT INTO pgtasks.task_types AS tt
               (task_type, queue, priority, max_retries, timeout, backoff_base, registered_by, soft_timeout)
        VALUES (register_task_type.task_type, register_task_type.queue, register_task_type.priority,
                register_task_type.max_retries, register_task_type.timeout,
                register_task_type.backoff_base, register_task_type.worker_id,
                register_task_type.soft_timeout)
        -- A concurrent first registration won: this one is then a change like any other,
        -- and the next worker start applies it (or is refused) as below.
        ON CONFLICT ON CONSTRAINT task_types_pkey DO NOTHING;
        RETURN;
    END IF;
    IF (t.queue, t.priority, t.max_retries, t.timeout, t.backoff_base, t.soft_timeout)
       IS NOT DISTINCT FROM (queue, priority, max_retries, timeout, backoff_base, soft_timeout) THEN
        RETURN;
    END IF;
    IF t.owner_role <> session_user AND NOT pgtasks.caller_is_admin() THEN
        RAISE EXCEPTION 'pgtasks: task type % belongs to role %; role % may not change its policy',
                pg_catalog.quote_literal(task_type), pg_catalog.quote_ident(t.owner_role),
                pg_catalog.quote_ident(session_user)
            USING ERRCODE = 'PT125',
                  HINT = 'Declare the type with the policy it has (SELECT * FROM pgtasks.registered_types), '
                         'or ask its deployment or a pgtasks_admin to change it.';
    END IF;
    UPDATE pgtasks.task_types tt
       SET queue = register_task_type.queue, priority = register_task_type.priority,
           max_retries = register_task_type.max_retries, timeout = register_task_type.timeout,
           backoff_base = register_task_type.backoff_base, registered_by = register_task_type.worker_id,
           soft_timeout = register_task_type.soft_timeout, updated_at = pgtasks.now()
     WHERE tt.task_type = register_task_type.task_type;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_dependent(p pgtasks.tasks, params jsonb, concurrency_key text, concurrency_limit integer, depends_on bigint[], on_parent_failure text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_keyed(p pgtasks.tasks, params_list jsonb[], unique_keys text[], unique_for interval, concurrency_keys text[], concurrency_limit integer)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET plan_cache_mode TO 'force_custom_plan'
AS $function$
#variable_conflict use_column
-- (ON CONFLICT's index inference names columns, which plpgsql cannot qualify.)
DECLARE
    id_seq      regclass := pg_catalog.pg_get_serial_sequence('pgtasks.tasks', 'id')::regclass;
    now_        timestamptz := pgtasks.now();
    windows     text[];      -- unique_for: the keys whose window this call took
    key_names   text[];      -- every key resolved so far ...
    key_ids     bigint[];    -- ... and the task it gets
    plain_ids   bigint[];    -- the tasks of the items without a key, in list order
    round_keys  text[];      -- the leaders of this round
    met_keys    text[];
    met_ids     bigint[];
    first_round boolean := true;
BEGIN
    IF submit_keyed.unique_for IS NOT NULL THEN
        WITH took AS (
            INSERT INTO pgtasks.unique_windows AS w (task_type, unique_key, task_id, reserved_until)
            SELECT p.task_type, l.k, NULL, now_ + submit_keyed.unique_for
              FROM (SELECT u.k, min(u.ord) AS leader
                      FROM unnest(submit_keyed.unique_keys) WITH ORDINALITY AS u(k, ord)
                     WHERE u.k IS NOT NULL GROUP BY u.k) l
             ORDER BY l.leader
            ON CONFLICT ON CONSTRAINT unique_windows_pkey DO UPDATE
               SET task_id = NULL, reserved_until = excluded.reserved_until
             WHERE w.reserved_until <= now_
            RETURNING w.unique_key)
        SELECT array_agg(took.unique_key) INTO windows FROM took;
        -- A window another submit holds stays locked by the INSERT above until we commit.
        SELECT array_agg(w.unique_key), array_agg(w.task_id) INTO key_names, key_ids
          FROM pgtasks.unique_windows w
         WHERE w.task_type = p.task_type
           AND w.unique_key IN (SELECT u.k FROM unnest(submit_keyed.unique_keys) AS u(k))
           AND NOT EXISTS (SELECT FROM unnest(windows) AS x(k) WHERE x.k = w.unique_key);
    END IF;

    LOOP
        WITH todo AS MATERIALIZED (
                 SELECT pg_catalog.nextval(id_seq) AS id, x.ord, x.params, x.k, x.c
                   FROM (SELECT u.ord, u.params, u.k, u.c
                           FROM unnest(submit_keyed.params_list, submit_keyed.unique_keys,
                                       submit_keyed.concurrency_keys) WITH ORDINALITY AS u(params, k, c, ord)
                          WHERE u.k IS NULL AND first_round
                         UNION ALL
                         SELECT l.ord, l.params, l.k, l.c
                           FROM (SELECT DISTINCT ON (u.k) u.ord, u.params, u.k, u.c
                                   FROM unnest(submit_keyed.params_list, submit_keyed.unique_keys,
                                               submit_keyed.concurrency_keys) WITH ORDINALITY AS u(params, k, c, ord)
                                  WHERE u.k IS NOT NULL
                                  ORDER BY u.k, u.ord) l
                          WHERE NOT EXISTS (SELECT FROM unnest(key_names) AS r(k) WHERE r.k = l.k)
                          ORDER BY 1) x),
             ins AS (
                 INSERT INTO pgtasks.tasks AS t (id, task_type, params, queue, priority, run_at, max_retries,
                                                 timeout, backoff_base, unique_key, concurrency_key,
                                                 concurrency_limit, soft_timeout)
                 OVERRIDING SYSTEM VALUE
                 SELECT todo.id, p.task_type, todo.params, p.queue, p.priority, p.run_at, p.max_retries,
                        p.timeout, p.backoff_base, todo.k, todo.c,
                        CASE WHEN todo.c IS NOT NULL THEN coalesce(submit_keyed.concurrency_limit, 1) END,
                        p.soft_timeout
                   FROM todo
                  ORDER BY todo.ord
                 ON CONFLICT (task_type, unique_key)
                    WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING')
                 DO NOTHING)
        SELECT plain_ids || array_agg(todo.id ORDER BY todo.ord) FILTER (WHERE todo.k IS NULL),
               array_agg(todo.k) FILTER (WHERE todo.k IS NOT NULL)
          INTO plain_ids, round_keys
          FROM todo;
        -- Every leader's key is now held by an active task: the one it inserted, or the one
        -- it met.
        SELECT array_agg(t.unique_key), array_agg(t.id) INTO met_keys, met_ids
          FROM pgtasks.tasks t
         WHERE t.task_type = p.task_type AND t.status IN ('PENDING', 'COMMIT', 'RUNNING')
           AND t.unique_key IN (SELECT unnest(round_keys));
        key_names := key_names || met_keys;
        key_ids := key_ids || met_ids;
        EXIT WHEN coalesce(cardinality(round_keys), 0) = coalesce(cardinality(met_keys), 0);
        first_round := false;
    END LOOP;

    IF windows IS NOT NULL THEN
        UPDATE pgtasks.unique_windows w SET task_id = r.id
          FROM unnest(key_names, key_ids) AS r(k, id)
         WHERE w.task_type = p.task_type AND w.unique_key = r.k
           AND r.k IN (SELECT unnest(windows));
    END IF;
    RETURN QUERY
    SELECT CASE WHEN u.k IS NULL THEN plain_ids[u.nth] ELSE r.id END
      FROM (SELECT u.k, u.ord, row_number() OVER (PARTITION BY u.k IS NULL ORDER BY u.ord) AS nth
              FROM unnest(submit_keyed.unique_keys) WITH ORDINALITY AS u(k, ord)) u
      LEFT JOIN unnest(key_names, key_ids) AS r(k, id) ON r.k = u.k
     ORDER BY u.ord;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_one(p pgtasks.tasks, params jsonb, unique_key text, unique_for interval, concurrency_key text, concurrency_limit integer, OUT id bigint, OUT created boolean)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
#variable_conflict use_column
-- (ON CONFLICT's index inference names columns, which plpgsql cannot qualify.)
DECLARE
    took boolean;
BEGIN
    IF unique_key IS NULL THEN
        INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                                   backoff_base, concurrency_key, concurrency_limit, soft_timeout)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.concurrency_key, submit_one.concurrency_limit, p.soft_timeout)
        RETURNING tasks.id INTO submit_one.id;
        created := true;
        RETURN;
    END IF;

    IF unique_for IS NOT NULL THEN
        -- The window row is the lock: a concurrent submit of the key waits here, then finds
        -- the window taken and returns its task.
        INSERT INTO pgtasks.unique_windows AS w (task_type, unique_key, task_id, reserved_until)
        VALUES (p.task_type, submit_one.unique_key, NULL, pgtasks.now() + submit_one.unique_for)
        ON CONFLICT ON CONSTRAINT unique_windows_pkey DO UPDATE
           SET task_id = NULL, reserved_until = excluded.reserved_until
         WHERE w.reserved_until <= pgtasks.now()
        RETURNING true INTO took;
        IF took IS NULL THEN
            SELECT w.task_id INTO submit_one.id FROM pgtasks.unique_windows w
             WHERE w.task_type = p.task_type AND w.unique_key = submit_one.unique_key;
            created := false;
            RETURN;
        END IF;
    END IF;

    LOOP
        INSERT INTO pgtasks.tasks AS t (task_type, params, queue, priority, run_at, max_retries, timeout,
                                        backoff_base, unique_key, concurrency_key, concurrency_limit,
                                        soft_timeout)
        VALUES (p.task_type, submit_one.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout,
                p.backoff_base, submit_one.unique_key, submit_one.concurrency_key, submit_one.concurrency_limit,
                p.soft_timeout)
        ON CONFLICT (task_type, unique_key) WHERE unique_key IS NOT NULL AND status IN ('PENDING', 'COMMIT', 'RUNNING')
        DO NOTHING
        RETURNING t.id INTO submit_one.id;
        IF FOUND THEN
            created := true;
            EXIT;
        END IF;
        SELECT t.id INTO submit_one.id FROM pgtasks.tasks t
         WHERE t.task_type = p.task_type AND t.unique_key = submit_one.unique_key
           AND t.status IN ('PENDING', 'COMMIT', 'RUNNING');
        IF FOUND THEN
            created := false;
            EXIT;
        END IF;
    END LOOP;

    IF unique_for IS NOT NULL THEN
        UPDATE pgtasks.unique_windows w SET task_id = submit_one.id
         WHERE w.task_type = p.task_type AND w.unique_key = submit_one.unique_key;
    END IF;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_or_get(task_type text, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_key text DEFAULT NULL::text, unique_for interval DEFAULT NULL::interval, concurrency_key text DEFAULT NULL::text, concurrency_limit integer DEFAULT NULL::integer, soft_timeout interval DEFAULT NULL::interval)
 RETURNS TABLE(id bigint, created boolean)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    p pgtasks.tasks;
BEGIN
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base,
                               soft_timeout);
    PERFORM pgtasks.check_params(params);
    PERFORM pgtasks.check_flow_args(unique_key, unique_for, concurrency_key, concurrency_limit);
    RETURN QUERY
    SELECT s.id, s.created
      FROM pgtasks.submit_one(p, params, unique_key, unique_for, concurrency_key,
                              CASE WHEN concurrency_key IS NOT NULL THEN coalesce(concurrency_limit, 1) END) s;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_policy(task_type text, queue text, priority integer, run_at timestamp with time zone, max_retries integer, timeout interval, backoff_base interval, soft_timeout interval DEFAULT NULL::interval)
 RETURNS pgtasks.tasks
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    r pgtasks.tasks;
BEGIN
    SELECT submit_policy.task_type,
           coalesce(submit_policy.queue, tt.queue, s.default_queue),
           coalesce(submit_policy.priority, tt.priority, s.default_priority),
           coalesce(submit_policy.run_at, pgtasks.now()),
           coalesce(submit_policy.max_retries, tt.max_retries, s.default_max_retries),
           coalesce(submit_policy.timeout, tt.timeout, s.default_timeout),
           coalesce(submit_policy.backoff_base, tt.backoff_base, s.default_backoff_base),
           coalesce(submit_policy.soft_timeout, tt.soft_timeout)
      INTO r.task_type, r.queue, r.priority, r.run_at, r.max_retries, r.timeout, r.backoff_base,
           r.soft_timeout
      FROM pgtasks.settings s
      LEFT JOIN pgtasks.task_types tt ON tt.task_type = submit_policy.task_type;

    PERFORM pgtasks.check_policy(r.task_type, r.queue, r.max_retries, r.timeout, r.backoff_base);
    PERFORM pgtasks.check_soft_timeout(r.soft_timeout, r.timeout);
    -- Infinite or far-off times crash clients that decode them (an idle Python worker died
    -- on 'infinity', `pgtasks stats` on '-infinity').
    IF NOT isfinite(r.run_at)
       OR r.run_at NOT BETWEEN pgtasks.now() - interval '100 years' AND pgtasks.now() + interval '100 years' THEN
        RAISE EXCEPTION 'pgtasks: run_at must be within 100 years of now, got %', r.run_at
            USING ERRCODE = 'PT105', HINT = 'Leave run_at out (NULL) to run as soon as possible.';
    END IF;
    RETURN r;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_task(task_type text, params jsonb DEFAULT '{}'::jsonb, queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_key text DEFAULT NULL::text, unique_for interval DEFAULT NULL::interval, concurrency_key text DEFAULT NULL::text, concurrency_limit integer DEFAULT NULL::integer, depends_on bigint[] DEFAULT NULL::bigint[], on_parent_failure text DEFAULT NULL::text, soft_timeout interval DEFAULT NULL::interval)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
BEGIN
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
CREATE OR REPLACE FUNCTION pgtasks.submit_tasks(task_type text, params_list jsonb[], queue text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, max_retries integer DEFAULT NULL::integer, timeout interval DEFAULT NULL::interval, backoff_base interval DEFAULT NULL::interval, unique_keys text[] DEFAULT NULL::text[], unique_for interval DEFAULT NULL::interval, concurrency_keys text[] DEFAULT NULL::text[], concurrency_limit integer DEFAULT NULL::integer, soft_timeout interval DEFAULT NULL::interval)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
DECLARE
    p        pgtasks.tasks;
    n        integer;
    suspects integer[];
    item     integer;
BEGIN
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base,
                               soft_timeout);
    PERFORM pgtasks.check_params_list(params_list);
    n := coalesce(cardinality(params_list), 0);
    IF (unique_keys IS NOT NULL AND cardinality(unique_keys) <> n)
       OR (concurrency_keys IS NOT NULL AND cardinality(concurrency_keys) <> n) THEN
        RAISE EXCEPTION 'pgtasks: submit_tasks needs one unique key and one concurrency key per item '
                        '(% items, % unique_keys, % concurrency_keys)',
                n, cardinality(unique_keys), cardinality(concurrency_keys)
            USING ERRCODE = 'PT305', HINT = 'Pass arrays as long as params_list, with NULL for items without a key.';
    END IF;
    -- The keys, as check_flow_args checks each item's, in one pass: the first item it would
    -- refuse is the first with a unique key (a bad unique_for refuses it), the first with a
    -- concurrency key (a bad concurrency_limit) or the first whose key is blank or over 255
    -- bytes, whichever comes first; check_flow_args then raises for it, naming the item.
    -- is_blank (~2 us a call) only sees the keys without an ASCII letter or digit, which
    -- every blank key lacks.
    IF unique_keys IS NOT NULL OR concurrency_keys IS NOT NULL THEN
        SELECT array_agg(s.ord ORDER BY s.ord) INTO suspects
          FROM (SELECT min(u.ord) FILTER (WHERE u.uk IS NOT NULL) AS first_unique,
                       min(u.ord) FILTER (WHERE u.ck IS NOT NULL) AS first_concurrency,
                       min(u.ord) FILTER (WHERE
                               (u.uk IS NOT NULL AND (octet_length(u.uk) > 255
                                                      OR (u.uk !~ '[0-9A-Za-z]' AND pgtasks.is_blank(u.uk))))
                            OR (u.ck IS NOT NULL AND (octet_length(u.ck) > 255
                                                      OR (u.ck !~ '[0-9A-Za-z]' AND pgtasks.is_blank(u.ck)))))
                           AS first_bad_key
                  FROM unnest(unique_keys, concurrency_keys) WITH ORDINALITY AS u(uk, ck, ord)) f
          CROSS JOIN LATERAL (VALUES (f.first_unique), (f.first_concurrency), (f.first_bad_key)) AS s(ord)
         WHERE s.ord IS NOT NULL;
        FOREACH item IN ARRAY coalesce(suspects, '{}') LOOP
            PERFORM pgtasks.check_flow_args(unique_keys[item],
                                            CASE WHEN unique_keys[item] IS NOT NULL THEN unique_for END,
                                            concurrency_keys[item],
                                            CASE WHEN concurrency_keys[item] IS NOT NULL THEN concurrency_limit END,
                                            item);
        END LOOP;
    END IF;
    IF concurrency_limit IS NOT NULL AND concurrency_keys IS NULL THEN
        PERFORM pgtasks.check_flow_args(NULL, NULL, NULL, concurrency_limit);
    END IF;
    IF unique_for IS NOT NULL AND unique_keys IS NULL THEN
        PERFORM pgtasks.check_flow_args(NULL, unique_for, NULL, NULL);
    END IF;

    IF unique_keys IS NOT NULL AND n >= 10 THEN
        RETURN QUERY
        SELECT s.id FROM pgtasks.submit_keyed(p, params_list, unique_keys, unique_for, concurrency_keys,
                                              concurrency_limit) AS s(id);
        RETURN;
    ELSIF unique_keys IS NOT NULL THEN
        -- Fewer than 10 items: one submit_one each costs less than planning submit_keyed's
        -- statements (server CPU per call, 2 keys: 0.7 ms against 1.3; 8 keys: 1.6 both).
        FOR item IN 1 .. n LOOP
            RETURN QUERY
            SELECT s.id FROM pgtasks.submit_one(
                p, params_list[item], unique_keys[item],
                CASE WHEN unique_keys[item] IS NOT NULL THEN unique_for END, concurrency_keys[item],
                CASE WHEN concurrency_keys[item] IS NOT NULL THEN coalesce(concurrency_limit, 1) END) s;
        END LOOP;
        RETURN;
    END IF;
    RETURN QUERY
    INSERT INTO pgtasks.tasks (task_type, params, queue, priority, run_at, max_retries, timeout,
                               backoff_base, concurrency_key, concurrency_limit, soft_timeout)
    SELECT p.task_type, u.params, p.queue, p.priority, p.run_at, p.max_retries, p.timeout, p.backoff_base,
           u.ck, CASE WHEN u.ck IS NOT NULL THEN coalesce(submit_tasks.concurrency_limit, 1) END,
           p.soft_timeout
      FROM unnest(params_list, concurrency_keys) WITH ORDINALITY AS u(params, ck, ord)
     ORDER BY u.ord
    RETURNING id;
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.submit_workflow(spec jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
AS $function$
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
BEGIN
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
                                   'max_retries', 'timeout', 'backoff_base', 'concurrency_key',
                                   'concurrency_limit', 'on_parent_failure')
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
            WHEN 'concurrency_key' THEN jsonb_typeof(k.value) = 'string'
            WHEN 'concurrency_limit' THEN jsonb_typeof(k.value) = 'number'
            WHEN 'on_parent_failure' THEN k.value #>> '{}' IN ('cancel', 'run')
            ELSE false END
     ORDER BY x.ord LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgtasks: node % %', quote_literal(bad.name), bad.what
            USING ERRCODE = 'PT506',
                  HINT = 'Node keys: type (string), params (object), after (list of node names), queue, priority, '
                         'run_at, max_retries, timeout, backoff_base, concurrency_key, concurrency_limit, '
                         'on_parent_failure (cancel or run).';
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
                   x.v->>'concurrency_key' AS concurrency_key,
                   (x.v->>'concurrency_limit')::integer AS concurrency_limit,
                   coalesce(x.v->>'on_parent_failure', 'cancel') AS on_parent_failure
              FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
        ), keyed AS (
            SELECT p.*, jsonb_build_array(p.task_type, p.queue, p.priority, p.run_at, p.max_retries,
                                          p.timeout, p.backoff_base) AS policy_key
              FROM parsed p
        ), policy AS MATERIALIZED (
            SELECT g.policy_key,
                   pgtasks.submit_policy(g.task_type, g.queue, g.priority, g.run_at, g.max_retries,
                                         g.timeout, g.backoff_base) AS p
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
                         'timeout and backoff_base seconds or an interval such as ''5 minutes''.';
    END;
    PERFORM pgtasks.check_params_list(ARRAY(SELECT coalesce(x.v->'params', '{}')
                                              FROM jsonb_array_elements(nodes) WITH ORDINALITY AS x(v, ord)
                                             ORDER BY x.ord));
    INSERT INTO pgtasks.task_edges (parent_id, child_id)
    SELECT ids[e.p], ids[e.k] FROM unnest(e_par, e_kid) AS e(p, k);
    RETURN jsonb_build_object('workflow_id', wf_id, 'nodes', out_nodes);
END $function$;
CREATE OR REPLACE VIEW pgtasks.registered_types AS
 SELECT t.task_type,
    COALESCE(t.queue, s.default_queue) AS queue,
    COALESCE(t.priority, s.default_priority) AS priority,
    COALESCE(t.max_retries, s.default_max_retries) AS max_retries,
    COALESCE(t.timeout, s.default_timeout) AS timeout,
    COALESCE(t.backoff_base, s.default_backoff_base) AS backoff_base,
    t.registered_by,
    t.updated_at,
    t.soft_timeout
   FROM (pgtasks.task_types t
     CROSS JOIN pgtasks.settings s);
COMMENT ON FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]) IS 'Claims up to max_tasks ready tasks of the given queues (NULL: every queue) and task types for worker_id, in claim order (priority, run_at, id), honouring queue limits, pauses and concurrency keys. Each row''s lease_token is the secret the task''s later calls must present; soft_deadline is when the task should be asked to stop (NULL: no soft limit).';
GRANT EXECUTE ON FUNCTION pgtasks.register_task_type(text,text,integer,integer,interval,interval,text,interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.register_task_type(text,text,integer,integer,interval,interval,text,interval) IS 'Registers a task type''s policy (queue, priority, max_retries, timeout, backoff_base, soft_timeout; NULL: the settings default, no soft limit), applied to every submit of the type that leaves the argument out. Only the role that registered the type first, or pgtasks_admin, may change it (PT125).';
GRANT EXECUTE ON FUNCTION pgtasks.submit_or_get(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,interval) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_or_get(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,interval) IS 'Submits one task like submit_task and also says whether it was created: false when an active task, or the unique_for window, already held the unique_key (id is then that task).';
GRANT EXECUTE ON FUNCTION pgtasks.submit_task(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,bigint[],text,interval) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_task(text,jsonb,text,integer,timestamp with time zone,integer,interval,interval,text,interval,text,integer,bigint[],text,interval) IS 'Submits one task and returns its id. Arguments left out (NULL) take the task type''s registered policy, else the settings defaults; unique_key, concurrency_key and depends_on add flow control and parents.';
GRANT EXECUTE ON FUNCTION pgtasks.submit_tasks(text,jsonb[],text,integer,timestamp with time zone,integer,interval,interval,text[],interval,text[],integer,interval) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_tasks(text,jsonb[],text,integer,timestamp with time zone,integer,interval,interval,text[],interval,text[],integer,interval) IS 'Submits one task of task_type per element of params_list, in one statement, and returns their ids in list order; unique_keys and concurrency_keys give one key per item.';
COMMENT ON VIEW pgtasks.registered_types IS 'Every task type the workers registered, with the policy a submit of it gets when the caller leaves an argument out (the type''s own, else the settings default); soft_timeout NULL: no soft limit.';
COMMENT ON COLUMN pgtasks.task_types.soft_timeout IS 'The soft time limit of the type''s tasks (less than their timeout); NULL: none.';

GRANT EXECUTE ON FUNCTION pgtasks.claim_tasks(text,text[],integer,interval,text[]) TO pgtasks_worker;
GRANT EXECUTE ON FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.finish_and_claim(text,bigint[],text[],jsonb[],integer,text[],interval,text[]) IS 'Finishes a batch like finish_tasks and claims up to claim_max tasks like claim_tasks, in one round trip: rejected finishes first (only rejected_task_id set), then the claimed tasks in claim order, each with its lease_token.';

-- Last: a nullable column without default (no rewrite) and a CHECK that scans nothing yet.
ALTER TABLE pgtasks.tasks
    ADD COLUMN soft_timeout interval,
    ADD CONSTRAINT soft_timeout_within_timeout
        CHECK (soft_timeout > interval '0' AND soft_timeout < timeout) NOT VALID;
COMMENT ON COLUMN pgtasks.tasks.soft_timeout IS 'The soft time limit of one attempt: its claim returns claim time + soft_timeout as soft_deadline, when the worker raises inside the task; less than timeout. NULL: none.';
