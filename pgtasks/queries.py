"""Every SQL statement the Python side sends, by name.

Each one calls a pgtasks function or reads a pgtasks view, with named arguments, so a reader
sees what each value is without counting `$n`s, and the SQL API stays the only interface:
no statement here reads a table that a function or view covers. The worker, the client and
the CLI import from this module; none of them writes SQL of its own.

Name resolution: every pgtasks object is named with its schema, and so is each built-in
function that a planted one could out-match through search_path (a polymorphic or "any"
argument, such as array_agg, unnest, count, jsonb_agg: a `public.array_agg(text)` is a
closer match than `pg_catalog.array_agg(anynonarray)`). The operators between pgtasks
types (`status = $1`, `status IN (...)`) are left as written, readable: they are safe
because every connection these statements run on pins its search_path (pgtasks.db,
SEARCH_PATH). The submit statements, which also run on a caller's own connection
(`Client.submit(connection=...)`), resolve nothing through search_path at all.
"""

from __future__ import annotations

# -- submitting ----------------------------------------------------------------------------

# A NULL argument is decided by the database: the type's registered policy, else settings.
# traceparent and tracestate, in every submit below, are the submitter's W3C trace context
# (pgtasks.tracing), NULL outside a span (the database then takes the session's
# pgtasks.traceparent and pgtasks.tracestate).
# Params travel as JSON text, so a connection with other jsonb codecs than ours (SQLAlchemy's
# asyncpg dialect, joining the caller's transaction) sends them the same way.
SUBMIT_TASK = """
SELECT pgtasks.submit_task(task_type => $1, params => $2::text::jsonb, queue => $3,
                           priority => $4, run_at => $5, max_retries => $6, timeout => $7,
                           backoff_base => $8, soft_timeout => $9,
                           traceparent => $10, tracestate => $11)
"""

# Params travel as a few JSON arrays of up to 1,000 objects each (Client.submit_many), which
# the server parses as one document apiece and flattens into params_list in input order; ids
# come back as one bigint[] in input order. Per item of a batch of 10,000 small params
# (server CPU): 0.36 us, against 2.0 us for 10,000 JSON texts cast to jsonb[] one by one
# and 0.75 for one document of 10,000 (which outgrows the CPU caches). Every function is
# named with its schema (the caller's own connection may have any search_path).
SUBMIT_TASKS = """
SELECT pg_catalog.array_agg(s.id ORDER BY s.ord)
  FROM pgtasks.submit_tasks(
         task_type => $1,
         params_list => ARRAY(SELECT e.params
                                FROM pg_catalog.unnest($2::text[]) WITH ORDINALITY AS d(doc, n),
                                     pg_catalog.jsonb_array_elements(d.doc::jsonb)
                                       WITH ORDINALITY AS e(params, ord)
                               ORDER BY d.n, e.ord),
         queue => $3, priority => $4, run_at => $5, max_retries => $6, timeout => $7,
         backoff_base => $8, unique_keys => $9, unique_for => $10, concurrency_keys => $11,
         concurrency_limit => $12, soft_timeout => $13, traceparent => $14,
         tracestate => $15)
       WITH ORDINALITY AS s(id, ord)
"""

# submit_task plus flow control; `created` is false when an active task (or the unique_for
# window) already held the unique key, and `id` is then that task's.
SUBMIT_OR_GET = """
SELECT id, created
  FROM pgtasks.submit_or_get(task_type => $1, params => $2::text::jsonb, queue => $3,
                             priority => $4, run_at => $5, max_retries => $6, timeout => $7,
                             backoff_base => $8, unique_key => $9, unique_for => $10,
                             concurrency_key => $11, concurrency_limit => $12,
                             soft_timeout => $13, traceparent => $14, tracestate => $15)
"""

# A task that starts after its parents end (sql/0012): WAITING until the last one does.
SUBMIT_DEPENDENT = """
SELECT pgtasks.submit_task(task_type => $1, params => $2::text::jsonb, queue => $3,
                           priority => $4, run_at => $5, max_retries => $6, timeout => $7,
                           backoff_base => $8, concurrency_key => $9, concurrency_limit => $10,
                           depends_on => $11, on_parent_failure => $12, soft_timeout => $13,
                           traceparent => $14, tracestate => $15)
"""

# A whole graph in one call (pgtasks/workflows.py builds the spec); returns
# {"workflow_id": ..., "nodes": {name: task id}} as JSON text. Every node carries the trace context.
SUBMIT_WORKFLOW = """
SELECT pgtasks.submit_workflow(spec => $1::text::jsonb, traceparent => $2, tracestate => $3)::text
"""

# -- reading (views) -----------------------------------------------------------------------

GET_TASK = "SELECT * FROM pgtasks.task_status WHERE id = $1"

LIST_TASKS = """
SELECT * FROM pgtasks.task_status
 WHERE ($1::pgtasks.status IS NULL OR status = $1::pgtasks.status)
   AND ($2::text IS NULL OR queue = $2)
   AND ($3::text IS NULL OR task_type = $3)
   AND ($4::bigint IS NULL OR id < $4)
 ORDER BY id DESC LIMIT $5
"""

TASK_LOGS = "SELECT * FROM pgtasks.task_log_lines WHERE task_id = $1 AND id > $2 ORDER BY id"

# A follower's status changes after the last one it saw (event_id orders them as they
# committed; task_events_task serves both), and where it starts.
TASK_CHANGES_AFTER = """
SELECT * FROM pgtasks.task_history WHERE task_id = $1 AND event_id > $2 ORDER BY event_id
"""
TASK_LAST_CHANGE = "SELECT coalesce(max(event_id), 0) FROM pgtasks.task_history WHERE task_id = $1"

# One page of tasks and the total that match, in one statement: the count row is joined to
# the page, so a page past the end still says the total (one row with NULL task columns).
# The error is cut short here: a list shows its first line, the detail shows it all.
TASK_PAGE = """
WITH f AS (
    SELECT id, task_type, queue, status, priority, attempt, retries, percent,
           progress_current, progress_total, progress_message, worker_id, run_at,
           created_at, started_at, finished_at, elapsed, left(error, 200) AS error,
           unique_key
      FROM pgtasks.task_status
     WHERE ($1::pgtasks.status IS NULL OR status = $1::pgtasks.status)
       AND ($2::text IS NULL OR queue = $2)
       AND ($3::text IS NULL OR task_type = $3))
SELECT n.total, p.*
  FROM (SELECT pg_catalog.count(*) AS total FROM f) n
  LEFT JOIN LATERAL (SELECT * FROM f ORDER BY CASE WHEN $4 THEN id END, id DESC
                      LIMIT $5 OFFSET $6) p ON true
"""

# Everything about one task in one statement: its row, every attempt's error, its steps
# (through task_step_names, so a pgtasks_reader role can read it).
TASK_DETAIL = """
SELECT s.*,
       (SELECT coalesce(pg_catalog.jsonb_agg(
                            pg_catalog.jsonb_build_object('attempt', e.attempt,
                                                          'error', e.error,
                                                          'traceback', e.traceback,
                                                          'at', e.at)
                            ORDER BY e.attempt), '[]'::jsonb)
          FROM pgtasks.task_attempt_errors e WHERE e.task_id = s.id) AS errors,
       ARRAY(SELECT st.name FROM pgtasks.task_step_names st
              WHERE st.task_id = s.id ORDER BY st.at, st.name) AS steps
  FROM pgtasks.task_status s WHERE s.id = $1
"""

TASK_LOGS_PAGE = """
SELECT * FROM pgtasks.task_log_lines WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3
"""

TASK_HISTORY = "SELECT * FROM pgtasks.task_history WHERE task_id = $1 ORDER BY at, to_status"

TASK_ERRORS = """
SELECT attempt, error, traceback, at FROM pgtasks.task_attempt_errors
 WHERE task_id = $1 ORDER BY attempt
"""

QUEUE_STATS = "SELECT * FROM pgtasks.queue_stats ORDER BY queue"

# Settings (limits, pause) next to live counts, one row per queue.
QUEUES = "SELECT * FROM pgtasks.queues ORDER BY queue"

FAILED_TASKS = """
SELECT id, task_type, queue, attempt, error_count, finished_at, error
  FROM pgtasks.failed_tasks
 WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR task_type = $2)
 ORDER BY finished_at DESC, id DESC LIMIT $3
"""

WORKERS = """
SELECT *, now() - last_seen AS seen_ago FROM pgtasks.workers
 WHERE $1 OR alive ORDER BY alive DESC, started_at
"""

# Everything /metrics shows, one row of the pgtasks.metrics view (sql/0007) read at scrape
# time, so it is right however many workers run. The view also says the run-time window and
# bucket bounds it counted with.
METRICS = "SELECT * FROM pgtasks.metrics"

# How stale the server answering is (sql/0049): `stale` once its lag is above $1 seconds,
# or unknown, on a replica; a primary is never stale.
REPLICA_LAG = """
SELECT l.in_recovery, l.receiving, l.last_replayed_commit_at, l.lag_seconds,
       l.in_recovery AND (l.lag_seconds IS NULL OR l.lag_seconds > $1::float8) AS stale
  FROM pgtasks.replica_lag l"""

# Dead rows and vacuums per pgtasks table, and what holds the MVCC horizon back
# (sql/0049): the server's own statistics, so /metrics reads them on the primary.
HEALTH = """
SELECT (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(t) ORDER BY t.table_name),
                        '[]'::jsonb)
          FROM pgtasks.table_health t) AS tables,
       (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(h) ORDER BY h.source),
                        '[]'::jsonb)
          FROM pgtasks.xmin_horizon h) AS xmin_horizon"""

# The enum's own labels (tests check Python's one copy against them).
STATUSES = "SELECT pg_catalog.enum_range(NULL::pgtasks.status)::text[]"

REGISTERED_TYPES = "SELECT * FROM pgtasks.registered_types ORDER BY task_type"

# Deployment-wide defaults (lease, retention, ...), defined once in the database.
SETTINGS = "SELECT * FROM pgtasks.current_settings()"

# Workflows (sql/0012): the view's row, the graph (tasks and their parents), results.
WORKFLOW = "SELECT * FROM pgtasks.workflows WHERE id = $1"
WORKFLOWS = "SELECT * FROM pgtasks.workflows ORDER BY id DESC LIMIT $1"
WORKFLOW_GRAPH = "SELECT * FROM pgtasks.workflow_graph(workflow_id => $1)"
TASKS_BY_ID = "SELECT * FROM pgtasks.task_status WHERE id = ANY($1::bigint[]) ORDER BY id"

# -- operator actions ----------------------------------------------------------------------

CANCEL_TASK = "SELECT pgtasks.cancel_task(task_id => $1)"
SEND_EVENT = "SELECT pgtasks.send_event(task_id => $1, name => $2, payload => $3)"
# A task's children in spawn order (pgtasks.task_children), for the dashboard's tree.
TASK_CHILDREN = """
SELECT child_id, step, position, task_type, status, progress_current, progress_total
  FROM pgtasks.task_children WHERE parent_id = $1 ORDER BY child_id LIMIT $2
"""

TASK_INBOX = """
SELECT name, payload, sent_at, sent_by, waited_at, wait_until FROM pgtasks.task_inbox
 WHERE task_id = $1 ORDER BY coalesce(sent_at, waited_at), name
"""

# Flow control (docs/flow-control.md). configure_queue replaces all limits (NULL: none).
CONFIGURE_QUEUE = """
SELECT pgtasks.configure_queue(queue => $1, max_running => $2, rate_limit => $3,
                               rate_period => coalesce($4, interval '1 second'))
"""
PAUSE_QUEUE = "SELECT pgtasks.pause_queue(queue => $1)"
RESUME_QUEUE = "SELECT pgtasks.resume_queue(queue => $1)"
RETRY_TASK = "SELECT pgtasks.retry_task(task_id => $1)"
CANCEL_WORKFLOW = "SELECT pgtasks.cancel_workflow(workflow_id => $1)"
WATCH_TASK = "SELECT pgtasks.watch_task(task_id => $1)"
UNWATCH_TASK = "SELECT pgtasks.unwatch_task(task_id => $1)"

# -- worker: registry ----------------------------------------------------------------------

REGISTER_WORKER = """
SELECT pgtasks.register_worker(worker_id => $1, host => $2, pid => $3, queues => $4,
                               concurrency => $5, lease => $6, code_versions => $7,
                               compatible_versions => $8)
"""
UNREGISTER_WORKER = "SELECT pgtasks.unregister_worker(worker_id => $1)"

# A type's whole policy (NULL: no policy of its own there, settings apply); upsert.
REGISTER_TASK_TYPE = """
SELECT pgtasks.register_task_type(task_type => $1, queue => $2, priority => $3,
                                  max_retries => $4, timeout => $5, backoff_base => $6,
                                  worker_id => $7, soft_timeout => $8)
"""

# -- worker: claiming and outcomes ---------------------------------------------------------

CLAIM_TASKS = """
SELECT * FROM pgtasks.claim_tasks(worker_id => $1, queues => $2, max_tasks => $3,
                                  lease => $4, task_types => $5)
"""

# How long the producer may sleep: until the next scheduled task (NULL: none at all).
NEXT_RUN_GAP = "SELECT pgtasks.next_run_at(queues => $1, task_types => $2) - now() AS gap"

# Every call about a running task presents the lease token its claim returned (the fence;
# the attempt number is only a counter for people).
#
# Results travel as JSON text: a list result passed as a jsonb[] element would be read as a
# nested array dimension and mangled.
FINISH_TASKS = """
SELECT * FROM pgtasks.finish_tasks(task_ids => $1, lease_tokens => $2,
                                   results => $3::text[]::jsonb[])
"""

# The backoff comes from the row's own backoff_base, as in rescue (retry_delay: exact).
FAIL_TASK = """
SELECT pgtasks.fail_task(task_id => $1, lease_token => $2, error => $3, traceback => $4,
                         retryable => $5, retry_delay => $6)
"""

# Results in, work out, in one round trip: rows with rejected_task_id set are results the
# database refused (stale token); the others are claimed tasks, in claim order.
FINISH_AND_CLAIM = """
SELECT * FROM pgtasks.finish_and_claim(worker_id => $1, task_ids => $2, lease_tokens => $3,
                                       results => $4::text[]::jsonb[], claim_max => $5,
                                       queues => $6, lease => $7, task_types => $8)
"""

YIELD_TASK = (
    "SELECT pgtasks.yield_task(task_id => $1, lease_token => $2, run_at => coalesce($3, now()))"
)

SNOOZE_TASK = "SELECT pgtasks.snooze_task(task_id => $1, lease_token => $2, delay => $3)"

# The first attempt of a task submitted outside any trace records its span's context
# (pgtasks.tracing), when tracing is on and the attempt hands the task on to another.
RECORD_TRACE = "SELECT pgtasks.record_trace(task_id => $1, lease_token => $2, traceparent => $3)"

HEARTBEAT = """
SELECT * FROM pgtasks.heartbeat(worker_id => $1, task_ids => $2, lease_tokens => $3,
                                lease => $4)
"""

HAND_BACK_UNHELD = (
    "SELECT task_id FROM pgtasks.hand_back_unheld(worker_id => $1, held_task_ids => $2)"
)

# -- worker: what a task writes ------------------------------------------------------------

WAIT_FOR_EVENT = """
SELECT state, payload FROM pgtasks.wait_for_event(task_id => $1, lease_token => $2, name => $3,
                                                  timeout => $4)
"""

# Child tasks (docs/long-running-tasks.md#child-tasks): the spawn is one checkpointed step,
# idempotent in the database; the wait ends the attempt until the last child ends.
SPAWN_CHILDREN = """
SELECT pgtasks.spawn_children(task_id => $1, lease_token => $2, step => $3,
                              children => $4::text::jsonb, traceparent => $5)
"""

WAIT_FOR_CHILDREN = """
SELECT state, results FROM pgtasks.wait_for_children(task_id => $1, lease_token => $2)
"""

CHECKPOINT = "SELECT pgtasks.checkpoint(task_id => $1, lease_token => $2, step => $3, result => $4)"

LOG_MANY = """
SELECT pgtasks.log_many(task_id => $1, lease_token => $2, levels => $3, messages => $4,
                        ats => $5, loggers => $6)
"""

REPORT_PROGRESS = """
SELECT pgtasks.report_progress(task_id => $1, lease_token => $2, current => $3, total => $4,
                               message => $5)
"""

# Many tasks' progress in one statement; one refused row fails it (then: one by one).
REPORT_PROGRESS_MANY = """
SELECT pg_catalog.count(pgtasks.report_progress(task_id => u.task_id,
                                                lease_token => u.lease_token,
                                                current => u.current, total => u.total,
                                                message => u.message))
  FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::text[]),
                  pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::bigint[]),
                  pg_catalog.unnest($5::text[]))
       AS u(task_id, lease_token, current, total, message)
"""

# Many tasks' log batches in one statement: one row per line, grouped back per attempt
# (in their order) for log_many. One refused task fails it (then: one by one).
LOG_MANY_TASKS = """
SELECT pg_catalog.count(pgtasks.log_many(task_id => g.task_id, lease_token => g.lease_token,
                                         levels => g.levels, messages => g.messages,
                                         ats => g.ats, loggers => g.loggers))
  FROM (SELECT u.task_id, u.lease_token, pg_catalog.array_agg(u.level ORDER BY u.n) AS levels,
               pg_catalog.array_agg(u.message ORDER BY u.n) AS messages,
               pg_catalog.array_agg(u.at ORDER BY u.n) AS ats,
               pg_catalog.array_agg(u.logger ORDER BY u.n) AS loggers
          FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::text[]),
                          pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]),
                          pg_catalog.unnest($5::timestamptz[]), pg_catalog.unnest($6::text[]))
               WITH ORDINALITY AS u(task_id, lease_token, level, message, at, logger, n)
         GROUP BY u.task_id, u.lease_token) g
"""

TASK_STEPS = "SELECT * FROM pgtasks.task_steps_of(task_id => $1, lease_token => $2)"

# A task's parents (sql/0012), read when the task asks (ctx.parent_results), not with the
# claim: plain tasks pay nothing for it. Fenced like a write: only the holder reads them.
PARENT_RESULTS = "SELECT pgtasks.parent_results(task_id => $1, lease_token => $2)"

# -- worker: maintenance -------------------------------------------------------------------

# Rescue + one prune batch (settings.retention) + sweeps; concurrent callers skip.
MAINTAIN = "SELECT * FROM pgtasks.maintain(max_tasks => $1)"
RESCUE_EXPIRED = "SELECT pgtasks.rescue_expired()"
PRUNE_FINISHED = "SELECT pgtasks.prune_finished(older_than => $1, max_tasks => $2)"

# A liveness probe for the LISTEN connection: a silent network drop fires no event.
PING = "SELECT 1"

# Whether the schema has lease tokens (sql/0028), which every fenced call of this release
# presents: the token-taking finish_task exists from then on.
# The oldest schema this worker runs on: lease tokens (sql/0028, finish_task takes a token)
# and code versions (sql/0037, register_worker takes them). Checked by signature, so a
# worker started while `pgtasks migrate` runs waits for the delta it needs, not the last one.
HAS_WORKER_SCHEMA = """
SELECT pg_catalog.to_regprocedure('pgtasks.finish_task(bigint,text,jsonb)') IS NOT NULL
   AND pg_catalog.to_regprocedure(
         'pgtasks.register_worker(text,text,integer,text[],integer,interval,text[],text[])'
       ) IS NOT NULL
"""

# The search_path this connection really has (a pooler may have dropped the pinned one).
CURRENT_SEARCH_PATH = "SELECT pg_catalog.current_setting('search_path')"

# The tags pgtasks_wakeup names these queues by (a wake-up names no queue: any role may
# LISTEN), for the notifier to tell this worker's wake-ups from other queues'.
QUEUE_TAGS = """
SELECT coalesce(pg_catalog.array_agg(pgtasks.queue_tag(queue => q)), '{}')
  FROM pg_catalog.unnest($1::text[]) AS q
"""

# -- schedules (sql/0006) -------------------------------------------------------------------

SCHEDULES = "SELECT * FROM pgtasks.schedules ORDER BY name"

# Ready tasks whose recorded code version no live worker serves (pgtasks.stranded_tasks).
STRANDED_TASKS = "SELECT * FROM pgtasks.stranded_tasks ORDER BY id LIMIT $1"

CREATE_SCHEDULE = """
SELECT pgtasks.create_schedule(name => $1, task_type => $2, cron => $3, every => $4,
                               params => $5, queue => $6, priority => $7, timezone => $8,
                               overlap => $9, catch_up => $10, misfire_grace => $11)
"""

# A worker's declarations: a schedule made through SQL or the CLI is kept as it is.
DECLARE_SCHEDULE = """
SELECT pgtasks.declare_schedule(name => $1, task_type => $2, cron => $3, every => $4,
                                params => $5, queue => $6, priority => $7, timezone => $8,
                                overlap => $9, catch_up => $10, misfire_grace => $11)
"""

DROP_SCHEDULE = "SELECT pgtasks.drop_schedule(name => $1)"
PAUSE_SCHEDULE = "SELECT pgtasks.pause_schedule(name => $1)"
RESUME_SCHEDULE = "SELECT pgtasks.resume_schedule(name => $1)"
TRIGGER_SCHEDULE = "SELECT pgtasks.trigger_schedule(name => $1)"

# The maintainer, about every second: claim the due schedules (each goes to one worker),
# then one fire_schedule per due schedule with the ticks computed in Python (cron) or NULL
# (every: SQL computes them).
DUE_SCHEDULES = "SELECT * FROM pgtasks.due_schedules(max_schedules => $1, worker_id => $2)"

FIRE_SCHEDULE = """
SELECT * FROM pgtasks.fire_schedule(name => $1, revision => $2, ticks => $3::timestamptz[],
                                    next_run_at => $4, skipped_before => $5)
"""

# -- dashboard (pgtasks/web/dashboard; docs/dashboard.md) --------------------------------------
# Every read here stays on an index with a million finished tasks in the table (bench/
# dashboard.py measures each one); none counts the whole table.

# One card per queue: pgtasks.queues (settings and active counts, WAITING ones included
# since 0018) plus the dead letters and the oldest ready task's age. Both extra reads walk
# partial indexes (failed: 0011's tasks_failed; ready: the claim index), never the finished
# rows. A queue with nothing active still has its card when a registered type names it
# (listing every queue that ever had a task would read every finished row).
DASH_QUEUES = """
WITH f AS (SELECT queue, pg_catalog.count(*) AS failed FROM pgtasks.failed_tasks GROUP BY queue),
     o AS (SELECT queue, now() - min(run_at) AS oldest_ready_age
             FROM pgtasks.task_status
            WHERE status IN ('PENDING', 'COMMIT') AND run_at <= now()
            GROUP BY queue),
     names AS (SELECT queue FROM pgtasks.queues UNION SELECT queue FROM f
               UNION SELECT queue FROM pgtasks.registered_types)
SELECT n.queue, coalesce(q.paused, false) AS paused,
       q.max_running, q.rate_limit, q.rate_period, coalesce(q.ready, 0) AS ready,
       coalesce(q.scheduled, 0) AS scheduled, coalesce(q.running, 0) AS running,
       coalesce(q.waiting_on_parents, 0) AS waiting_on_parents,
       coalesce(f.failed, 0) AS failed, o.oldest_ready_age
  FROM names n
  LEFT JOIN pgtasks.queues q ON q.queue = n.queue
  LEFT JOIN f ON f.queue = n.queue
  LEFT JOIN o ON o.queue = n.queue
 ORDER BY 1
"""

# Tasks finished DONE and FAILED per second since `since` (epoch seconds, server clock),
# from the finished_at index.
DASH_THROUGHPUT = """
SELECT extract(epoch FROM date_trunc('second', finished_at))::bigint AS t,
       pg_catalog.count(*) FILTER (WHERE status = 'DONE') AS done,
       pg_catalog.count(*) FILTER (WHERE status = 'FAILED') AS failed
  FROM pgtasks.task_status
 WHERE status IN ('DONE', 'FAILED', 'CANCELLED')
   AND finished_at > pg_catalog.to_timestamp($1::float8)
 GROUP BY 1 ORDER BY 1
"""

SERVER_EPOCH = "SELECT extract(epoch FROM now())::float8"

# The charts of the last $1 seconds from the roll-up (pgtasks.task_chart: 10-second buckets
# up to 2 hours, 5-minute ones beyond), for queue $2 or every queue.
TASK_CHART = """
SELECT bucket, extract(epoch FROM width)::float8 AS width_s, rolled, done, failed, cancelled,
       run_count, run_mean, run_p50, run_p95, run_max,
       wait_count, wait_mean, wait_p50, wait_p95, wait_max, ready, running
  FROM pgtasks.task_chart(span => $1::float8 * interval '1 second', queue => $2)
"""

# Dead letters grouped by type and the first line of their error, biggest group first.
# Grouped by error_fingerprint (one cause, whatever ids or addresses each message names);
# `error` is the newest task's first line, an example of the group.
DASH_FAILED_GROUPS = """
SELECT task_type, pgtasks.error_fingerprint(error) AS fingerprint,
       (array_agg(left(split_part(error, E'\\n', 1), 200) ORDER BY id DESC))[1] AS error,
       pg_catalog.count(*) AS tasks,
       max(finished_at) AS last_at, max(id) AS last_id
  FROM pgtasks.failed_tasks
 GROUP BY 1, 2 ORDER BY tasks DESC, last_at DESC LIMIT $1
"""

# The columns a row of the dashboard's task list shows.
_DASH_COLUMNS = """id, task_type, queue, status, attempt, retries, percent, progress_current,
       progress_total, progress_message, run_at, created_at, started_at, finished_at,
       left(split_part(error, E'\\n', 1), 160) AS error"""


# Sent first, in the task list's own read-only transaction: plan it for the values of each
# call. A prepared statement gets a generic plan after five runs when that plan's estimate
# is below their average, and for a filter on a value that few rows have it estimates a
# page of a walk down the primary key where the walk reads every row: measured with
# 1,000,000 tasks (bench/dashboard.py), a rare type's list went from 110-155 ms to 400-510
# ms at its sixth request. A generic `status = $1` cannot use a partial index such as
# 0018's tasks_waiting either (tests/sql/test_plans.py shows it walking the primary key).
# Planning costs 0.3 ms.
BROWSE_PLANNING = "SET LOCAL plan_cache_mode = force_custom_plan"

#: How many of the newest task ids a text search looks through.
SEARCH_WINDOW = 100_000
MAX_TASK_ID = "SELECT max(id) FROM pgtasks.task_status"


def dash_task_list(
    *,
    status: str | None,
    queue: str | None,
    task_type: str | None,
    search: str | None,
    after_id: int | None,
    oldest_ready: bool,
    limit: int,
    search_floor: int | None = None,
) -> tuple[str, list[object]]:
    """The dashboard's task list as (statement, arguments), keyset-paged.

    Built with only the conditions in use: a prepared statement of `($1 IS NULL OR ...)`
    soon gets a generic plan, and a generic plan cannot pick the partial index that fits
    the filter (measured: a FAILED filter went from an index scan to a walk of every row).
    Even `status = $1` alone gets one, which Client.browse prevents (BROWSE_PLANNING).
    Newest first pages with `id < after_id`; oldest ready first (the order claims take,
    minus priority) walks the ready index by (run_at, id) after the row `after_id`.
    """
    args: list[object] = []

    def arg(value: object, cast: str = "") -> str:
        args.append(value)
        return f"${len(args)}{cast}"

    where: list[str] = []
    if oldest_ready:
        where.append("status IN ('PENDING', 'COMMIT') AND run_at <= now()")
    if status is not None:
        where.append(f"status = {arg(status, '::pgtasks.status')}")
    if queue is not None:
        where.append(f"queue = {arg(queue)}")
    if task_type is not None:
        where.append(f"task_type = {arg(task_type)}")
    if search is not None:
        # No index serves a substring match; the newest SEARCH_WINDOW ids bound the walk
        # (measured with 1,000,000 tasks: a search that matches nothing read them all in
        # 390 ms). The caller passes search_floor = max(id) - SEARCH_WINDOW.
        pattern = arg(f"%{search}%")
        where.append(
            f"(task_type ILIKE {pattern} OR error ILIKE {pattern} "
            f"OR progress_message ILIKE {pattern})"
        )
        # A value, not a subquery: the planner then sees a range of the primary key.
        where.append(f"id > {arg(search_floor or 0, '::bigint')}")
    if after_id is not None:
        after = arg(after_id, "::bigint")
        if oldest_ready:
            where.append(
                f"(run_at, id) > (SELECT run_at, id FROM pgtasks.task_status WHERE id = {after})"
            )
        else:
            where.append(f"id < {after}")
    order = "run_at, id" if oldest_ready else "id DESC"
    sql = (
        f"SELECT {_DASH_COLUMNS}\n  FROM pgtasks.task_status\n"
        + (f" WHERE {' AND '.join(where)}\n" if where else "")
        + f" ORDER BY {order} LIMIT {arg(limit, '::int')}"
    )
    return sql, args


# Bulk actions, one statement each and all or nothing: the inner SELECT picks at most $n
# tasks in a state the action accepts, and retry_task/cancel_task run once per picked row.
# A task that changes state between the pick and its call (a worker finished it) raises,
# the statement rolls back, and the caller tries again.
_BULK_PICK = """
SELECT id FROM pgtasks.task_status
 WHERE status IN ({states})
   AND ($1::bigint[] IS NULL OR id = ANY($1))
   AND ($2::pgtasks.status IS NULL OR status = $2)
   AND ($3::text IS NULL OR queue = $3)
   AND ($4::text IS NULL OR task_type = $4)
   AND ($5::text IS NULL OR left(split_part(error, E'\\n', 1), 200) = $5)
   AND ($7::text IS NULL OR pgtasks.error_fingerprint(error) = $7)
 ORDER BY id LIMIT $6"""

BULK_RETRY = f"""
SELECT p.id, pgtasks.retry_task(task_id => p.id)::text AS done
  FROM ({_BULK_PICK.format(states="'FAILED', 'CANCELLED'")}) p
"""

BULK_CANCEL = f"""
SELECT p.id, pgtasks.cancel_task(task_id => p.id)::text AS previous_status
  FROM ({_BULK_PICK.format(states="'WAITING', 'PENDING', 'COMMIT', 'RUNNING'")}) p
"""


# -- lookup by unique key and what the workers run (docs/sql-api.md, "Views") --------------
# Each statement names unique_key unconditionally, so even the generic plan a prepared
# statement settles on walks tasks_by_unique_key (a key's rows, newest first) and never the
# table; the type, when given, filters the few rows of that key.

# The newest task of a key, of any type or of one ($2); keys belong to their task type, so
# two types can each have a task with the same key.
FIND_TASK = """
SELECT * FROM pgtasks.task_status
 WHERE unique_key = $1 AND ($2::text IS NULL OR task_type = $2)
 ORDER BY id DESC LIMIT 1
"""

# TASK_PAGE for the tasks of one key: the same columns, newest first.
KEY_TASK_PAGE = """
WITH f AS (
    SELECT id, task_type, queue, status, priority, attempt, retries, percent,
           progress_current, progress_total, progress_message, worker_id, run_at,
           created_at, started_at, finished_at, elapsed, left(error, 200) AS error,
           unique_key
      FROM pgtasks.task_status
     WHERE unique_key = $7
       AND ($1::pgtasks.status IS NULL OR status = $1::pgtasks.status)
       AND ($2::text IS NULL OR queue = $2)
       AND ($3::text IS NULL OR task_type = $3))
SELECT n.total, p.*
  FROM (SELECT pg_catalog.count(*) AS total FROM f) n
  LEFT JOIN LATERAL (SELECT * FROM f ORDER BY CASE WHEN $4 THEN id END, id DESC
                      LIMIT $5 OFFSET $6) p ON true
"""

# Every running task with its worker, progress and lease (pgtasks.active_tasks, which reads
# running tasks only), by worker and then the longest running first. lease_left is by the
# database's clock, as seen_ago in WORKERS.
ACTIVE_TASKS = """
SELECT *, lease_expires_at - now() AS lease_left FROM pgtasks.active_tasks
 WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR worker_id = $2)
 ORDER BY worker_id, attempt_started_at, id LIMIT $3
"""
