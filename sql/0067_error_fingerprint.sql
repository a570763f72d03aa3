-- pgtasks.error_fingerprint: what failures of one cause share (the error's first line with
-- quoted values, ids, addresses and numbers taken out), by which the dashboard groups the
-- dead letters and a bulk retry picks them. The definition is the topic file's
-- (sql/schema/11_views.sql). A new function only: no lock a claim needs.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE FUNCTION pgtasks.error_fingerprint(error text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT btrim(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
               regexp_replace(regexp_replace(regexp_replace(
                   left(split_part(error, E'\n', 1), 500),
                   $q$'[^']*'|"[^"]*"$q$, '?', 'g'),
                   '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<uuid>', 'g'),
                   '[^\s@<>()?]+@[^\s@<>()?]+\.[A-Za-z]{2,}', '<email>', 'g'),
                   '\m\d{1,3}(\.\d{1,3}){3}(:\d+)?\M', '<ip>', 'g'),
                   '\m(0x[0-9a-fA-F]+|[0-9a-fA-F]{8,})\M', '<hex>', 'g'),
                   '\d+(\.\d+)?', '<n>', 'g'),
               '\s+', ' ', 'g'))
$$;
GRANT EXECUTE ON FUNCTION pgtasks.error_fingerprint(text) TO pgtasks_reader;
COMMENT ON FUNCTION pgtasks.error_fingerprint(text) IS
    'The first line of an error with quoted values, UUIDs, e-mail and IP addresses, hex runs and numbers taken out: what failures of one cause share.';
