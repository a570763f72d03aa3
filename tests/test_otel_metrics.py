"""The worker's own metrics through OpenTelemetry metrics (pgtasks.worker.otel_metrics), read
back with the SDK's in-memory metric reader, against what the Prometheus collector of
`--metrics-port` shows for the same worker: the same names, values and worker_id."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from pgtasks import Registry, Worker, task_register
from pgtasks.context import TaskContext
from pgtasks.web.worker_metrics import WorkerCollector
from tests.conftest import ROOT, wait_for

REG = Registry()


@task_register("measured", into=REG, max_retries=0)
async def measured(ctx: TaskContext, params: dict[str, Any]) -> int:
    if params.get("fail"):
        raise RuntimeError("fails")
    return 1


def exported(reader: InMemoryMetricReader, worker_id: str) -> dict[str, Any]:
    """name -> the value (counter, gauge) or (count, sum) (histogram) of worker_id's point."""
    out: dict[str, Any] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "pgtasks"
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    if dict(p.attributes or {}) != {"worker_id": worker_id}:
                        continue
                    if isinstance(p, HistogramDataPoint):
                        out[metric.name] = (p.count, p.sum, list(p.explicit_bounds))
                    else:
                        out[metric.name] = p.value
    return out


def scraped(worker: Worker) -> dict[str, Any]:
    """The same, from the Prometheus collector."""
    out: dict[str, Any] = {}
    for family in WorkerCollector(worker).collect():
        samples = {s.name: s for s in family.samples}
        if family.type == "histogram":
            bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
            out[family.name] = (
                samples[family.name + "_count"].value,
                samples[family.name + "_sum"].value,
                [b for b in bounds if b != float("inf")],
            )
        else:
            (sample,) = family.samples
            out[family.name] = sample.value
    return out


async def test_the_worker_exports_its_metrics_through_opentelemetry(dsn, conn):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    for params in ("{}", "{}", '{"fail": true}'):
        await conn.execute(
            "SELECT pgtasks.submit_task('measured', params => $1::text::jsonb, max_retries => 0)",
            params,
        )
    w = Worker(dsn, registry=REG, poll_interval=0.1, concurrency=3, meter_provider=provider)
    run = asyncio.create_task(w.run())
    try:
        await wait_for(
            conn, "SELECT count(*) = 3 FROM pgtasks.tasks WHERE status IN ('DONE', 'FAILED')"
        )
        # The database shows an outcome as soon as it commits, before the worker counts it.
        while (w.stats.succeeded, w.stats.failed) != (2, 1):
            await asyncio.sleep(0.01)
        otel, prom = exported(reader, w.worker_id), scraped(w)  # no await between: one moment
    finally:
        w.stop()
        await asyncio.wait_for(run, 30)
    assert otel == prom
    assert otel["pgtasks_worker_succeeded_tasks"] == 2
    assert otel["pgtasks_worker_failed_tasks"] == 1
    assert otel["pgtasks_worker_claimed_tasks"] == 3
    assert otel["pgtasks_worker_slots"] == 3
    count, _, bounds = otel["pgtasks_worker_claim_seconds"]
    assert count > 0  # and as many as the Prometheus collector said, read at the same moment
    assert bounds == [float(b) for b in w.stats.claim_seconds.bounds]
    # A stopped worker reports nothing more, and no longer records into the histograms.
    assert w.stats.claim_seconds.sink is None
    assert exported(reader, w.worker_id).get("pgtasks_worker_succeeded_tasks") is None


def test_without_a_meter_provider_nothing_is_made():
    # A fresh interpreter: a meter provider set in this one would be global to it.
    code = (
        "from pgtasks import Worker\n"
        "from pgtasks.worker import otel_metrics\n"
        "w = Worker('postgresql://unused')\n"
        "assert otel_metrics.attach(w) is False\n"
        "assert w.stats.claim_seconds.sink is None and not otel_metrics._by_provider\n"
        "print('off')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "off"
