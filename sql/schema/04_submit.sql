-- pgtasks submitting: task types and their policies, and the submit functions.
--
-- A submit resolves each argument it is not given (NULL) as the type's registered policy
-- (pgtasks.task_types, which workers register at start), else the settings default, so a
-- task submitted from psql behaves exactly like one submitted from Python: same queue,
-- retries, timeout and backoff. Every value is then checked (02_checks.sql) and the row
-- inserted PENDING; its insert trigger records it and wakes a worker (03_state_machine.sql).
--
-- Unique keys: at most one active (PENDING, COMMIT, RUNNING) task per unique_key of a task
-- type, held by the partial unique index tasks_unique_key and taken with INSERT ... ON
-- CONFLICT, so 20 sessions submitting one key at once create one task. Keys belong to their
-- task type: a submit of another type never meets them. unique_for keeps a key reserved
-- for a period after the first submit, whatever the task's state (unique_windows). A
-- concurrency_key (with concurrency_limit, default 1) is stored for the claim to enforce
-- (08_flow_control.sql). depends_on makes the task wait for its parents (10_workflows.sql).

SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Everything in this file is created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

------------------------------------------------------------------------------------------
-- Task types

-- Upsert of one type's whole policy: the latest registration wins, NULLs included (a
-- worker whose code dropped `queue=` clears it). An unchanged policy is not rewritten, so
-- a fleet restarting does not churn the row or its updated_at.
--
-- Who may change a policy: the policy decides where every later submit of the type goes,
-- so a worker role that could rewrite it could reroute another deployment's tasks to a
-- queue of its own (register_task_type('billing.invoice', queue => 'attacker-q')). The
-- first registration records its login role (owner_role); after that only that role's
-- workers, or pgtasks_admin, may change the policy (PT125). Any worker may register a new
-- type, and re-declare an existing type's policy unchanged, as every worker does at start.
CREATE FUNCTION pgtasks.register_task_type(
    task_type    text,
    queue        text     DEFAULT NULL,
    priority     integer  DEFAULT NULL,
    max_retries  integer  DEFAULT NULL,
    timeout      interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL,
    worker_id    text     DEFAULT NULL,
    soft_timeout interval DEFAULT NULL     -- NULL: no soft limit
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.register_task_type(text, text, integer, integer, interval, interval, text, interval) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.register_task_type(text, text, integer, integer, interval, interval, text, interval) IS
    'Registers a task type''s policy (queue, priority, max_retries, timeout, backoff_base, soft_timeout; NULL: the settings default, no soft limit), applied to every submit of the type that leaves the argument out. Only the role that registered the type first, or pgtasks_admin, may change it (PT125).';

------------------------------------------------------------------------------------------
-- The policy of one submit

-- The row a submit inserts, minus params: each omitted (NULL) argument resolved as the
-- type's registered policy, else the settings default, then every value checked.
-- One index probe on task_types and one read of settings per call, whatever the batch.
CREATE FUNCTION pgtasks.submit_policy(
    task_type    text,
    queue        text,
    priority     integer,
    run_at       timestamptz,
    max_retries  integer,
    timeout      interval,
    backoff_base interval,
    soft_timeout interval DEFAULT NULL
) RETURNS pgtasks.tasks
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

------------------------------------------------------------------------------------------
-- One task, with flow control

-- One task, resolved policy p. Without a unique key: a plain INSERT. With one: ON CONFLICT
-- on tasks_unique_key (the type's keys), so concurrent submits of a key wait for each
-- other and exactly one inserts; the others return its id. When the active task finishes between our conflict
-- and our look-up, the INSERT is tried again (it now succeeds, or meets a newer task).
-- With unique_for, the unique_windows row is taken first and is the lock: a concurrent
-- submit of the key waits on it, then finds the window taken and returns its task.
CREATE FUNCTION pgtasks.submit_one(
    p                 pgtasks.tasks,
    params            jsonb,
    unique_key        text,
    unique_for        interval,
    concurrency_key   text,
    concurrency_limit integer,
    OUT id            bigint,
    OUT created       boolean
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
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
END $$;

-- submit_task plus whether the task was created (false: an active task, or the unique_for
-- window, already had the key, and id is that task's).
CREATE FUNCTION pgtasks.submit_or_get(
    task_type         text,
    params            jsonb       DEFAULT '{}',
    queue             text        DEFAULT NULL,   -- NULL: the type's policy, else settings
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,   -- NULL: now
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_key        text        DEFAULT NULL,   -- NULL: no uniqueness
    unique_for        interval    DEFAULT NULL,   -- NULL: the key is free once its task finished
    concurrency_key   text        DEFAULT NULL,   -- NULL: no per-key limit
    concurrency_limit integer     DEFAULT NULL,   -- NULL with a key: 1
    soft_timeout      interval    DEFAULT NULL,   -- NULL: the type's policy, else none
    traceparent       text        DEFAULT NULL,   -- W3C trace context; NULL: the session's pgtasks.traceparent
    tracestate        text        DEFAULT NULL    -- its W3C tracestate, given with traceparent; NULL: none
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p pgtasks.tasks;
    prior text;
    prior_state text;
BEGIN
    IF traceparent IS NOT NULL OR tracestate IS NOT NULL THEN
        -- As in submit_task: the argument is the session setting for this call only.
        PERFORM pgtasks.check_trace_context(traceparent, tracestate);
        prior := current_setting('pgtasks.traceparent', true);
        prior_state := current_setting('pgtasks.tracestate', true);
        PERFORM set_config('pgtasks.traceparent', traceparent, true),
                set_config('pgtasks.tracestate', coalesce(tracestate, ''), true);
        RETURN QUERY
        SELECT s.id, s.created
          FROM pgtasks.submit_or_get(submit_or_get.task_type, submit_or_get.params, submit_or_get.queue,
                                     submit_or_get.priority, submit_or_get.run_at, submit_or_get.max_retries,
                                     submit_or_get.timeout, submit_or_get.backoff_base, submit_or_get.unique_key,
                                     submit_or_get.unique_for, submit_or_get.concurrency_key,
                                     submit_or_get.concurrency_limit, submit_or_get.soft_timeout) s;
        PERFORM set_config('pgtasks.traceparent', coalesce(prior, ''), true),
                set_config('pgtasks.tracestate', coalesce(prior_state, ''), true);
        RETURN;
    END IF;
    p := pgtasks.submit_policy(task_type, queue, priority, run_at, max_retries, timeout, backoff_base,
                               soft_timeout);
    PERFORM pgtasks.check_params(params);
    PERFORM pgtasks.check_flow_args(unique_key, unique_for, concurrency_key, concurrency_limit);
    RETURN QUERY
    SELECT s.id, s.created
      FROM pgtasks.submit_one(p, params, unique_key, unique_for, concurrency_key,
                              CASE WHEN concurrency_key IS NOT NULL THEN coalesce(concurrency_limit, 1) END) s;
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.submit_or_get(text, jsonb, text, integer, timestamptz, integer, interval, interval, text, interval, text, integer, interval, text, text) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_or_get(text, jsonb, text, integer, timestamptz, integer, interval, interval, text, interval, text, integer, interval, text, text) IS
    'Submits one task like submit_task and also says whether it was created: false when an active task, or the unique_for window, already held the unique_key (id is then that task); traceparent (else the session setting pgtasks.traceparent) is the W3C trace context the task''s attempts join, with its tracestate.';

-- retry_task (06_finish.sql) of a FAILED or CANCELLED task whose unique_key another active
-- task of its type has taken meanwhile: PT306 with a hint, instead of the bare unique_violation (23505)
-- of tasks_unique_key. One message for both places retry_task finds the key taken.
CREATE FUNCTION pgtasks.raise_unique_held(t pgtasks.tasks) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    holder bigint;
BEGIN
    SELECT o.id INTO holder FROM pgtasks.tasks o
     WHERE o.task_type = t.task_type AND o.unique_key = t.unique_key
       AND o.status IN ('PENDING', 'COMMIT', 'RUNNING') AND o.id <> t.id
     LIMIT 1;
    RAISE EXCEPTION 'pgtasks: task % cannot be retried: its unique_key % is held by active task %',
            t.id, pg_catalog.quote_literal(t.unique_key), coalesce(holder::text, '(being submitted)')
        USING ERRCODE = 'PT306',
              HINT = 'Wait for the active task with that key to finish, or cancel it, then retry.';
END $$;

------------------------------------------------------------------------------------------
-- The submit functions

-- Submits one task and returns its id. Every argument but task_type may be left out
-- (NULL): the type's policy, else settings. The plain submit (no flow control, no
-- parents) makes no call beyond submit_policy and check_params: it is the hot path of
-- every producer (measured as enqueue_single). With unique_key, unique_for,
-- concurrency_key or concurrency_limit it goes through submit_or_get; with depends_on or
-- on_parent_failure through submit_dependent (10_workflows.sql). A unique key cannot be
-- combined with depends_on: it may return an existing task, which has parents of its own.
CREATE FUNCTION pgtasks.submit_task(
    task_type         text,
    params            jsonb       DEFAULT '{}',
    queue             text        DEFAULT NULL,   -- NULL: the type's policy, else settings
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,   -- NULL: now
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_key        text        DEFAULT NULL,   -- NULL: no uniqueness
    unique_for        interval    DEFAULT NULL,   -- NULL: the key is free once its task finished
    concurrency_key   text        DEFAULT NULL,   -- NULL: no per-key limit
    concurrency_limit integer     DEFAULT NULL,   -- NULL with a key: 1
    depends_on        bigint[]    DEFAULT NULL,   -- parent task ids; NULL: none
    on_parent_failure text        DEFAULT NULL,   -- 'cancel' (NULL) or 'run'
    soft_timeout      interval    DEFAULT NULL,   -- NULL: the type's policy, else none
    traceparent       text        DEFAULT NULL,   -- W3C trace context; NULL: the session's pgtasks.traceparent
    tracestate        text        DEFAULT NULL    -- its W3C tracestate, given with traceparent; NULL: none
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p pgtasks.tasks;
    new_id bigint;
    prior text;
    prior_state text;
BEGIN
    IF traceparent IS NOT NULL OR tracestate IS NOT NULL THEN
        -- Every path below inserts the trace context through the column defaults (the
        -- session settings), so the arguments are put there for this call and the settings
        -- put back after it: a traceparent argument goes with its own tracestate (NULL:
        -- none), never the session's. A submit without them pays two NULL tests.
        PERFORM pgtasks.check_trace_context(traceparent, tracestate);
        prior := current_setting('pgtasks.traceparent', true);
        prior_state := current_setting('pgtasks.tracestate', true);
        PERFORM set_config('pgtasks.traceparent', traceparent, true),
                set_config('pgtasks.tracestate', coalesce(tracestate, ''), true);
        new_id := pgtasks.submit_task(
            task_type => task_type, params => params, queue => queue, priority => priority,
            run_at => run_at, max_retries => max_retries, timeout => timeout,
            backoff_base => backoff_base, unique_key => unique_key, unique_for => unique_for,
            concurrency_key => concurrency_key, concurrency_limit => concurrency_limit,
            depends_on => depends_on, on_parent_failure => on_parent_failure,
            soft_timeout => soft_timeout);
        PERFORM set_config('pgtasks.traceparent', coalesce(prior, ''), true),
                set_config('pgtasks.tracestate', coalesce(prior_state, ''), true);
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
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.submit_task(text, jsonb, text, integer, timestamptz, integer, interval, interval, text, interval, text, integer, bigint[], text, interval, text, text) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_task(text, jsonb, text, integer, timestamptz, integer, interval, interval, text, interval, text, integer, bigint[], text, interval, text, text) IS
    'Submits one task and returns its id. Arguments left out (NULL) take the task type''s registered policy, else the settings defaults; unique_key, concurrency_key and depends_on add flow control and parents; traceparent (else the session setting pgtasks.traceparent) is the W3C trace context the task''s attempts join, with its tracestate.';

-- The part of submit_tasks with unique keys (checked there), as submit_one takes one key,
-- for every key of the call at once. The first item with a key (its leader) takes the
-- key's unique_for window, then is inserted ON CONFLICT on tasks_unique_key; a leader that
-- meets an active task of the key, or a window another submit holds, gets that task; a
-- later item with the same key gets what its leader got (the key is held by then). The
-- items without a key go into the same INSERT, so the insert triggers run once; ids are
-- drawn from the tasks' sequence in list order before it, so the tasks of a call are
-- claimed in list order. A leader whose active task ended between its conflict and the
-- look-up is inserted again, in a second round.
--
-- Its statements join lists as long as the call, so each is planned for the call
-- (plan_cache_mode): a cached generic plan cannot see the arrays and assumes 10 items per
-- list, and a nested loop over two lists of 5,000 took 2 s instead of 0.1. Planning is
-- most of what a call of a few items costs, hence submit_tasks' loop below 10 items.
CREATE FUNCTION pgtasks.submit_keyed(
    p                 pgtasks.tasks,
    params_list       jsonb[],
    unique_keys       text[],
    unique_for        interval,
    concurrency_keys  text[],
    concurrency_limit integer
) RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
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
END $$;

-- Many tasks of one type in one statement: one round trip, one NOTIFY per queue, ids in
-- list order. One unique key and one concurrency key per item (NULL arrays: none; NULL
-- items: none for that item). All items are checked before anything is inserted, each
-- check in one pass over the list (check_params_list; the keys below), and the tasks go in
-- with one INSERT (submit_keyed with unique keys, from 10 items on), so the insert
-- triggers run once per call. Server CPU per item of 10,000: with a concurrency key each,
-- 18 to 20 us when each item's keys were checked by a call of their own, 12 in one pass
-- (as without keys); with a unique key each, 225 to 270 us when each item went through
-- submit_one, an INSERT and so a trigger call of its own, 19 set-based (31 with
-- unique_for, from 500 and more). A per-item check loop once cut a plain enqueue_batch from
-- ~53,000 to ~18,000 tasks/s.
CREATE FUNCTION pgtasks.submit_tasks(
    task_type         text,
    params_list       jsonb[],
    queue             text        DEFAULT NULL,
    priority          integer     DEFAULT NULL,
    run_at            timestamptz DEFAULT NULL,
    max_retries       integer     DEFAULT NULL,
    timeout           interval    DEFAULT NULL,
    backoff_base      interval    DEFAULT NULL,
    unique_keys       text[]      DEFAULT NULL,
    unique_for        interval    DEFAULT NULL,
    concurrency_keys  text[]      DEFAULT NULL,
    concurrency_limit integer     DEFAULT NULL,
    soft_timeout      interval    DEFAULT NULL,
    traceparent       text        DEFAULT NULL,   -- W3C trace context; NULL: the session's pgtasks.traceparent
    tracestate        text        DEFAULT NULL    -- its W3C tracestate, given with traceparent; NULL: none
) RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    p        pgtasks.tasks;
    n        integer;
    suspects integer[];
    item     integer;
    prior    text;
    prior_state text;
BEGIN
    IF traceparent IS NOT NULL OR tracestate IS NOT NULL THEN
        -- As in submit_task: the argument is the session setting for this call only.
        PERFORM pgtasks.check_trace_context(traceparent, tracestate);
        prior := current_setting('pgtasks.traceparent', true);
        prior_state := current_setting('pgtasks.tracestate', true);
        PERFORM set_config('pgtasks.traceparent', traceparent, true),
                set_config('pgtasks.tracestate', coalesce(tracestate, ''), true);
        RETURN QUERY
        SELECT s.id
          FROM pgtasks.submit_tasks(submit_tasks.task_type, submit_tasks.params_list, submit_tasks.queue,
                                    submit_tasks.priority, submit_tasks.run_at, submit_tasks.max_retries,
                                    submit_tasks.timeout, submit_tasks.backoff_base, submit_tasks.unique_keys,
                                    submit_tasks.unique_for, submit_tasks.concurrency_keys,
                                    submit_tasks.concurrency_limit, submit_tasks.soft_timeout) WITH ORDINALITY AS s(id, ord)
         ORDER BY s.ord;
        PERFORM set_config('pgtasks.traceparent', coalesce(prior, ''), true),
                set_config('pgtasks.tracestate', coalesce(prior_state, ''), true);
        RETURN;
    END IF;
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
END $$;
GRANT EXECUTE ON FUNCTION pgtasks.submit_tasks(text, jsonb[], text, integer, timestamptz, integer, interval, interval, text[], interval, text[], integer, interval, text, text) TO pgtasks_submitter;
COMMENT ON FUNCTION pgtasks.submit_tasks(text, jsonb[], text, integer, timestamptz, integer, interval, interval, text[], interval, text[], integer, interval, text, text) IS
    'Submits one task of task_type per element of params_list, in one statement, and returns their ids in list order; unique_keys and concurrency_keys give one key per item; traceparent (else the session setting pgtasks.traceparent) is the W3C trace context every item''s attempts join, with its tracestate.';
