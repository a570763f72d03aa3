# ruff: noqa: B018  (each line names a name, that is all it does)
"""What vulture cannot see used: `vulture pgtasks vulture_whitelist.py --min-confidence 60`.

Every name here is called or read by a framework at run time, never by a call vulture can
follow in our code. A name that is really unused belongs deleted, not listed here.
"""


class _Names:
    """Any attribute: `_.name` marks `name` as used for vulture (and runs harmlessly)."""

    def __getattr__(self, name: str) -> None:
        return None


_ = _Names()

# click commands: registered by their decorators, run by `pgtasks <command>`.
_.db_start
_.db_stop
_.db_status
_.db_url
_.serve
_.ls
_.queues_pause
_.queues_resume
_.queues_set
_.watch
_.schedules_add
_.schedules_rm
_.schedules_pause
_.schedules_resume
_.schedules_run
_.workflows_
_.workflow_

# rich: a Text's rendering options, set as attributes.
_.no_wrap
_.overflow

# FastAPI routes: registered by their decorators (the API router and the dashboard).
_.list_tasks
_.get_task
_.submit_task
_.cancel_task
_.retry_task
_.task_logs
_.task_history
_.task_inbox
_.task_children
_.events
_.queue_settings
_.retry_tasks
_.cancel_tasks
_.overview
_.login_form
_.login
_.logout
_.overview_stream
_.task_stream
_.static
_.openapi_json
_.swagger
_.redoc
_.docs_asset
_.charts
# uvicorn: the h11 protocol's hook for a request it cannot parse (pgtasks.web.server).
_.send_400_response
_.active_tasks
# Starlette: a response's status, set on the response object.
_.status_code

# pydantic: model settings, validators and fields, read by pydantic and serialised as JSON
# (API responses, CLI tables), not by attribute access in our code.
_.model_config
_._one_time
_._something
_.previous_status
_.waiting
_.oldest_ready_age
_.done_last_minute
_.waiting_on_parents
_.paused
_.started_at
_.finished_at
_.last_seen
_.alive
_.seen_ago
_.workflow_node
_.schedule_tick
_.spawned_by
_.attempt_started_at
_.lease_expires_at
# GET /charts' buckets (pgtasks.task_chart's columns).
_.bucket
_.width_s
_.rolled
_.run_count
_.run_mean
_.run_p50
_.run_p95
_.run_max
_.wait_count
_.wait_mean
_.wait_p50
_.wait_p95
_.wait_max

# prometheus-client: a custom collector's collect(), called at scrape time.
_.collect

# WorkerStats: counters written by the services, read through dataclasses.fields() by the
# worker's /metrics collector (pgtasks.web.worker_metrics) and by the tests.
_.succeeded
_.retried
_.yielded
_.claim_errors
_.claim_calls
_.finish_calls
# Coalescer.statements: statements sent, read by the tests and kept for stats.
_.statements

# Public API read by task code: `await ctx.parent_result` (TaskContext, SyncTaskContext).
_.parent_result

# EmbeddedPostgres: public methods (the test suite and bench/ restart and remove servers).
_.restart
_.destroy

# concurrent.futures.Executor.shutdown(wait, *, cancel_futures): the signature DaemonThreads
# must keep to override it, though it has nothing to cancel.
_.cancel_futures

# Protocol and wrapper dunders that Python calls, not our code: the typed task function's
# __call__ overloads (pgtasks.task) and the generated sync methods' __qualname__ (pgtasks.sync).
_.__call__
_.__qualname__

# pgtasks.contrib.django: read by Django, not by our code. The app config INSTALLED_APPS
# finds; the backend's feature flags and enqueue() (Task.enqueue calls it); the management
# command's class and parser hook.
_.PgTasksConfig
_.verbose_name
_.supports_defer
_.supports_async_task
_.supports_get_result
_.supports_priority
_.enqueue
_.Command
_.add_arguments

# router(metrics=True)'s endpoint (FastAPI calls it) and the `transition` field of an SSE
# status frame (read by the stream's clients, set through model_construct).
_.prometheus
_.transition

# The schedule write routes (FastAPI calls them) and the writer's count of writes sent again
# after a lost connection (read by tests/test_reliability.py).
_.put_schedule
_.delete_schedule
_.outage_retries

# ReplicaLag's fields that only its readers use (GET /api/replica's JSON), and the
# dependency an app's own read routes take (pgtasks.fastapi.get_reader).
_.in_recovery
_.last_replayed_commit_at
_.get_reader
