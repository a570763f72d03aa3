-- pgtasks: a task queue and long-running-task framework inside PostgreSQL.
--
-- These files are the current schema, one topic per file, in reading order. A new database
-- is built by running them in name order in one transaction (pgtasks/migrations.py); the
-- numbered files in sql/ only bring an older database to the same catalog, and
-- tests/test_catalog.py proves the two equal. Every rule that keeps a task safe is a
-- function, a trigger or a constraint here, so psql, a Go service, a Node worker and the
-- Python worker get the same guarantees. docs/sql-api.md documents the API.
--
-- The model
-- ---------
-- A task is one row of pgtasks.tasks. Its status is one of
--
--   WAITING    submitted with parents (depends_on, or a workflow node) that have not all
--              ended; no claim looks at it
--   PENDING    ready to run at run_at
--   RUNNING    claimed: a worker holds a lease on it, and the random lease token its
--              claim drew is the secret every later call of the attempt must present
--   COMMIT     has committed state (checkpoints, attempts) and waits to continue: after a
--              checkpoint and yield, a retryable error (run_at = now + backoff), an expired
--              lease (its worker died) or a shutdown hand-back. Claimable like PENDING
--   DONE       finished with a result                                         (terminal)
--   FAILED     final error: retries used up or not retryable; error and every attempt's
--              traceback are kept (the dead letters)                          (terminal)
--   CANCELLED  cancelled by an operator, by its workflow, or because a parent ended FAILED
--              or CANCELLED                                                    (terminal)
--
-- The life of a task:
--
--   submit ─▶ PENDING ─claim─▶ RUNNING ─finish──────▶ DONE
--     │          ▲               │  ▲  └─final error─▶ FAILED
--     ▼          │               ▼  │ claim
--   WAITING ─────┘             COMMIT        (yield, retryable error, lease expired,
--       (its last parent ended)               shutdown hand-back)
--
--   cancel:     WAITING, PENDING, COMMIT, RUNNING ─▶ CANCELLED
--   retry_task: FAILED, CANCELLED ─▶ PENDING (WAITING while a parent is unfinished)
--
-- pgtasks.transitions lists every allowed pair with its reason; the triggers of
-- 03_state_machine.sql refuse every other one, whoever writes the row.
--
-- Who calls what
-- --------------
-- Nobody but pgtasks_owner touches a table. The other roles call functions, which run as
-- the owner (SECURITY DEFINER, search_path pinned), and read views:
--
--   pgtasks_submitter  submit_task, submit_tasks, submit_or_get, submit_workflow,
--                      watch_task / unwatch_task (a client waiting for a result);
--                      task_overview, queue_stats, queues, transitions, registered_types
--   pgtasks_worker     claim_tasks, heartbeat, checkpoint, log, log_many, report_progress,
--                      finish_task(s), finish_and_claim, fail_task, yield_task, maintain,
--                      firing schedules, spawn_children / wait_for_children (child tasks);
--                      and everything a submitter may (follow-up tasks)
--   pgtasks_reader     every view, task details and history included
--   pgtasks_admin      configure, queue and schedule settings, cancel_task, retry_task,
--                      cancel_workflow; and everything a worker and a reader may
--
-- 12_roles.sql sums up, role by role, what each may read, write and delay.
--
-- Where each rule lives
-- ---------------------
--   00_overview.sql       this map; the roles, the schema, its default privileges
--   01_tables.sql         the status type and every table: the per-state CHECK constraints,
--                         the partial indexes each hot path walks, the settings row
--   02_checks.sql         argument checks and limits shared by every entry point, the
--                         settings (configure) and the backoff
--   03_state_machine.sql  the allowed transitions, the history of every change, the
--                         wake-up and finish notifications (one trigger per job), watch_task
--   04_submit.sql         task types and their policies, submit_task and friends, unique keys
--   05_claim.sql          the pick, claim_tasks, next_run_at, the fencing locks
--   06_finish.sql         what a running attempt writes: finish, fail, yield, checkpoints,
--                         progress, logs; and the operator's cancel_task and retry_task
--   07_leases.sql         heartbeats, the worker registry, rescue of expired leases, pruning
--   08_flow_control.sql   queue limits, rates, pauses, per-key concurrency (claim_limited)
--   09_schedules.sql      cron and `every` schedules, exactly one task per tick
--   10_workflows.sql      dependencies and workflows: WAITING, release, cancel on failure
--                         (the trigger settle_children); child tasks a running task spawns
--                         and waits for
--   11_views.sql          the read views for psql, the API, the dashboard and /metrics
--   12_roles.sql          who may do what, role by role
--
-- SQLSTATEs raised by pgtasks are of class PT (docs/sql-api.md lists them): PT001..PT004
-- the state machine and fencing, PT1xx a bad argument (one code per argument), PT2xx
-- hardening and limits, PT3xx flow control, PT4xx schedules, PT5xx workflows. Every one
-- comes with a HINT that says what to do.

-- Names in these files resolve in pg_catalog first, whatever the migrating session set:
-- constraint and trigger expressions are parsed now, with this path, and stored resolved,
-- so no function or operator planted in another schema can ever stand in for a built-in.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;

------------------------------------------------------------------------------------------
-- Roles
--
-- NOLOGIN group roles: pgtasks_owner owns every object; applications log in as their own
-- roles and are granted one of the other four. Roles are cluster-wide, so they are created
-- only when missing (each database of the cluster installs on its own), and a database
-- being installed at the same moment may create them under our feet.

DO $roles$
DECLARE
    wanted constant text[] := ARRAY['pgtasks_owner', 'pgtasks_submitter', 'pgtasks_worker',
                                    'pgtasks_reader', 'pgtasks_admin'];
    r text;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(wanted) w WHERE w NOT IN (SELECT rolname FROM pg_roles))
       AND NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'pgtasks: installing pgtasks creates the roles %, and % may not create roles',
                array_to_string(wanted, ', '), current_user
            USING ERRCODE = 'PT205',
                  HINT = 'Run `pgtasks migrate` once as a superuser or a role with CREATEROLE, '
                         'or have an administrator run: CREATE ROLE pgtasks_owner NOLOGIN; '
                         'CREATE ROLE pgtasks_submitter NOLOGIN; CREATE ROLE pgtasks_worker NOLOGIN; '
                         'CREATE ROLE pgtasks_reader NOLOGIN; CREATE ROLE pgtasks_admin NOLOGIN; '
                         'GRANT pgtasks_owner TO <migrating role>;';
    END IF;
    FOREACH r IN ARRAY wanted LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of this cluster installing at the same moment made it
            END;
        END IF;
    END LOOP;
END $roles$;

-- Memberships: a worker submits follow-up tasks; an admin can do all a worker and a reader
-- can. Granted only when missing: two databases installing at once may collide on the
-- catalog row, so each grant tolerates that.
DO $members$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM (VALUES ('pgtasks_submitter', 'pgtasks_worker'),
                                   ('pgtasks_worker', 'pgtasks_admin'),
                                   ('pgtasks_reader', 'pgtasks_admin')) AS v(grp, member)
    LOOP
        IF NOT pg_has_role(g.member, g.grp, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', g.grp, g.member);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL;
            END;
        END IF;
    END LOOP;
    -- A migrating role that is not a superuser creates everything as pgtasks_owner (SET ROLE
    -- below), which needs membership in it, and the schema's owner needs CREATE on the
    -- database.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        IF NOT pg_has_role(current_user, 'pgtasks_owner', 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT pgtasks_owner TO %I', current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                -- The roles exist but another role created them (PostgreSQL 16+: only
                -- their creator or a superuser may grant them).
                RAISE EXCEPTION 'pgtasks: % must be a member of pgtasks_owner to hand it the pgtasks objects',
                        current_user
                    USING ERRCODE = 'PT205',
                          HINT = format('An administrator runs: GRANT pgtasks_owner TO %I; then migrate again.',
                                        current_user);
            END;
        END IF;
        EXECUTE format('GRANT CREATE ON DATABASE %I TO pgtasks_owner', current_database());
    END IF;
END $members$;

------------------------------------------------------------------------------------------
-- The schema and what every object created in it starts with

CREATE SCHEMA pgtasks AUTHORIZATION pgtasks_owner;
COMMENT ON SCHEMA pgtasks IS
    'pgtasks, a task queue inside PostgreSQL: call its functions and read its views (docs/sql-api.md); only its owner touches the tables.';

-- From here on, and in every following file, everything is created by pgtasks_owner, so
-- pgtasks_owner owns it: no ownership pass afterwards.
SET LOCAL ROLE pgtasks_owner;

-- The group roles may name the schema's objects; what they may do with them is granted
-- object by object, on each definition.
GRANT USAGE ON SCHEMA pgtasks TO pgtasks_submitter, pgtasks_worker, pgtasks_reader, pgtasks_admin;

-- PostgreSQL lets PUBLIC execute every new function. No pgtasks function is for PUBLIC:
-- each one starts with EXECUTE for its owner alone, and the files grant it to the roles
-- that call it.
ALTER DEFAULT PRIVILEGES FOR ROLE pgtasks_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
