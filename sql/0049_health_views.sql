-- Three read views (sql/schema/11_views.sql): replica_lag, how stale the server answering
-- is (the dashboard, `pgtasks serve` and the CLI show it when they read from a replica);
-- table_health, dead rows and vacuums of each pgtasks table; xmin_horizon, what holds the
-- MVCC horizon back. /metrics exports the last two. New views only.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;


-- How far behind its primary the server answering is: what the dashboard, `pgtasks serve`
-- and the read-only CLI commands show when they read from a replica
-- (PGTASKS_READ_DATABASE_URL). One row; on a primary, in_recovery is false and the lag 0.
--
-- lag_seconds is 0 while a WAL receiver runs and has replayed everything it received:
-- the replica then holds every commit the primary has sent, so an idle primary does not
-- make it look stale (`now() - pg_last_xact_replay_timestamp()` alone would grow by a
-- second every second the primary commits nothing). Otherwise (replay behind what was
-- received, replay paused, or no WAL receiver: the primary is unreachable) it is the age
-- of the last commit replayed, which keeps growing while the replica is cut off. NULL
-- when no transaction was replayed since the replica started and it is not caught up.
-- A silent network partition is seen once wal_receiver_timeout (60 s by default) ends
-- the receiver. The age compares this server's clock with the primary's commit
-- timestamps, so clock skew between them adds to it. Real time (clock_timestamp()), not
-- pgtasks.now(): the replay timestamps are real time, whatever the test clock says.
CREATE VIEW pgtasks.replica_lag AS
SELECT r.in_recovery,
       r.receiving,
       r.last_replayed_commit_at,
       CASE WHEN NOT r.in_recovery THEN 0::float8
            WHEN r.receiving AND r.received_lsn IS NOT NULL
                 AND r.received_lsn <= r.replayed_lsn THEN 0::float8
            ELSE greatest(extract(epoch FROM clock_timestamp() - r.last_replayed_commit_at)::float8, 0)
       END AS lag_seconds
  FROM (SELECT pg_is_in_recovery() AS in_recovery,
               -- pid is the one column of pg_stat_wal_receiver that every role can read.
               EXISTS (SELECT FROM pg_stat_wal_receiver w WHERE w.pid IS NOT NULL) AS receiving,
               pg_last_wal_receive_lsn() AS received_lsn,
               pg_last_wal_replay_lsn() AS replayed_lsn,
               pg_last_xact_replay_timestamp() AS last_replayed_commit_at) r;
GRANT SELECT ON pgtasks.replica_lag TO pgtasks_reader;
COMMENT ON VIEW pgtasks.replica_lag IS
    'How stale this server is against its primary: lag_seconds 0 on a primary and on a '
    'replica that has replayed all it received from a live WAL receiver, else the age of '
    'the last replayed commit (NULL when none was replayed since start).';

-- Per pgtasks table: live and dead rows, the last vacuum, sizes and the age of its oldest
-- unfrozen transaction id, from the statistics every role can read. Dead rows that pile
-- up between vacuums are what slows claims (docs/operations.md); the counts are the
-- server's own, so on a replica (whose statistics count nothing replay does) they are
-- read from the primary.
CREATE VIEW pgtasks.table_health AS
SELECT c.relname::text AS table_name,
       s.n_live_tup AS live_tuples,
       s.n_dead_tup AS dead_tuples,
       s.n_mod_since_analyze AS modified_since_analyze,
       greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum_at,
       extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8
           AS seconds_since_vacuum,
       s.vacuum_count + s.autovacuum_count AS vacuums,
       pg_table_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS index_bytes,
       age(c.relfrozenxid) AS frozenxid_age
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_stat_all_tables s ON s.relid = c.oid
 WHERE n.nspname = 'pgtasks' AND c.relkind = 'r';
GRANT SELECT ON pgtasks.table_health TO pgtasks_reader;
COMMENT ON VIEW pgtasks.table_health IS
    'Per pgtasks table: live and dead rows, rows changed since the last analyze, the last '
    'vacuum (manual or auto), vacuum count, table and index bytes and the age of '
    'relfrozenxid. The server''s own statistics: read them on the primary.';

-- What holds the MVCC horizon back, by source: the oldest xmin (in transactions, age())
-- that keeps vacuum from removing the dead rows newer than it, and, where the source
-- says, how long it has been held. While one of these is old, autovacuum runs and removes
-- nothing. What a role can see: every transaction holding an xid (pg_locks), prepared
-- transactions and replication slots; the snapshots of other roles' sessions (a
-- REPEATABLE READ reader holds one without an xid) only with pg_read_all_stats
-- (pg_monitor), which is what to grant the role that scrapes /metrics. A session's own
-- query is left out.
CREATE VIEW pgtasks.xmin_horizon AS
SELECT 'session'::text AS source,
       coalesce(max(age(a.backend_xmin)), 0) AS xmin_age,
       coalesce(max(extract(epoch FROM now() - a.xact_start)), 0)::float8 AS held_seconds
  FROM pg_stat_activity a
 WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()
UNION ALL
SELECT 'transaction', coalesce(max(age(l.transactionid)), 0), NULL
  FROM pg_locks l
 WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
   AND l.pid <> pg_backend_pid()
UNION ALL
SELECT 'prepared', coalesce(max(age(p.transaction)), 0),
       coalesce(max(extract(epoch FROM now() - p.prepared)), 0)::float8
  FROM pg_prepared_xacts p
UNION ALL
SELECT 'replication_slot', coalesce(max(age(r.xmin)), 0), NULL
  FROM pg_replication_slots r
 WHERE r.xmin IS NOT NULL;
GRANT SELECT ON pgtasks.xmin_horizon TO pgtasks_reader;
COMMENT ON VIEW pgtasks.xmin_horizon IS
    'The oldest xmin holding back vacuum, by source (session, transaction, prepared, '
    'replication_slot): its age in transactions and, for sessions and prepared '
    'transactions, seconds held. Other roles'' sessions need pg_read_all_stats to be seen.';
