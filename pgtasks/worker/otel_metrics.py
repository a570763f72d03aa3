"""The worker's own metrics through OpenTelemetry metrics (the `otel` extra), beside the
Prometheus endpoint of `--metrics-port`: the same names, meanings and `worker_id`
attribute (pgtasks.worker.base holds the one table of them).

Only with opentelemetry-api installed and a meter provider configured (the `meter_provider`
a Worker was given, else the global one once the application set it). Otherwise `attach`
returns at its first test and nothing is made; the hot path's only trace of this module is
the `sink` test in Buckets.observe, once per claim or result batch, not per task.

Counters and gauges are observable instruments: the SDK calls their callbacks when it
collects, and they read WorkerStats as the Prometheus collector does at scrape time.
Histograms have no observable form in OpenTelemetry, so each observation is also recorded
(Buckets.sink), with the same bucket bounds as an advisory to the SDK. One set of
instruments serves every worker of a process that uses the same provider: each callback
reports one value per running worker, and a stopped worker drops out.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from pgtasks.worker.base import COUNTERS, HISTOGRAMS, RUNNING_GAUGE, SLOTS_GAUGE, WorkerStats

if TYPE_CHECKING:
    from pgtasks.worker.worker import Worker

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry.metrics import NoOpMeterProvider, Observation
except ImportError:  # the otel extra is not installed
    _metrics = None  # type: ignore[assignment]

#: The instrumentation scope of every instrument pgtasks makes.
SCOPE = "pgtasks"


def _provider(given: Any) -> Any:
    """The meter provider to export to, or None: `given`, else the global one unless it
    is still the API's default proxy (no provider configured) or a no-op one."""
    if _metrics is None:
        return None
    provider = given if given is not None else _metrics.get_meter_provider()
    if isinstance(provider, NoOpMeterProvider) or type(provider).__name__ == "_ProxyMeterProvider":
        return None
    return provider


class _Instruments:
    """The instruments of one meter provider, and the running workers they report."""

    def __init__(self, provider: Any) -> None:
        self.workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        meter = provider.get_meter(SCOPE)
        for key, (name, doc) in COUNTERS.items():
            meter.create_observable_counter(
                name, callbacks=[partial(self._counter, key)], description=doc
            )
        meter.create_observable_gauge(
            RUNNING_GAUGE[0], callbacks=[self._running], description=RUNNING_GAUGE[1]
        )
        meter.create_observable_gauge(
            SLOTS_GAUGE[0], callbacks=[self._slots], description=SLOTS_GAUGE[1]
        )
        self.histograms: dict[str, Any] = {}
        fresh = WorkerStats()  # each histogram's bucket bounds, as the worker keeps them
        for key, (name, doc, unit) in HISTOGRAMS.items():
            advisory = [float(b) for b in getattr(fresh, key).bounds]
            try:
                h = meter.create_histogram(
                    name, unit=unit, description=doc, explicit_bucket_boundaries_advisory=advisory
                )
            except TypeError:  # an API older than 1.23 takes no advisory
                h = meter.create_histogram(name, unit=unit, description=doc)
            self.histograms[key] = h

    def _counter(self, key: str, _options: Any) -> Iterable[Any]:
        return [
            Observation(getattr(w.stats, key), {"worker_id": w.worker_id}) for w in self.workers
        ]

    def _running(self, _options: Any) -> Iterable[Any]:
        return [Observation(len(w.slots.running), {"worker_id": w.worker_id}) for w in self.workers]

    def _slots(self, _options: Any) -> Iterable[Any]:
        return [Observation(w.concurrency, {"worker_id": w.worker_id}) for w in self.workers]


# By meter provider: instruments are made once per provider and process (an SDK warns
# about, and ignores, a second instrument of one name).
_by_provider: dict[int, tuple[Any, _Instruments]] = {}


def attach(worker: Worker, meter_provider: Any = None) -> bool:
    """Export `worker`'s metrics until `detach`, if a meter provider is configured.
    Returns whether they are exported."""
    provider = _provider(meter_provider)
    if provider is None:
        return False
    held = _by_provider.get(id(provider))
    if held is None or held[0] is not provider:
        held = (provider, _Instruments(provider))
        _by_provider[id(provider)] = held
    instruments = held[1]
    instruments.workers.add(worker)
    attrs = {"worker_id": worker.worker_id}
    for key, h in instruments.histograms.items():
        getattr(worker.stats, key).sink = partial(h.record, attributes=attrs)
    return True


def detach(worker: Worker) -> None:
    """Stop exporting `worker`'s metrics (a stopped worker reports nothing more)."""
    for _, instruments in _by_provider.values():
        instruments.workers.discard(worker)
    for key in HISTOGRAMS:
        getattr(worker.stats, key).sink = None
