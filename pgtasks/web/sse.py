"""Server-Sent Events for one task, driven by the database's NOTIFY through Client.follow.

Events, in the order they happened as the stream saw them:
  `status`   the task's state (TaskInfo JSON) whenever its status changes, and first of all;
  `progress` the task's state whenever current/total/message change;
  `log`      one new log line (TaskLog JSON), oldest first; its SSE id is the line id;
  `end`      after the final status; then the stream closes.
Client.follow wakes on pgtasks_progress / pgtasks_done (watch_task makes the database send
them for this task only while someone watches) and polls every second as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from pgtasks.client import Client, TaskInfo, TaskLog

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: str, data: BaseModel | str, event_id: int | None = None) -> str:
    body = data if isinstance(data, str) else data.model_dump_json()
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body}\n\n"


def changes(info: TaskInfo, lines: list[TaskLog], last: TaskInfo | None) -> list[str]:
    """The frames that tell a watcher what changed since `last`."""
    out: list[str] = []
    if last is None or info.status != last.status:
        out.append(frame("status", info))
    elif (info.progress_current, info.progress_total, info.progress_message) != (
        last.progress_current,
        last.progress_total,
        last.progress_message,
    ):
        out.append(frame("progress", info))
    out.extend(frame("log", line, line.id) for line in lines)
    return out


async def task_events(client: Client, task_id: int, *, after_id: int = 0) -> StreamingResponse:
    """Read the first state before answering, so an unknown task is a 404, not an empty
    stream; the rest streams until the task has finished or the client goes away (the
    generator is closed then, which releases the LISTEN connection)."""
    stream = client.follow(task_id, after_id=after_id)
    try:
        first = await anext(stream)
    except BaseException:
        await stream.aclose()
        raise

    async def pump(out: asyncio.Queue[tuple[TaskInfo, list[TaskLog]] | None]) -> None:
        async with contextlib.aclosing(stream):
            async for item in stream:
                out.put_nowait(item)
        out.put_nowait(None)

    async def body() -> AsyncIterator[str]:
        # The follow generator runs in a task of its own: a client that goes away cancels
        # this generator under Starlette's cancel scope, which would cancel the watcher's
        # clean-up awaits too (leaving unwatch_task undone, so the task keeps NOTIFYing for
        # nobody). A plain asyncio cancel of the pump lets that clean-up run.
        items: asyncio.Queue[tuple[TaskInfo, list[TaskLog]] | None] = asyncio.Queue()
        pumping = asyncio.create_task(pump(items))
        last: TaskInfo | None = None
        try:
            item: tuple[TaskInfo, list[TaskLog]] | None = first
            while item is not None:
                info, lines = item
                for f in changes(info, lines, last):
                    yield f
                last = info
                if info.finished:
                    yield frame("end", info)
                    return
                item = await items.get()
        finally:
            # After the final status the follow generator ends by itself (and cleans up
            # uncancelled); only a stream cut short needs the cancel.
            if last is None or not last.finished:
                pumping.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([pumping], timeout=5)

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)
