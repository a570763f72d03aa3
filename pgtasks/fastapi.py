"""FastAPI integration: a Client (and optionally a Worker) for the life of the app.

    from pgtasks.fastapi import get_client, lifespan

    app = FastAPI(lifespan=lifespan(worker=True, concurrency=4))

    @app.post("/reports")
    async def create(client: Annotated[Client, Depends(get_client)]) -> dict[str, int]:
        return {"task_id": await client.submit("report", {...})}

On shutdown (uvicorn's SIGTERM) the in-process worker stops claiming, lets running tasks
finish within `shutdown_grace` seconds and hands the rest back, so another process resumes
them from their last checkpoint. Needs the `web` extra (`pip install pgtasks[web]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request

from pgtasks.client import Client
from pgtasks.errors import ConfigurationError
from pgtasks.worker import Worker

#: The integration's logger: the in-process worker's start, drain and crash.
log = logging.getLogger("pgtasks.fastapi")

#: The attribute of `app.state` that holds the running Client.
STATE_CLIENT = "pgtasks_client"
#: The attribute of `app.state` that holds the in-process Worker (None without one).
STATE_WORKER = "pgtasks_worker"
#: The attribute of `app.state` that holds the Client of the replica reads go to (None:
#: reads go to the primary, through STATE_CLIENT's).
STATE_READER = "pgtasks_reader"


@contextlib.asynccontextmanager
async def running(
    app: FastAPI,
    url: str | None = None,
    *,
    read_url: str | None = None,
    worker: bool = False,
    **worker_options: Any,
) -> AsyncIterator[Client]:
    """Run a Client, and a Worker when `worker=True` (options as for `Worker`), while the
    block runs. Use it inside a lifespan of your own; `lifespan()` is the ready-made one.

    `read_url` (a hot standby of `url`'s database) opens a second Client there, which
    `get_reader` gives to what only reads; writes keep the first one."""
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(url))
        reader = await stack.enter_async_context(Client(read_url)) if read_url else None
        setattr(app.state, STATE_CLIENT, client)
        setattr(app.state, STATE_READER, reader)
        w: Worker | None = None
        run: asyncio.Task[None] | None = None
        if worker:
            w = Worker(url, **worker_options)
            run = asyncio.create_task(w.run(), name="pgtasks-worker")
            ready = asyncio.create_task(w.ready.wait())
            await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
            if run.done():  # it failed to start: say why instead of serving without it
                ready.cancel()
                run.result()
            setattr(app.state, STATE_WORKER, w)
            run.add_done_callback(_report_crash)
            log.info("pgtasks worker %s running in-process", w.worker_id)
        try:
            yield client
        finally:
            if w is not None and run is not None:
                log.info("pgtasks worker %s draining (grace %gs)", w.worker_id, w.shutdown_grace)
                w.stop()
                await run
            setattr(app.state, STATE_CLIENT, None)
            setattr(app.state, STATE_WORKER, None)
            setattr(app.state, STATE_READER, None)


def _report_crash(run: asyncio.Task[None]) -> None:
    """A worker that dies while the app serves says so at once, not only at shutdown (the
    app goes on serving its API; its tasks' leases run out and other workers take them)."""
    if not run.cancelled() and run.exception() is not None:
        log.error("the in-process pgtasks worker stopped", exc_info=run.exception())


def lifespan(
    url: str | None = None,
    *,
    read_url: str | None = None,
    worker: bool = False,
    **worker_options: Any,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan for `FastAPI(lifespan=...)`: see `running`."""

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        async with running(app, url, read_url=read_url, worker=worker, **worker_options):
            yield

    return run


def get_client(request: Request) -> Client:
    """Dependency: `client: Annotated[Client, Depends(get_client)]`."""
    client = getattr(request.app.state, STATE_CLIENT, None)
    if not isinstance(client, Client):
        raise ConfigurationError(
            "no pgtasks Client is running: create the app with "
            "FastAPI(lifespan=pgtasks.fastapi.lifespan()) or use pgtasks.fastapi.running()"
        )
    return client


def replica_of(request: Request) -> Client | None:
    """The app's replica Client (`running(read_url=...)`), or None when reads go to the
    primary."""
    reader = getattr(request.app.state, STATE_READER, None)
    return reader if isinstance(reader, Client) else None


@dataclasses.dataclass(frozen=True)
class ClientSources:
    """Where a router's Clients come from: the ones it was built with
    (`router(client=..., reader=...)`), else the app's (`lifespan`, `running`). A router
    given its own primary and no reader reads from that primary, never from the app's
    replica."""

    client: Client | None = None
    reader: Client | None = None

    def primary(self, request: Request) -> Client:
        """Dependency: the Client that writes (and reads where no replica is)."""
        return self.client if self.client is not None else get_client(request)

    def replica(self, request: Request) -> Client | None:
        """The replica's Client, or None when reads go to the primary."""
        if self.reader is not None:
            return self.reader
        return replica_of(request) if self.client is None else None

    def read(self, request: Request) -> Client:
        """Dependency for what only reads: the replica's Client, else the primary's."""
        return self.replica(request) or self.primary(request)


def get_reader(request: Request) -> Client:
    """Dependency for what only reads: the replica's Client when the app has one, else
    the app's Client (`get_client`)."""
    return replica_of(request) or get_client(request)
