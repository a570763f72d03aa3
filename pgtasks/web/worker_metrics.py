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
from pgtasks.worker.base import COUNTERS, HISTOGRAMS, RUNNING_GAUGE, SLOTS_GAUGE


class WorkerCollector:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self.worker.stats
        labels = ["worker_id"]
        for f in fields(stats):
            if f.name in COUNTERS:
                name, doc = COUNTERS[f.name]
                c = CounterMetricFamily(name, doc, labels=labels)
                c.add_metric([self.worker.worker_id], getattr(stats, f.name))
                yield c
        running = GaugeMetricFamily(*RUNNING_GAUGE, labels=labels)
        running.add_metric([self.worker.worker_id], len(self.worker.slots.running))
        yield running
        slots = GaugeMetricFamily(*SLOTS_GAUGE, labels=labels)
        slots.add_metric([self.worker.worker_id], self.worker.concurrency)
        yield slots
        for key, (name, doc, _unit) in HISTOGRAMS.items():
            b = getattr(stats, key)
            h = HistogramMetricFamily(name, doc, labels=labels)
            h.add_metric([self.worker.worker_id], b.cumulative(), sum_value=b.sum)
            yield h


def serve_worker_metrics(worker: Worker, port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    """Serve the worker's metrics from a daemon thread (prometheus-client's own server)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(worker))
    start_http_server(port, addr=host, registry=reg)
    return reg
