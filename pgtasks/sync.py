"""`SyncClient`: the Client for code without an event loop (Flask, Django, scripts).

A thin wrapper: the async Client runs on a private event loop in a daemon thread, and each
call waits for its result there. So it behaves exactly like Client (same SQL, same errors)
and is safe to share between threads; each call is one round trip to that loop.

    with SyncClient() as tasks:
        task_id = tasks.submit("send_email", {"to": "a@b.c"})
        print(tasks.wait(task_id, timeout=30))

Its methods are made from Client's (`_blocking`, `_blocking_iter`), not written again, so a
parameter added to a Client method is there in the twin too, with the same name, kind,
default and type for a type checker; tests/test_sync_client.py checks that every public
Client method has its twin.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Final, ParamSpec, TypeVar, cast

from pgtasks.client import Client
from pgtasks.errors import PgTasksError

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")

_NO_TRANSACTION: Final = (
    "SyncClient cannot submit inside your transaction: its connections live on its own "
    "event loop; use the async Client with connection= for that"
)


def _described(call: Callable[..., Any], method: Callable[..., Any]) -> None:
    """Name and document the twin after the Client method it runs."""
    call.__qualname__ = f"SyncClient.{method.__name__}"
    doc = inspect.cleandoc(method.__doc__ or "")
    call.__doc__ = f"Client.{method.__name__}, blocking until it returns.\n\n{doc}".rstrip()


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SyncClient, P], R]:
    """The blocking twin of a Client coroutine method: same parameters, same result."""

    @functools.wraps(method)
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if kwargs.get("connection") is not None:
            raise PgTasksError(_NO_TRANSACTION)
        return self._call(method(self._client, *args, **kwargs))

    _described(call, method)
    return call


def _blocking_iter(
    method: Callable[Concatenate[Client, P], AsyncIterator[Y]],
) -> Callable[Concatenate[SyncClient, P], Iterator[Y]]:
    """The blocking twin of a Client async iterator: a plain iterator of the same items."""

    @functools.wraps(method)
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Y]:
        return self._iterate(method(self._client, *args, **kwargs))

    _described(call, method)
    return call


_DONE = object()


class SyncClient:
    """The Client, blocking: `with SyncClient(url) as tasks: tasks.submit(...)`.

    Connects when made (with no url, the configured database) and closes with `close()`
    or at the end of the `with` block. Every public Client method is here under the same
    name with the same parameters; `follow` is a plain iterator. The one thing it cannot
    do is join your own transaction (`connection=`), which needs your event loop.
    """

    def __init__(self, url: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pgtasks-sync-client", daemon=True
        )
        self._thread.start()
        self._client = Client(url)
        try:
            self._call(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, R]) -> R:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("SyncClient is closed")
        # The call runs in the caller's contextvars, not the loop thread's: a submit made
        # inside the caller's OpenTelemetry span carries that span's trace context.
        callers = contextvars.copy_context()

        async def in_callers_context() -> R:
            return await asyncio.get_running_loop().create_task(coro, context=callers)

        return asyncio.run_coroutine_threadsafe(in_callers_context(), self._loop).result()

    def _iterate(self, items: AsyncIterator[Y]) -> Iterator[Y]:
        """Drive an async iterator on the client's loop, one item per round trip; closing
        the iterator early closes it there (so its connection is released)."""

        async def step() -> Y | object:
            try:
                return await items.__anext__()
            except StopAsyncIteration:
                return _DONE

        try:
            while True:
                item = self._call(step())
                if item is _DONE:
                    return
                yield cast(Y, item)  # not _DONE, so an item of `items`
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and self._thread.is_alive():
                self._call(aclose())

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def connect(self) -> SyncClient:
        """Client.connect: a SyncClient is connected once it is made, so this only returns
        it (a closed one raises RuntimeError: it does not reopen)."""
        self._call(self._client.connect())
        return self

    def close(self) -> None:
        """Close the pool and stop the private event loop; calls after this raise."""
        if self._thread.is_alive():
            try:
                self._call(self._client.close())
            finally:
                self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Client's methods, in Client's order.
    submit = _blocking(Client.submit)
    submit_many = _blocking(Client.submit_many)
    submit_workflow = _blocking(Client.submit_workflow)
    get = _blocking(Client.get)
    find = _blocking(Client.find)
    list_tasks = _blocking(Client.list_tasks)
    page = _blocking(Client.page)
    detail = _blocking(Client.detail)
    logs = _blocking(Client.logs)
    history = _blocking(Client.history)
    errors = _blocking(Client.errors)
    workflow = _blocking(Client.workflow)
    workflows = _blocking(Client.workflows)
    cancel_workflow = _blocking(Client.cancel_workflow)
    wait_workflow = _blocking(Client.wait_workflow)
    queues = _blocking(Client.queues)
    configure_queue = _blocking(Client.configure_queue)
    pause_queue = _blocking(Client.pause_queue)
    resume_queue = _blocking(Client.resume_queue)
    types = _blocking(Client.types)
    queue_stats = _blocking(Client.queue_stats)
    failed = _blocking(Client.failed)
    workers = _blocking(Client.workers)
    active = _blocking(Client.active)
    metrics = _blocking(Client.metrics)
    replica_lag = _blocking(Client.replica_lag)
    health = _blocking(Client.health)
    cancel = _blocking(Client.cancel)
    send_event = _blocking(Client.send_event)
    inbox = _blocking(Client.inbox)
    children = _blocking(Client.children)
    stranded = _blocking(Client.stranded)
    retry = _blocking(Client.retry)
    queue_cards = _blocking(Client.queue_cards)
    throughput = _blocking(Client.throughput)
    chart = _blocking(Client.chart)
    failed_groups = _blocking(Client.failed_groups)
    browse = _blocking(Client.browse)
    retry_many = _blocking(Client.retry_many)
    cancel_many = _blocking(Client.cancel_many)
    schedules = _blocking(Client.schedules)
    create_schedule = _blocking(Client.create_schedule)
    drop_schedule = _blocking(Client.drop_schedule)
    pause_schedule = _blocking(Client.pause_schedule)
    resume_schedule = _blocking(Client.resume_schedule)
    trigger_schedule = _blocking(Client.trigger_schedule)
    wait = _blocking(Client.wait)
    follow = _blocking_iter(Client.follow)
    follow_changes = _blocking_iter(Client.follow_changes)
