"""`SyncClient`: the Client for code without an event loop (Flask, Django, scripts).

A thin wrapper: the async Client runs on a private event loop in a daemon thread, and each
call waits for its result there. So it behaves exactly like Client (same SQL, same errors)
and is safe to share between threads; each call is one round trip to that loop.

    with SyncClient() as tasks:
        task_id = tasks.submit("send_email", {"to": "a@b.c"})
        print(tasks.wait(task_id, timeout=30))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pgtasks.client import Client, TaskInfo, TaskLog
from pgtasks.workflows import SubmittedWorkflow

T = TypeVar("T")


class SyncClient:
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

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._client.close())
            finally:
                self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        task: Any,
        params: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_retries: int | None = None,
        timeout: float | timedelta | None = None,
        depends_on: Sequence[int] | None = None,
        on_parent_failure: str | None = None,
    ) -> int:
        """Client.submit, a workflow too (then a SubmittedWorkflow). (To submit inside your
        own transaction, use the async Client.)"""
        return self._call(  # type: ignore[no-any-return]
            self._client.submit(
                task,
                params,
                queue=queue,
                priority=priority,
                run_at=run_at,
                delay=delay,
                max_retries=max_retries,
                timeout=timeout,
                depends_on=depends_on,
                on_parent_failure=on_parent_failure,
            )
        )

    def submit_workflow(self, workflow: Any, *, name: str | None = None) -> SubmittedWorkflow:
        return self._call(self._client.submit_workflow(workflow, name=name))

    def wait_workflow(self, workflow_id: int, *, timeout: float | None = None) -> Any:
        """Client.wait_workflow: the sinks' result, or WorkflowFailed / TimeoutError."""
        return self._call(self._client.wait_workflow(workflow_id, timeout=timeout))

    def workflow(self, workflow_id: int) -> dict[str, Any]:
        return self._call(self._client.workflow(workflow_id))

    def workflows(self, *, limit: int = 50) -> list[dict[str, Any]]:
        return self._call(self._client.workflows(limit=limit))

    def cancel_workflow(self, workflow_id: int) -> int:
        return self._call(self._client.cancel_workflow(workflow_id))

    def submit_many(self, task: Any, params_list: Sequence[Any], **options: Any) -> list[int]:
        return self._call(self._client.submit_many(task, params_list, **options))

    def get(self, task_id: int) -> TaskInfo:
        return self._call(self._client.get(task_id))

    def wait(self, task_id: int, *, timeout: float | None = None) -> Any:
        """Client.wait: the result, or TaskFailed / TaskCancelled / TimeoutError."""
        return self._call(self._client.wait(task_id, timeout=timeout))

    def cancel(self, task_id: int) -> str:
        return self._call(self._client.cancel(task_id))

    def retry(self, task_id: int) -> None:
        self._call(self._client.retry(task_id))

    def logs(self, task_id: int, *, after_id: int = 0) -> list[TaskLog]:
        return self._call(self._client.logs(task_id, after_id=after_id))
