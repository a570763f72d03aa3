"""`pgtasks worker --metrics-port N`: this process's own counters (claims, finishes, hand-
backs...), read from Worker.stats at scrape time. The queue-wide picture is the API's
/metrics, read from the database; these say what one worker did."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from pgtasks.worker import Worker

# WorkerStats field -> (metric name without _total, help)
_COUNTERS = {
    "claimed": ("pgtasks_worker_claimed_tasks", "Tasks this worker claimed"),
    "claim_calls": ("pgtasks_worker_claim_calls", "Claim round trips (batches claimed)"),
    "claim_errors": ("pgtasks_worker_claim_errors", "Claims that failed (connection lost...)"),
    "succeeded": ("pgtasks_worker_succeeded_tasks", "Results this worker wrote"),
    "finish_calls": ("pgtasks_worker_finish_calls", "Completer round trips (result batches)"),
    "failed": ("pgtasks_worker_failed_tasks", "Tasks this worker ended FAILED"),
    "retried": ("pgtasks_worker_retried_tasks", "Attempts ended by a retryable error"),
    "yielded": ("pgtasks_worker_yielded_tasks", "Attempts that yielded (sleep_until)"),
    "lost": ("pgtasks_worker_lost_leases", "Attempts whose lease was lost"),
    "handed_back": ("pgtasks_worker_handed_back_tasks", "Tasks handed back on shutdown"),
    "rescued": ("pgtasks_worker_rescued_tasks", "Expired leases this worker's maintainer rescued"),
}


class WorkerCollector:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self.worker.stats
        labels = ["worker_id"]
        for f in fields(stats):
            if f.name in _COUNTERS:
                name, doc = _COUNTERS[f.name]
                c = CounterMetricFamily(name, doc, labels=labels)
                c.add_metric([self.worker.worker_id], getattr(stats, f.name))
                yield c
        running = GaugeMetricFamily(
            "pgtasks_worker_running_tasks", "Tasks running in this worker now", labels=labels
        )
        running.add_metric([self.worker.worker_id], len(self.worker.slots.running))
        yield running
        slots = GaugeMetricFamily(
            "pgtasks_worker_slots", "This worker's concurrency", labels=labels
        )
        slots.add_metric([self.worker.worker_id], self.worker.concurrency)
        yield slots
        for name, doc, b in (
            ("pgtasks_worker_claim_seconds", "Claim round trip (claim_tasks)", stats.claim_seconds),
            ("pgtasks_worker_claim_batch_size", "Tasks per claim", stats.claim_batch),
            ("pgtasks_worker_finish_batch_size", "Results per completer call", stats.finish_batch),
        ):
            h = HistogramMetricFamily(name, doc, labels=labels)
            h.add_metric([self.worker.worker_id], b.cumulative(), sum_value=b.sum)
            yield h


def serve_worker_metrics(worker: Worker, port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    """Serve the worker's metrics from a daemon thread (prometheus-client's own server)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(worker))
    start_http_server(port, addr=host, registry=reg)
    return reg
