"""What every worker service shares: start/stop around one loop, the worker's counters, the
claimed tasks it holds, and retrying through database outages."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pgtasks.db import TRANSIENT

T = TypeVar("T")

log = logging.getLogger("pgtasks.worker")

#: How long a stopping worker keeps retrying results and hand-backs against a database that
#: stays away, before it exits and leaves those tasks to their leases.
SHUTDOWN_RETRY_LIMIT = 30.0


@dataclass
class Buckets:
    """A histogram kept in plain Python (the core does not import prometheus-client):
    `observe` is a bisect and two additions; `--metrics-port` exports it."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, not cumulative
    sum: float = 0.0
    count: int = 0
    #: Also given each observation: an OpenTelemetry histogram's record, while the worker
    #: exports its metrics there (pgtasks.worker.otel_metrics); None otherwise.
    sink: Callable[[float], object] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self.bounds):
            self.counts[i] += 1
        if self.sink is not None:
            self.sink(value)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs the Prometheus way, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            out.append((repr(float(bound)), running))
        return [*out, ("+Inf", self.count)]


SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH = (1, 2, 5, 10, 20, 50, 100, 200, 500)

# The worker's own metrics, by the names and meanings that both exporters use: Prometheus
# (`--metrics-port`, pgtasks.web.worker_metrics) and OpenTelemetry metrics
# (pgtasks.worker.otel_metrics), each labelled worker_id.
#: Counters: WorkerStats field -> (name without the `_total` that Prometheus adds, help).
COUNTERS = {
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
#: Gauges, read from the worker: (name, help) of its running tasks and of its slots.
RUNNING_GAUGE = ("pgtasks_worker_running_tasks", "Tasks running in this worker now")
SLOTS_GAUGE = ("pgtasks_worker_slots", "This worker's concurrency")
#: Histograms: WorkerStats field (a Buckets) -> (name, help, unit).
HISTOGRAMS = {
    "claim_seconds": ("pgtasks_worker_claim_seconds", "Claim round trip (claim_tasks)", "s"),
    "claim_batch": ("pgtasks_worker_claim_batch_size", "Tasks per claim", ""),
    "finish_batch": ("pgtasks_worker_finish_batch_size", "Results per completer call", ""),
}


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    yielded: int = 0
    lost: int = 0
    handed_back: int = 0
    claim_errors: int = 0
    claim_calls: int = 0
    finish_calls: int = 0
    rescued: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    claim_seconds: Buckets = field(default_factory=lambda: Buckets(SECONDS))  # producer's
    claim_batch: Buckets = field(default_factory=lambda: Buckets(BATCH))  # rows per claim
    finish_batch: Buckets = field(default_factory=lambda: Buckets(BATCH))  # results per call


class Service:
    """One loop with start()/stop(). Subclasses implement `run()` (the loop) and usually a
    `run_once()` that tests call directly, without the loop or a Worker around it."""

    name = "service"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._guarded())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _guarded(self) -> None:
        try:
            await self.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pgtasks worker: %s stopped by an error", self.name)


async def sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when `stopping` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), max(seconds, 0))


async def retrying(
    what: str,
    call: Callable[[], Awaitable[T]],
    stopping: asyncio.Event,
    *,
    through_shutdown: bool = False,
) -> T:
    """Retry a call through transient database errors with capped backoff.

    Outcome writes (`through_shutdown`) are retried through a shutdown too, but not forever:
    after SHUTDOWN_RETRY_LIMIT seconds of a database that stays away the worker gives up, and
    the leases hand those tasks to another worker.
    """
    delay = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            if stopping.is_set() and (
                not through_shutdown or loop.time() - started > SHUTDOWN_RETRY_LIMIT
            ):
                if through_shutdown:
                    log.error(
                        "%s: database still unavailable while stopping (%s); giving up, "
                        "leases will hand these tasks to another worker",
                        what,
                        exc,
                    )
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


def spawn_guarded(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
    """A side job whose error is logged, never left as an unretrieved task exception."""

    async def guard() -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pgtasks worker: %s failed", what)
            return None

    return asyncio.get_running_loop().create_task(guard())
