"""The worker, as services: producer, runner, completer, lease keeper, maintainer, notifier,
wired together by `Worker` (see docs/architecture.md)."""

from __future__ import annotations

from pgtasks.worker.base import WorkerStats
from pgtasks.worker.runner import DaemonThreads
from pgtasks.worker.slots import StopReason
from pgtasks.worker.worker import Worker

__all__ = ["DaemonThreads", "StopReason", "Worker", "WorkerStats"]
