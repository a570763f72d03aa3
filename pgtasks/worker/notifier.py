"""Notifier: holds the worker's one LISTEN connection and turns notifications into calls.

Any role may LISTEN and NOTIFY, so a notification names nothing and orders nothing:
`pgtasks_wakeup` carries the tag of a queue with new work (pgtasks.queue_tag; the producer
compares it with its queues' tags) and wakes the producer; `pgtasks_cancel` carries a task
id, and makes the lease keeper ask the database whether this worker still holds that task
(it stops only what the database says it lost). When the connection drops, the producer's
poll carries on, and on every (re)connect the producer is woken once, for what it may have
missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from pgtasks import db, queries
from pgtasks.db import DATABASE_ERRORS
from pgtasks.worker.base import Service, sleep_or_stop

log = logging.getLogger("pgtasks.worker")

WAKEUP_CHANNEL = "pgtasks_wakeup"
CANCEL_CHANNEL = "pgtasks_cancel"


class Notifier(Service):
    name = "notifier"

    def __init__(
        self,
        url: str,
        *,
        on_wakeup: Callable[[str], None],
        on_cancel: Callable[[int], object],
        application_name: str | None = None,
        check_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.on_wakeup = on_wakeup
        self.on_cancel = on_cancel
        self.application_name = application_name
        self.check_interval = check_interval
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    # asyncpg's listener signature: (connection, pid, channel, payload); the payload is text.
    def _wakeup(self, _conn: object, _pid: int, _channel: str, tag: object) -> None:
        self.on_wakeup(str(tag))

    def _cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):  # not a task id: nobody's task
            self.on_cancel(int(str(payload)))

    async def run(self) -> None:
        """Keep a LISTEN connection open; reconnect with backoff when it drops."""
        delay = 0.5
        while not self._stopping.is_set():
            lost = asyncio.Event()
            try:
                conn = await db.connect(
                    self.url,
                    application_name=self.application_name,
                    codecs=False,
                    statement_cache_size=0,
                )
                self._conn = conn
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(WAKEUP_CHANNEL, self._wakeup)
                await conn.add_listener(CANCEL_CHANNEL, self._cancel)
                delay = 0.5
                self.connected.set()
                self.on_wakeup("")  # we may have missed notifications while disconnected
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.check_interval)
                    if not lost.is_set() and not conn.is_closed():
                        # A silent network drop does not always fire the listener.
                        try:
                            await asyncio.wait_for(conn.execute(queries.PING), 5)
                        except DATABASE_ERRORS:
                            lost.set()
                log.warning("LISTEN connection lost; polling until it is back")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Also server errors: a pooler that refuses LISTEN, too many connections...
                # Polling carries on meanwhile, so this is never fatal.
                log.warning("LISTEN unavailable (%s); polling, retrying in %.1fs", exc, delay)
                await sleep_or_stop(self._stopping, delay)
                delay = min(delay * 2, 10)
            finally:
                self.connected.clear()
                self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def stop(self) -> None:
        self._stopping.set()
        self._close()
        await super().stop()
