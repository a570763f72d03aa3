-- pgtasks 0014: no JIT for functions that turn a planner method off.
--
-- claim_tasks (SET enable_sort = off, enable_bitmapscan = off, see 0002) and record_updates
-- (SET enable_nestloop = off, 0013) steer the planner by disabling methods. Before
-- PostgreSQL 18 a disabled method is not forbidden, it costs 1e10 more ("disable_cost"),
-- and a plan that still needs one -- 0008's claim sorts its batch of claimed rows -- costs
-- far above jit_above_cost (100,000). With JIT on (the default wherever the server has
-- LLVM support, e.g. Debian's and the PGDG packages) every such statement is compiled on
-- every call.
--
-- Measured on Debian's PostgreSQL 15.18 (jit = on, the default), one session claiming and
-- finishing (`python -m bench.jit --dsn URL`): a claim of 100 took 157 ms with 0008 and
-- 5 ms with jit = off; a claim of 1, 149 ms vs 1.4 ms. Up to 0007 (no sort in the claim)
-- it was 5.9 ms either way. The embedded server of the tests and of `make bench` is
-- PostgreSQL 18, which counts disabled nodes instead of adding to the cost and has no JIT
-- provider, so neither saw it.
--
-- secure_objects, which every migration ends with, now sets jit = off on each function
-- whose settings turn a planner method off, so later functions that do the same get it
-- too (tests/sql/test_hardening.py checks it). JIT only pays off for long analytical
-- queries; nothing in pgtasks is one.

CREATE OR REPLACE PROCEDURE pgtasks.secure_objects()
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    o record;
BEGIN
    EXECUTE 'ALTER SCHEMA pgtasks OWNER TO pgtasks_owner';
    -- Tables, views and sequences not tied to a column (identity sequences follow their table).
    FOR o IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
              WHERE c.relnamespace = 'pgtasks'::regnamespace
                AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.deptype IN ('a', 'i'))
                AND pg_get_userbyid(c.relowner) <> 'pgtasks_owner'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO pgtasks_owner',
                       CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, o.rel);
    END LOOP;
    FOR o IN SELECT t.oid::regtype AS typ FROM pg_type t
              WHERE t.typnamespace = 'pgtasks'::regnamespace AND t.typtype IN ('e', 'd', 'c')
                AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
                AND pg_get_userbyid(t.typowner) <> 'pgtasks_owner'
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO pgtasks_owner', o.typ);
    END LOOP;
    -- Every function runs as its owner with a search_path nobody else can write to. Only
    -- this procedure stays SECURITY INVOKER (see above).
    FOR o IN SELECT p.oid::regprocedure AS fn, p.prokind FROM pg_proc p
              WHERE p.pronamespace = 'pgtasks'::regnamespace AND p.proname <> 'secure_objects'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO pgtasks_owner',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
        EXECUTE format('ALTER %s %s SECURITY DEFINER SET search_path = pg_catalog, pgtasks, pg_temp',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
        EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
    END LOOP;
    -- A function that turns a planner method off (enable_sort, enable_nestloop ...) also
    -- turns JIT off (0014: why).
    FOR o IN SELECT p.oid::regprocedure AS fn, p.prokind FROM pg_proc p
              WHERE p.pronamespace = 'pgtasks'::regnamespace
                AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'enable\_%=off')
                AND NOT 'jit=off' = ANY (p.proconfig)
    LOOP
        EXECUTE format('ALTER %s %s SET jit = off',
                       CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.fn);
    END LOOP;
    EXECUTE 'REVOKE ALL ON PROCEDURE pgtasks.secure_objects() FROM PUBLIC';
    -- Functions a later migration creates as pgtasks_owner start without PUBLIC EXECUTE.
    EXECUTE 'ALTER DEFAULT PRIVILEGES FOR ROLE pgtasks_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC';
    EXECUTE 'REVOKE ALL ON SCHEMA pgtasks FROM PUBLIC';
    EXECUTE 'GRANT USAGE ON SCHEMA pgtasks TO pgtasks_submitter, pgtasks_worker, pgtasks_reader, pgtasks_admin';
    CALL pgtasks.grant_roles();
END $$;

CALL pgtasks.secure_objects();
