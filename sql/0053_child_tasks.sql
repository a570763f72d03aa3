-- Child tasks: a running task spawns children (spawn_children) and waits for them holding
-- nothing (wait_for_children); the end of its last child wakes it, and cancelling it
-- cancels them (settle_children). New: tasks.spawned_by (nullable, no default: no
-- rewrite), the task_spawns table, the task_children view, task_status.spawned_by, and the
-- 'children' kind of task_pauses (its CHECK added NOT VALID, validated by 0055). The index
-- tasks_spawned_unfinished is built concurrently by 0054; until then the probes fall back
-- on a scan, and no task has children before these functions exist.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Bodies are checked when they first run, so a function may call one defined below.
SET LOCAL check_function_bodies = off;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

ALTER TABLE pgtasks.tasks ADD COLUMN spawned_by bigint;

CREATE TABLE pgtasks.task_spawns (
    parent_id bigint NOT NULL REFERENCES pgtasks.tasks (id) ON DELETE CASCADE,
    step      text NOT NULL,
    child_ids bigint[] NOT NULL,
    attempt   integer NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parent_id, step),
    CONSTRAINT spawned_some CHECK (cardinality(child_ids) > 0)
);

-- One row per snooze or event wait: the new CHECK is added NOT VALID (no scan under the
-- lock) and validated by 0055. It admits every kind the old one did, and one more, so no
-- writer loses a guarantee between the drop and the add (one transaction anyway).
-- squawk-ignore ban-drop-constraint
ALTER TABLE pgtasks.task_pauses DROP CONSTRAINT kind_known;
ALTER TABLE pgtasks.task_pauses
    ADD CONSTRAINT kind_known CHECK (kind IN ('snooze', 'event', 'children')) NOT VALID;

CREATE OR REPLACE FUNCTION pgtasks.cancel_children(parents bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET enable_nestloop TO 'on'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.settle_children()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_nestloop TO 'off'
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET jit TO 'off'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.spawn_children(task_id bigint, lease_token text, step text, children jsonb, traceparent text DEFAULT NULL::text)
 RETURNS bigint[]
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.wait_for_children(task_id bigint, lease_token text)
 RETURNS TABLE(state text, results jsonb)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET lock_timeout TO '1s'
AS $function$
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
END $function$;
CREATE OR REPLACE FUNCTION pgtasks.wake_spawners(parents bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgtasks', 'pg_temp'
 SET enable_nestloop TO 'on'
 SET lock_timeout TO '200ms'
AS $function$
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
END $function$;
CREATE OR REPLACE VIEW pgtasks.task_children AS
 SELECT s.parent_id,
    s.step,
    u."position",
    u.child_id,
    c.task_type,
    c.status,
    c.progress_current,
    c.progress_total,
    c.created_at,
    c.finished_at
   FROM ((pgtasks.task_spawns s
     CROSS JOIN LATERAL unnest(s.child_ids) WITH ORDINALITY u(child_id, "position"))
     LEFT JOIN pgtasks.tasks c ON ((c.id = u.child_id)));
CREATE OR REPLACE VIEW pgtasks.task_history AS
 SELECT e.task_id,
    e.at,
    e.from_status,
    e.to_status,
    e.attempt,
    e.worker_id,
    e.db_user,
        CASE p.kind
            WHEN 'snooze'::text THEN format('snoozed until %s'::text, p.until)
            WHEN 'event'::text THEN format('waiting for event %s until %s'::text, p.event_name, p.until)
            WHEN 'children'::text THEN 'waiting for its children'::text
            ELSE NULL::text
        END AS note,
    e.id AS event_id
   FROM (pgtasks.task_events e
     LEFT JOIN pgtasks.task_pauses p ON (((p.task_id = e.task_id) AND (p.attempt = e.attempt) AND (e.from_status = 'RUNNING'::pgtasks.status) AND (e.to_status = 'COMMIT'::pgtasks.status))));
CREATE OR REPLACE VIEW pgtasks.task_status AS
 SELECT id,
    task_type,
    queue,
    status,
    priority,
    attempt,
    ((retry_count || '/'::text) || max_retries) AS retries,
        CASE
            WHEN (progress_total > 0) THEN round(((100.0 * (progress_current)::numeric) / (progress_total)::numeric), 1)
            ELSE NULL::numeric
        END AS percent,
    progress_current,
    progress_total,
    progress_message,
    worker_id,
    run_at,
    created_at,
    started_at,
    finished_at,
    (COALESCE(finished_at, now()) - started_at) AS elapsed,
    result,
    error,
    params,
    schedule,
    schedule_tick,
    workflow_id,
    workflow_node,
    unique_key,
    spawned_by
   FROM pgtasks.tasks t;
COMMENT ON FUNCTION pgtasks.cancel_children(bigint[]) IS 'Cancels the unfinished children of cancelled parents (settle_children calls it).';
COMMENT ON FUNCTION pgtasks.settle_children() IS 'Trigger function: releases, cancels or revives the workflow children of the tasks an UPDATE ended or retried; wakes the parents of spawned children that ended and cancels the children of cancelled parents.';
GRANT EXECUTE ON FUNCTION pgtasks.spawn_children(bigint,text,text,jsonb,text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.spawn_children(bigint,text,text,jsonb,text) IS 'Submits the children (a JSON list of {"type", "params", ...}) of a running attempt as the checkpointed step `step` and returns their ids in list order; a later call of the same step returns the same ids and submits nothing. Fenced: pass the task''s lease token (PT002).';
GRANT EXECUTE ON FUNCTION pgtasks.wait_for_children(bigint,text) TO pgtasks_worker;
COMMENT ON FUNCTION pgtasks.wait_for_children(bigint,text) IS 'Returns (done, [outcome of each child in spawn order]) once every child of the running task has ended, else ends the attempt without spending a retry ((waiting, NULL): RUNNING -> COMMIT until the last child ends). Fenced: pass the task''s lease token (PT002).';
COMMENT ON FUNCTION pgtasks.wake_spawners(bigint[]) IS 'Makes the parents waiting in wait_for_children whose children have all ended claimable now (settle_children calls it).';
GRANT SELECT ON TABLE pgtasks.task_children TO pgtasks_reader;
COMMENT ON VIEW pgtasks.task_children IS 'The children spawned by every task (spawn_children), one row each: the spawn step, the position in it, the child''s id, type, status and progress. WHERE parent_id = $1 ORDER BY child_id lists one task''s children in spawn order.';
COMMENT ON VIEW pgtasks.task_history IS 'Every status change of every task: when, from and to which status, in which attempt, by which worker and login role; note says when the change was a snooze or a wait for an event or for its children.';
COMMENT ON TABLE pgtasks.task_pauses IS 'One row per attempt that ended in a snooze or a wait for an event or for its children: what it waits for and until when. Pruned with its task.';
COMMENT ON TABLE pgtasks.task_spawns IS 'One row per spawn of child tasks (spawn_children): the parent, the spawn step''s name and the children''s ids in spawn order. Pruned with the parent.';
COMMENT ON COLUMN pgtasks.task_spawns.attempt IS 'The parent''s attempt that spawned them.';
COMMENT ON COLUMN pgtasks.task_status.spawned_by IS 'The task that spawned this one as a child (spawn_children); its children are in task_children.';
COMMENT ON COLUMN pgtasks.tasks.spawned_by IS 'The task whose running attempt spawned this one as a child (spawn_children); NULL for other tasks.';
