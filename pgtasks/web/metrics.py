"""/metrics: Prometheus text from one row of the pgtasks.metrics view read at scrape time,
so the numbers are right however many workers and API processes there are. The counters
are the database's (pgtasks.task_counters), so any process exports the same totals and
pruning never lowers them."""

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

from pgtasks.client import STATUSES, Client

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


class _Snapshot:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


async def render(client: Client) -> bytes:
    """One query, then the text format. The collector is built per scrape because the read
    is async and prometheus-client's collect() is not."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(await client.metrics()))
    return generate_latest(reg)
