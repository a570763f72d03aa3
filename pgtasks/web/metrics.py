"""/metrics: Prometheus text from one row of the pgtasks.metrics view read at scrape time,
so the numbers are right however many workers and API processes there are. The counters
are the database's (pgtasks.task_counters), so any process exports the same totals and
pruning never lowers them.

Next to them, the health of the tables (pgtasks.table_health: dead rows, vacuums, sizes)
and of the MVCC horizon (pgtasks.xmin_horizon), which is what slows claims when it goes
wrong (docs/operations.md). Those are the server's own statistics, not replicated data:
when the task gauges are read from a replica, they are still read from the primary, and
the replica's lag is exported too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from pgtasks.client import STATUSES, Client, ReplicaLag

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# queue_stats column per status (COMMIT tasks are "waiting" there, for historical reasons;
# WAITING tasks, on unfinished parents, are "waiting_on_parents" since sql/0016).
_COLUMN = {
    "PENDING": "pending",
    "WAITING": "waiting_on_parents",
    "COMMIT": "waiting",
    "RUNNING": "running",
    "DONE": "done",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
}


def families(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """The metric families for one Client.metrics() snapshot."""
    tasks = GaugeMetricFamily(
        "pgtasks_tasks", "Tasks in the table by queue and status", labels=["queue", "status"]
    )
    ready = GaugeMetricFamily(
        "pgtasks_queue_ready", "Tasks ready to run now (PENDING or COMMIT, run_at due)",
        labels=["queue"],
    )  # fmt: skip
    oldest = GaugeMetricFamily(
        "pgtasks_queue_oldest_ready_seconds", "Age of the oldest ready task", labels=["queue"]
    )
    done_minute = GaugeMetricFamily(
        "pgtasks_queue_done_last_minute", "Tasks finished DONE in the last minute",
        labels=["queue"],
    )  # fmt: skip
    for q in snapshot["queues"]:
        for status in STATUSES:  # every status has its column (a new one must get one)
            tasks.add_metric([q["queue"], status], q[_COLUMN[status]])
        ready.add_metric([q["queue"]], q["ready"])
        oldest.add_metric([q["queue"]], float(q["oldest_ready_seconds"]))
        done_minute.add_metric([q["queue"]], q["done_last_minute"])
    yield from (tasks, ready, oldest, done_minute)

    w = snapshot["workers"]
    workers = GaugeMetricFamily("pgtasks_workers", "Registered workers", labels=["state"])
    workers.add_metric(["alive"], w["alive"])
    workers.add_metric(["dead"], w["dead"])
    yield workers
    # The sums over the registry's live workers; a worker's own exporter has
    # pgtasks_worker_slots{worker_id} for its own slots (one meaning per name).
    yield GaugeMetricFamily(
        "pgtasks_live_worker_slots", "Task slots of all live workers", value=w["slots"]
    )
    yield GaugeMetricFamily(
        "pgtasks_live_worker_running_tasks", "Tasks running on live workers", value=w["running"]
    )

    window = _seconds(snapshot["runtime_window"])
    runtime = GaugeHistogramMetricFamily(
        "pgtasks_task_runtime_seconds",
        f"Run time of the tasks finished in the last {window}, by type",
        labels=["task_type"],
    )
    finished = GaugeMetricFamily(
        "pgtasks_tasks_finished_recent",
        f"Tasks that ended DONE or FAILED in the last {window}, by type",
        labels=["task_type", "status"],
    )
    bounds = [str(float(b)) for b in snapshot["runtime_bounds"]]
    for h in snapshot["runtimes"]:
        finished.add_metric([h["task_type"], "DONE"], h["count"] - h["failed"])
        finished.add_metric([h["task_type"], "FAILED"], h["failed"])
        buckets = [*zip(bounds, h["buckets"], strict=True), ("+Inf", h["count"])]
        runtime.add_metric([h["task_type"]], buckets, gsum_value=float(h["sum"]))
    yield runtime
    yield finished

    yield from _queue_settings(snapshot.get("queue_settings") or [])
    yield from _counters(snapshot.get("counters") or [])

    lag = GaugeMetricFamily(
        "pgtasks_schedule_lag_seconds",
        "How long an unpaused schedule's next tick is overdue (0 when not yet due)",
        labels=["schedule"],
    )
    for sch in snapshot["schedules"]:
        lag.add_metric([sch["schedule"]], float(sch["lag_seconds"]))
    yield lag


#: Counter family per task_counters kind (the finished ones share one, by status).
_COUNTED = {
    "submitted": ("pgtasks_tasks_submitted", "Tasks submitted"),
    "retried": (
        "pgtasks_tasks_retried",
        "Failed attempts sent back to run again (a rescue's included)",
    ),
    "rescued": (
        "pgtasks_tasks_rescued",
        "Attempts whose lease expired or deadline passed, handed on by rescue",
    ),
    "requeued": ("pgtasks_tasks_requeued", "FAILED or CANCELLED tasks put back by retry_task"),
}
_FINISHED = {"done": "DONE", "failed": "FAILED", "cancelled": "CANCELLED"}


def _counters(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """Every counter for every (queue, task_type) that has any count, zeros included, so a
    series exists before its first increase and rate() sees that increase."""
    labels = ["queue", "task_type"]
    totals = {(r["queue"], r["task_type"], r["kind"]): r["total"] for r in rows}
    keys = sorted({(q, t) for q, t, _ in totals})
    for kind, (name, doc) in _COUNTED.items():
        fam = CounterMetricFamily(name, doc, labels=labels)
        for q, t in keys:
            fam.add_metric([q, t], totals.get((q, t, kind), 0))
        yield fam
    finished = CounterMetricFamily(
        "pgtasks_tasks_finished", "Tasks that ended, by final status", labels=[*labels, "status"]
    )
    for q, t in keys:
        for kind, status in _FINISHED.items():
            finished.add_metric([q, t, status], totals.get((q, t, kind), 0))
    yield finished


def _queue_settings(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """Pause and limits per queue (pgtasks.queues): a paused queue's backlog is expected."""
    paused = GaugeMetricFamily(
        "pgtasks_queue_paused", "1 while the queue is paused (no claims), else 0",
        labels=["queue"],
    )  # fmt: skip
    max_running = GaugeMetricFamily(
        "pgtasks_queue_max_running", "The queue's limit of running tasks (queues with one)",
        labels=["queue"],
    )  # fmt: skip
    rate = GaugeMetricFamily(
        "pgtasks_queue_rate_limit", "Starts allowed per rate period (rate-limited queues)",
        labels=["queue"],
    )  # fmt: skip
    period = GaugeMetricFamily(
        "pgtasks_queue_rate_period_seconds", "The rate limit's period (rate-limited queues)",
        labels=["queue"],
    )  # fmt: skip
    for r in rows:
        paused.add_metric([r["queue"]], 1 if r["paused"] else 0)
        if r["max_running"] is not None:
            max_running.add_metric([r["queue"]], r["max_running"])
        if r["rate_limit"] is not None:
            rate.add_metric([r["queue"]], r["rate_limit"])
            period.add_metric([r["queue"]], float(r["rate_period_seconds"]))
    yield from (paused, max_running, rate, period)


def _seconds(window: timedelta) -> str:
    return f"{window.total_seconds():g} seconds"


#: pgtasks.table_health column -> (gauge, help) per table.
_TABLE_GAUGES = {
    "live_tuples": ("pgtasks_table_live_tuples", "Estimated live rows of the pgtasks table"),
    "dead_tuples": (
        "pgtasks_table_dead_tuples",
        "Estimated dead rows of the pgtasks table, not yet removed by vacuum",
    ),
    "seconds_since_vacuum": (
        "pgtasks_table_seconds_since_vacuum",
        "Seconds since the table was last vacuumed, manually or by autovacuum (absent: never)",
    ),
    "table_bytes": ("pgtasks_table_bytes", "Size of the table (heap and TOAST), in bytes"),
    "index_bytes": ("pgtasks_table_index_bytes", "Size of the table's indexes, in bytes"),
    "frozenxid_age": (
        "pgtasks_table_frozenxid_age",
        "Age in transactions of the table's relfrozenxid (wraparound protection)",
    ),
}


def health_families(health: dict[str, Any]) -> Iterator[Metric]:
    """The table and MVCC-horizon families for one Client.health() answer."""
    tables = health.get("tables") or []
    for column, (name, doc) in _TABLE_GAUGES.items():
        fam = GaugeMetricFamily(name, doc, labels=["table"])
        for t in tables:
            if t[column] is not None:
                fam.add_metric([t["table_name"]], float(t[column]))
        yield fam
    vacuums = CounterMetricFamily(
        "pgtasks_table_vacuums", "Vacuums of the table, manual and automatic", labels=["table"]
    )
    for t in tables:
        vacuums.add_metric([t["table_name"]], t["vacuums"])
    yield vacuums
    age = GaugeMetricFamily(
        "pgtasks_xmin_horizon_age",
        "Age in transactions of the oldest xmin holding back vacuum, by what holds it",
        labels=["source"],
    )
    held = GaugeMetricFamily(
        "pgtasks_xmin_horizon_held_seconds",
        "How long the oldest session or prepared transaction holding an xmin has run",
        labels=["source"],
    )
    for h in health.get("xmin_horizon") or []:
        age.add_metric([h["source"]], h["xmin_age"])
        if h["held_seconds"] is not None:
            held.add_metric([h["source"]], float(h["held_seconds"]))
    yield from (age, held)


def replica_families(lag: ReplicaLag) -> Iterator[Metric]:
    """The lag of the replica the task gauges were read from."""
    seconds = GaugeMetricFamily(
        "pgtasks_read_replica_lag_seconds",
        "How far behind its primary the replica /metrics reads is (NaN: unknown)",
    )
    seconds.add_metric([], float("nan") if lag.lag_seconds is None else lag.lag_seconds)
    yield seconds
    yield GaugeMetricFamily(
        "pgtasks_read_replica_receiving",
        "1 while the replica's WAL receiver runs, else 0 (cut off from its primary)",
        value=1 if lag.receiving else 0,
    )


class _Snapshot:
    def __init__(
        self, snapshot: dict[str, Any], health: dict[str, Any], lag: ReplicaLag | None
    ) -> None:
        self.snapshot, self.health, self.lag = snapshot, health, lag

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot)
        yield from health_families(self.health)
        if self.lag is not None:
            yield from replica_families(self.lag)


async def render(client: Client, *, primary: Client | None = None) -> bytes:
    """The task gauges from `client`, the table health from `primary` (default: `client`),
    then the text format. Given a `primary`, `client` is a replica and its lag is
    exported too. The collector is built per scrape because the reads are async and
    prometheus-client's collect() is not."""
    snapshot = await client.metrics()
    health = await (primary or client).health()
    lag = await client.replica_lag() if primary is not None else None
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(snapshot, health, lag))
    return generate_latest(reg)
