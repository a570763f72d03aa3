"""The Worker wires the services together and owns nothing else.

    notifier ──wake──▶ producer ──claimed rows──▶ runner ──outcome──▶ completer
        │                 ▲                                              │
        │                 └───────────── freed slot / written ───────────┘
        └─cancel notice─▶ lease keeper: heartbeats for every held task (at once after a
                          cancel notice); stops the ones the database says were lost
    maintainer:   rescue of expired leases, pruning, firing due schedules

Connections, at any concurrency: `core` (2, producer and completer), `control` (1, lease
keeper and maintainer), `writes` (1, the tasks' checkpoints, logs and progress), plus the
notifier's LISTEN connection: at most 5. `ctx.pool`, for a task's own queries, is a separate
pool of `task_pool_size` that opens no connection until a task uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from pgtasks import db, queries, schedules
from pgtasks.config import resolve_url
from pgtasks.context import (
    current_task,
    install_task_log_handler,
    uninstall_task_log_handler,
)
from pgtasks.db import TRANSIENT
from pgtasks.errors import PgTasksError
from pgtasks.task import Registry, registry
from pgtasks.worker import otel_metrics
from pgtasks.worker.base import WorkerStats, retrying, sleep_or_stop, spawn_guarded
from pgtasks.worker.completer import Completer
from pgtasks.worker.lease_keeper import LeaseKeeper
from pgtasks.worker.maintainer import Maintainer
from pgtasks.worker.notifier import Notifier
from pgtasks.worker.producer import Producer
from pgtasks.worker.runner import DaemonThreads, Outcome, Runner, Succeeded, Yielded
from pgtasks.worker.slots import Attempt, Slots, StopReason
from pgtasks.worker.writer import TaskWriter

log = logging.getLogger("pgtasks.worker")
loop_time = time.monotonic

#: Defaults, written once here (the CLI shows these).
DEFAULT_CONCURRENCY = 100  # async slots are cheap: a coroutine each
DEFAULT_THREADS = 10  # sync (`def`) tasks need a thread each: a smaller bound
DEFAULT_TASK_POOL_SIZE = 2  # ctx.pool; opened lazily
# The lease, retention and every task policy default live in the database
# (pgtasks.settings): a worker given none uses those.


class Worker:
    """Runs registered tasks from the database. `await worker.run()`; `worker.stop()` drains."""

    def __init__(
        self,
        url: str | None = None,
        *,
        registry: Registry = registry,
        queues: list[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        threads: int = DEFAULT_THREADS,
        task_pool_size: int = DEFAULT_TASK_POOL_SIZE,
        prefetch: int | None = None,
        poll_interval: float = 1.0,
        listen: bool = True,
        lease: float | None = None,
        heartbeat_interval: float | None = None,
        rescue_interval: float | None = None,
        shutdown_grace: float = 30.0,
        retention: timedelta | None = None,
        prune: bool = True,
        prune_interval: float = 60.0,
        burst: bool = False,
        worker_id: str | None = None,
        statement_cache_size: int = 100,
        meter_provider: Any = None,
    ) -> None:
        if concurrency < 1 or threads < 1 or task_pool_size < 1:
            raise PgTasksError("concurrency, threads and task_pool_size must be at least 1")
        if (lease is not None and lease <= 0) or poll_interval <= 0:
            raise PgTasksError("lease and poll_interval must be positive")
        self._url = url
        self.registry = registry
        self.queues = queues or None
        self.concurrency = concurrency
        self.threads = threads
        self.task_pool_size = task_pool_size
        self.poll_interval = poll_interval
        self.listen = listen
        self.lease = lease  # None until run() reads settings.default_lease
        self._heartbeat_interval = heartbeat_interval
        self._rescue_interval = rescue_interval
        self.heartbeat_interval = 0.0  # set by run(), from the lease
        self.rescue_interval = 0.0
        self.shutdown_grace = shutdown_grace
        self.retention = retention
        self.prune = prune
        self.prune_interval = prune_interval
        self.burst = burst
        self.statement_cache_size = statement_cache_size
        # OpenTelemetry metrics (pgtasks.worker.otel_metrics): this provider, else the
        # global one if the application configured it; nothing without either.
        self.meter_provider = meter_provider
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.application_name = f"pgtasks-worker:{self.worker_id}"
        self.stats = WorkerStats()
        self.executor = DaemonThreads()
        # Prefetch (see slots.py): as many as the slots by default, for short async tasks;
        # none with sync types registered (their thread slots are claimed exactly).
        if prefetch is None:
            prefetch = 0 if any(not s.is_async for s in registry) else concurrency
        self.prefetch = prefetch
        self.slots = Slots(concurrency, threads, prefetch)
        self._writer: TaskWriter | None = None
        self._max_log_bytes: int | None = None  # the database's, read at start
        self._pools: dict[str, asyncpg.Pool] = {}
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._handing: set[asyncio.Task[Any]] = set()  # hand-backs a stopping worker awaits
        #: Set once the worker is registered, with its task types' policies in the database.
        self.ready = asyncio.Event()
        self.producer: Producer | None = None
        self.completer: Completer | None = None

    # -- public --------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool tasks get as `ctx.pool` (lazy: no connection until first used)."""
        return self._pool("tasks")

    def _pool(self, name: str) -> asyncpg.Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise PgTasksError("worker is not running")
        return pool

    def stop(self) -> None:
        """Stop claiming, let running tasks finish within the grace period, hand back the rest."""
        self._stopping.set()
        if self.producer is not None:
            self.producer.wake()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Register, then claim and run tasks until `stop()` (with `burst`, until nothing is
        ready now and none runs: tasks scheduled later are left waiting), drain and
        unregister. With `install_signal_handlers`, SIGINT and SIGTERM call `stop()`."""
        types = self.registry.names()
        if not types:
            raise PgTasksError(
                "no task types are registered; import the module that defines them "
                "(pgtasks worker --app MODULE)"
            )
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        url = await resolve_url(self._url)
        install_task_log_handler()  # `logging` inside a task goes to its task log
        services: list[Any] = []
        try:
            await self._connect(url)
            await self._await_worker_schema()
            await self._settle_lease()
            await self._check_search_path()
            await self._register()
            await self._register_types()
            self.ready.set()
            otel_metrics.attach(self, self.meter_provider)
            services = self._wire(url)
            assert self.producer is not None
            await retrying("wake-up tags", self.producer.load_wakeup_tags, self._stopping)
            for s in services:
                s.start()
            await self.producer.run()
            await self._drain()
            for s in services:
                await s.stop()
            with contextlib.suppress(*TRANSIENT):
                await self._pool("control").execute(queries.UNREGISTER_WORKER, self.worker_id)
        finally:
            for s in services:
                with contextlib.suppress(Exception):
                    await s.stop()
            for pool in self._pools.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), 10)
            self._pools = {}
            self.executor.shutdown(wait=False, cancel_futures=True)
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            uninstall_task_log_handler()
            otel_metrics.detach(self)
            self._stopped.set()

    # -- wiring --------------------------------------------------------------------------

    async def _settle_lease(self) -> None:
        """The lease to heartbeat by: ours if given, else the database's default. The
        database's log-size limit is read here too, so long lines are clipped to it instead
        of being refused (PT204) with the whole batch they travel in."""
        row = await retrying(
            "settings",
            lambda: self._pool("control").fetchrow(queries.SETTINGS),
            self._stopping,
        )
        assert row is not None  # current_settings() returns one row
        self._max_log_bytes = row["max_log_bytes"]
        if self.lease is None:
            self.lease = row["default_lease"].total_seconds()
        lease = self.lease
        assert lease is not None
        self.heartbeat_interval = self._heartbeat_interval or lease / 3
        self.rescue_interval = self._rescue_interval or max(min(lease / 2, 30.0), 0.2)

    async def _await_worker_schema(self) -> None:
        """Wait until the schema is one this worker runs on, saying so once.

        This worker presents a claim's token with every call; a schema before 0028 returns
        none, and every task claimed there would fail here and, rescued, spend a retry. It
        registers the code versions it serves, which register_worker takes since 0037. So
        a worker started before `pgtasks migrate` claims nothing until it has run."""
        waiting = False
        while not self._stopping.is_set():
            ready = await retrying(
                "schema check",
                lambda: self._pool("control").fetchval(queries.HAS_WORKER_SCHEMA),
                self._stopping,
            )
            if ready:
                if waiting:
                    log.info("the schema is migrated now; starting")
                return
            if not waiting:
                log.warning(
                    "the database schema predates this worker (lease tokens, sql/0028; code "
                    "versions, sql/0037): claiming nothing "
                    "until `pgtasks migrate` has run"
                )
                waiting = True
            await sleep_or_stop(self._stopping, self.poll_interval)

    async def _check_search_path(self) -> None:
        """Warn when the pinned search_path did not arrive: a pooler set to ignore the
        startup parameter (PgBouncer's ignore_startup_parameters) drops it silently, and
        only a pin on the server side then keeps planted objects out (see db.SEARCH_PATH)."""
        path = await retrying(
            "search_path",
            lambda: self._pool("control").fetchval(queries.CURRENT_SEARCH_PATH),
            self._stopping,
        )
        if str(path).replace(" ", "") != db.SEARCH_PATH.replace(" ", ""):
            log.warning(
                "this connection's search_path is %r, not %r: objects planted in its schemas "
                "can shadow the operators pgtasks' statements use; pin it on the server "
                "(ALTER ROLE ... SET search_path = %s)",
                path,
                db.SEARCH_PATH,
                db.SEARCH_PATH,
            )

    async def _register_types(self) -> None:
        """Upsert each registered type's policy, so submits from anywhere (psql included)
        get the queue, retries, timeout and backoff this code declares."""

        async def upsert() -> None:
            async with self._pool("control").acquire() as conn, conn.transaction():
                for spec in self.registry:
                    await conn.execute(
                        queries.REGISTER_TASK_TYPE,
                        spec.name,
                        spec.queue,
                        None,  # priority: no per-type priority in @task_register yet
                        spec.max_retries,
                        spec.timeout,
                        spec.backoff_base,
                        self.worker_id,
                        spec.soft_timeout,
                    )
                # Declared schedules too; ones made through SQL or the CLI are kept.
                await schedules.declare(conn, list(self.registry.schedules.values()))

        await retrying("register task types", upsert, self._stopping)

    def _wire(self, url: str) -> list[Any]:
        writer = TaskWriter(
            self._pool("writes"), max_log_bytes=self._max_log_bytes, lease=self.lease
        )
        self._writer = writer
        runner = Runner(self.executor)
        types = {s.name: s for s in self.registry}
        self.completer = Completer(
            self._pool("core"),
            slots=self.slots,
            stats=self.stats,
            stopping=self._stopping,
        )
        self.producer = Producer(
            self._pool("core"),
            worker_id=self.worker_id,
            slots=self.slots,
            async_types=[n for n, s in types.items() if s.is_async],
            sync_types=[n for n, s in types.items() if not s.is_async],
            on_claimed=lambda rows: self._start_all(rows, runner, writer),
            before_claim=self._hand_back_stale,
            stats=self.stats,
            stopping=self._stopping,
            queues=self.queues,
            lease=self.lease,
            poll_interval=self.poll_interval,
            burst=self.burst,
        )
        producer = self.producer
        self.completer.claimer = producer  # results in, work out: one round trip
        lease_keeper = LeaseKeeper(
            self._pool("control"),
            worker_id=self.worker_id,
            lease=self.lease,
            interval=self.heartbeat_interval,
            owned=self.slots.owned,
            on_lost=self.slots.stop,
            on_reconnect=self._register,
            slots=self.slots,
            on_resumed=producer.wake,
        )
        producer.on_claim_lost = lease_keeper.reconcile_soon

        def cancel_notice(task_id: int) -> None:
            # A hint from anyone: the lease keeper's heartbeat tells whether it is true.
            if self.slots.holds(task_id):
                lease_keeper.confirm(task_id)

        def rescued(n: int) -> None:
            self.stats.rescued += n
            producer.wake()

        maintainer = Maintainer(
            self._pool("control"),
            interval=self.rescue_interval,
            retention=self.retention,
            prune=self.prune,
            prune_interval=self.prune_interval,
            on_rescued=rescued,
            worker_id=self.worker_id,
        )
        services: list[Any] = [self.completer, lease_keeper, maintainer]
        if self.listen:
            services.append(
                Notifier(
                    url,
                    on_wakeup=lambda tag: producer.wake() if producer.wants(tag) else None,
                    on_cancel=cancel_notice,
                    application_name=self.application_name,
                )
            )
        return services

    async def _connect(self, url: str) -> None:
        """The worker's own pools: a fixed size whatever the concurrency (see module doc)."""
        name = self.application_name
        sizes = {"core": 2, "control": 1, "writes": 1}
        for key, size in sizes.items():
            self._pools[key] = await self._connect_pool(url, size, 1, name, reset=db.no_reset)
        # min_size 0: a worker whose tasks never touch ctx.pool opens no connection for it.
        # The database's own search_path: it runs the task's SQL (its tables, in public
        # say), never pgtasks' statements.
        self._pools["tasks"] = await self._connect_pool(
            url, self.task_pool_size, 0, f"pgtasks-task:{self.worker_id}", pin_search_path=False
        )

    async def _connect_pool(
        self,
        url: str,
        size: int,
        min_size: int,
        name: str,
        *,
        reset: db.Reset | None = None,
        pin_search_path: bool = True,
    ) -> asyncpg.Pool:
        delay = 0.5
        while True:
            try:
                return await db.create_pool(
                    url,
                    min_size=min_size,
                    max_size=size,
                    application_name=name,
                    statement_cache_size=self.statement_cache_size,
                    reset=reset,
                    pin_search_path=pin_search_path,
                )
            except TRANSIENT as exc:
                if self._stopping.is_set():
                    raise
                log.warning("database unreachable (%s); retrying in %.1fs", exc, delay)
                await sleep_or_stop(self._stopping, delay)
                delay = min(delay * 2, 10)

    async def _register(self) -> None:
        await retrying(
            "register",
            lambda: self._pool("control").execute(
                queries.REGISTER_WORKER,
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                self.queues,
                self.concurrency,
                timedelta(seconds=self.lease) if self.lease else None,
                # The code versions this worker serves: the database records the first on
                # the tasks it starts and hands it only tasks of versions it serves.
                [f"{s.name}@{s.version}" for s in self.registry if s.version is not None] or None,
                [f"{s.name}@{v}" for s in self.registry for v in s.compatible_versions] or None,
            ),
            self._stopping,
        )

    # -- one attempt ---------------------------------------------------------------------

    def _start_all(self, rows: list[asyncpg.Record], runner: Runner, writer: TaskWriter) -> None:
        if self._stopping.is_set():
            # A claim sent before the stop (the completer's finish-and-claim) can land after
            # the drain's hand-back: give its rows back now, or they would stay RUNNING with
            # nobody running them until their lease ran out, and spend a retry.
            assert self.completer is not None
            completer = self.completer
            for row in rows:
                back = Yielded(None, handed_back=True)
                self._handing.add(
                    spawn_guarded(
                        completer.hand_back(row["id"], row["lease_token"], back), "hand back"
                    )
                )
            return
        for row in rows:
            if self.slots.has_room():
                self._start(row, runner, writer)
            else:
                self.slots.hold(row)  # prefetched: starts when a slot frees

    def _start_held(self, runner: Runner, writer: TaskWriter) -> None:
        while self.slots.has_room():
            row = self.slots.next_held()
            if row is None:
                return
            self._start(row, runner, writer)

    def _hand_back_stale(self, *, everything: bool = False) -> list[asyncio.Task[Any]]:
        """Give back prefetched tasks that waited too long for a slot (or all, when stopping)."""
        assert self.completer is not None
        completer = self.completer
        return [
            spawn_guarded(
                completer.hand_back(row["id"], row["lease_token"], Yielded(None, handed_back=True)),
                "hand back",
            )
            for row in self.slots.stale(everything=everything)
        ]

    def _start(self, row: asyncpg.Record, runner: Runner, writer: TaskWriter) -> None:
        spec = self.registry.get(row["task_type"])
        att = Attempt.claimed(
            row,
            writer=writer,
            is_sync=spec is not None and not spec.is_async,
            run_blocking=runner.run_blocking,
            pool=lambda: self.pool,
        )
        self.slots.add(att)
        att.future = asyncio.get_running_loop().create_task(self._attempt(att, spec, runner))

    async def _attempt(self, att: Attempt, spec: Any, runner: Runner) -> None:
        assert self.completer is not None and self.producer is not None
        token = current_task.set(att.ctx)
        outcome: Outcome | None = None
        started = loop_time()
        try:
            outcome = await runner.run(att, spec)
            await self.completer.record(att.task_id, att.lease_token, outcome, att.ctx._new_trace)
        except asyncio.CancelledError:
            # Cancelled again while its outcome was being written (e.g. the drain's stop
            # after the grace period): the lease hands the task on.
            pass
        except Exception:
            # The database refused even the failure record: logged; the lease hands it on.
            log.exception("task %s: its outcome could not be recorded", att.task_id)
        finally:
            current_task.reset(token)
            att.ctx._close()  # late progress/log calls (e.g. from abandoned threads) are dropped
            self.slots.ended(att, loop_time() - started)
            if self._writer is not None and not self._stopping.is_set():
                self._start_held(runner, self._writer)  # a stopping worker hands them back
            if not isinstance(outcome, Succeeded):
                # A success's slot is refilled by the completer, in the round trip that
                # writes the result; any other end wakes the producer.
                self.producer.wake()

    # -- shutdown ------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Hand back prefetched tasks, give running ones the grace period, then cancel and
        hand back what is left."""
        self._handing.update(self._hand_back_stale(everything=True))
        if self._handing:
            await asyncio.wait(self._handing)
        pending = [a.future for a in self.slots.running.values() if a.future is not None]
        if pending:
            log.info(
                "stopping: waiting up to %gs for %d task(s)", self.shutdown_grace, len(pending)
            )
            _, still = await asyncio.wait(pending, timeout=self.shutdown_grace)
            for att in list(self.slots.running.values()):
                att.stop(StopReason.SHUTDOWN)
            if still:
                await asyncio.wait(still, timeout=10)
        assert self.completer is not None
        # Waits for a finish-and-claim still in flight too: its rows, if any, are being
        # handed back (`_start_all`), and those hand-backs are awaited here.
        await self.completer.run_once()
        while self._handing:
            await asyncio.wait(set(self._handing))
            self._handing = {t for t in self._handing if not t.done()}
