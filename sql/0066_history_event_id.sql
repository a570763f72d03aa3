-- pgtasks.task_history gains event_id (appended: CREATE OR REPLACE VIEW may only append), so
-- a live follower reads the changes after the last one it saw and misses none, however
-- briefly a status lasted. The definition is the topic file's (sql/schema/11_views.sql).
-- A view only: no lock a claim needs is held beyond a moment.
SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;
-- Created by, and so owned by, pgtasks_owner.
SET LOCAL ROLE pgtasks_owner;

CREATE OR REPLACE VIEW pgtasks.task_history AS
SELECT e.task_id, e.at, e.from_status, e.to_status, e.attempt, e.worker_id, e.db_user,
       e.id AS event_id
  FROM pgtasks.task_events e;
COMMENT ON COLUMN pgtasks.task_history.event_id IS
    'Orders a task''s changes as they committed: WHERE task_id = $1 AND event_id > $2 ORDER BY event_id reads those after one seen.';
