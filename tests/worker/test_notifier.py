"""Notifier alone: wake-ups and cancels arrive as calls; a dropped connection comes back."""

from __future__ import annotations

import asyncio

from pgtasks.worker.notifier import Notifier
from tests.worker.conftest import claim, submit


async def test_wakeups_cancels_and_reconnect(dsn, conn):
    woken: asyncio.Queue[str] = asyncio.Queue()
    cancelled: asyncio.Queue[int] = asyncio.Queue()
    n = Notifier(
        dsn,
        on_wakeup=woken.put_nowait,
        on_cancel=cancelled.put_nowait,
        application_name="pgtasks-notifier-test",
        check_interval=0.1,
    )
    n.start()
    try:
        await asyncio.wait_for(n.connected.wait(), 30)
        assert await asyncio.wait_for(woken.get(), 5) == ""  # "look once": may have missed some
        await conn.execute("SELECT pgtasks.submit_task('noop', queue => 'q1')")
        # The wake-up names no queue: it carries the queue's tag.
        tag = await conn.fetchval("SELECT pgtasks.queue_tag('q1')")
        assert await asyncio.wait_for(woken.get(), 30) == tag != "q1"
        [tid] = await submit(conn, "noop")
        assert tid in [r["id"] for r in await claim(conn, 2)]
        await conn.execute("SELECT pgtasks.cancel_task($1)", tid)
        # The notice names the task; the worker asks the database before it stops anything.
        assert await asyncio.wait_for(cancelled.get(), 30) == tid
        # Anyone's notice that is not a task id reaches nobody.
        await conn.execute(
            "SELECT pg_notify('pgtasks_cancel', 'x:1'), pg_notify('pgtasks_cancel', $1)", str(tid)
        )
        assert await asyncio.wait_for(cancelled.get(), 30) == tid
        assert cancelled.empty()

        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'pgtasks-notifier-test'"
        )
        assert killed == 1
        while not woken.empty():
            woken.get_nowait()
        assert await asyncio.wait_for(woken.get(), 30) == ""  # reconnected, and says so
        assert n.connected.is_set()
    finally:
        await n.stop()
    assert not n.running
