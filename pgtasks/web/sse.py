"""Server-Sent Events for one task, driven by the database's NOTIFY through Client.follow.

Events, in the order they happened:
  `status`   the task's state (TaskInfo JSON) first of all, then one per status change, read
             from the task's history in commit order, so a status that lasted less than a
             poll (a one-second COMMIT between attempts) is never skipped; each carries
             `transition` (from_status, to_status, at, attempt, worker_id), and its
             `status` and `attempt` are the change's;
  `progress` the task's state whenever current/total/message change;
  `log`      one new log line (TaskLog JSON), oldest first; its SSE id is the line id;
  `end`      after the final status; then the stream closes.
Client.follow wakes on pgtasks_progress / pgtasks_done (watch_task makes the database send
them for this task only while someone watches) and polls every second as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask

from pgtasks.client import Client, TaskEvent, TaskInfo, TaskLog
from pgtasks.web.errors import ApiError

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class TaskJSON(TaskInfo):
    """A task's state as the API writes it everywhere: durations (elapsed) in seconds."""

    model_config = ConfigDict(ser_json_timedelta="float")


class StatusJSON(TaskJSON):
    """A `status` frame after the first: the task's latest state, with the status and
    attempt of the change it reports, and that change."""

    transition: TaskEvent | None = None


def frame(event: str, data: BaseModel | str, event_id: int | None = None) -> str:
    if type(data) is TaskInfo:
        data = TaskJSON.model_construct(**dict(data))
    body = data if isinstance(data, str) else data.model_dump_json()
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body}\n\n"


def changes(
    info: TaskInfo,
    lines: list[TaskLog],
    last: TaskInfo | None,
    transitions: list[TaskEvent] | None = None,
) -> list[str]:
    """The frames that tell a watcher what changed since `last`: one `status` per
    transition (when the history says), else per differing status."""
    out: list[str] = []
    if last is not None and transitions:
        for t in transitions:
            state = {**dict(info), "status": t.to_status, "attempt": t.attempt}
            out.append(frame("status", StatusJSON.model_construct(**state, transition=t)))
    elif last is None or info.status != last.status:
        out.append(frame("status", info))
    elif (info.progress_current, info.progress_total, info.progress_message) != (
        last.progress_current,
        last.progress_total,
        last.progress_message,
    ):
        out.append(frame("progress", info))
    out.extend(frame("log", line, line.id) for line in lines)
    return out


Item = tuple[TaskInfo, list[TaskLog], list[TaskEvent]]


async def task_events(
    client: Client, task_id: int, *, after_id: int = 0, slots: asyncio.Semaphore | None = None
) -> StreamingResponse:
    """Read the first state before answering, so an unknown task is a 404, not an empty
    stream; the rest streams until the task has finished or the client goes away.

    Each stream holds one connection of the client's pool (its LISTEN) while it lasts, so
    `slots` caps how many run at once: one more is a 503 at once, and the rest of the API
    keeps its connections.
    """
    if slots is not None:
        if slots.locked():
            raise ApiError(
                503,
                "too_many_streams",
                "every event stream slot of this server is in use",
                "Poll GET /tasks/{id} meanwhile, or raise PGTASKS_API_MAX_STREAMS "
                "(each stream holds a database connection).",
            )
        await slots.acquire()
    stream = client.follow_changes(task_id, after_id=after_id)
    items: asyncio.Queue[Item | None] = asyncio.Queue()
    pumping: asyncio.Task[None] | None = None
    ended = False

    async def pump() -> None:
        async with contextlib.aclosing(stream):
            async for item in stream:
                items.put_nowait(item)
        items.put_nowait(None)

    async def finish() -> None:
        """Idempotent clean-up: from the body's end, and as the response's background task
        (which Starlette runs even when the client left before the body started)."""
        nonlocal pumping, ended
        if ended:
            return
        ended = True
        # Shielded: a client that goes away cancels under Starlette's cancel scope, which
        # would cancel the watcher's clean-up too (unwatch_task undone: the task would keep
        # NOTIFYing for nobody). The pump gets one plain asyncio cancel, so it cleans up.
        with anyio.CancelScope(shield=True):
            try:
                if pumping is None:
                    await stream.aclose()
                else:
                    if not finished:
                        pumping.cancel()
                    await asyncio.wait([pumping], timeout=5)
            finally:
                if slots is not None:
                    slots.release()

    finished = False
    try:
        first = await anext(stream)
    except BaseException:
        await finish()
        raise

    async def body() -> AsyncIterator[str]:
        # The follow generator runs in a task of its own (see finish()).
        nonlocal pumping, finished
        pumping = asyncio.create_task(pump())
        last: TaskInfo | None = None
        try:
            item: Item | None = first
            while item is not None:
                info, lines, transitions = item
                for f in changes(info, lines, last, transitions):
                    yield f
                last = info
                if info.finished:
                    # The follow generator ends by itself now, and cleans up uncancelled.
                    finished = True
                    yield frame("end", info)
                    return
                item = await items.get()
        finally:
            await finish()

    return StreamingResponse(
        body(), media_type="text/event-stream", headers=HEADERS, background=BackgroundTask(finish)
    )


# -- stream slots ----------------------------------------------------------------------

#: Each Client's stream slots, shared by every router that streams through it: the API's
#: task events and the dashboard's streams together. Separate caps (8 API streams and 4
#: dashboard ones) held 12 connections of a pool of 10, and every other endpoint waited.
_SLOTS: weakref.WeakKeyDictionary[Client, asyncio.Semaphore] = weakref.WeakKeyDictionary()

#: Connections of the pool a stream may never take: what the other endpoints keep.
KEEP_FREE = 2


def stream_slots(client: Client, limit: int) -> asyncio.Semaphore:
    """The slots of `client`'s streams: `limit`, but never more than its pool's size less
    KEEP_FREE (and at least one). The first router to ask sets the cap."""
    slots = _SLOTS.get(client)
    if slots is None:
        pool_size = client.pool.get_max_size()
        slots = asyncio.Semaphore(max(1, min(limit, pool_size - KEEP_FREE)))
        _SLOTS[client] = slots
    return slots


async def take_slot(slots: asyncio.Semaphore) -> Callable[[], None]:
    """Hold a slot (503 `too_many_streams` at once when none is free); returns its
    idempotent release."""
    if slots.locked():
        raise ApiError(
            503,
            "too_many_streams",
            "every event stream slot of this server is in use",
            "Close another stream, or raise PGTASKS_API_MAX_STREAMS (each stream holds a "
            "database connection).",
        )
    await slots.acquire()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            slots.release()

    return release
