"""Running Django tasks in a pgtasks worker: one pgtasks task type per Django task, named by
its dotted path, whose handler calls the function with the task's JSON args and kwargs.

`register(alias)` finds the tasks (the `tasks` module of every installed app, plus any
module imported before) and adds their types to a pgtasks Registry; `manage.py
pgtasks_worker` does that and then runs pgtasks' own worker command on that registry.

A sync (`def`) task runs in one of the worker's threads, an `async def` one on its event
loop. Django's database connections are per thread: a sync task's thread lives for that
one task, so the connections it opened are closed when it ends (Django closes a request's
the same way); after an async task, the connections of the thread Django runs its async
ORM calls in are given Django's end-of-request treatment (close_old_connections).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections
from django.utils.module_loading import autodiscover_modules

from pgtasks.contrib.django._compat import Task, TaskContext, normalize_json, task_backends
from pgtasks.contrib.django.backend import PgTasksBackend, declared_tasks
from pgtasks.errors import PermanentError, PgTasksError
from pgtasks.registration import Registry, TaskSpec

__all__ = ["register"]


def backend_for(alias: str) -> PgTasksBackend:
    """The TASKS backend `alias`, which must be a PgTasksBackend."""
    try:
        backend = task_backends[alias]
    except Exception as exc:  # Django's InvalidTaskBackend(Error), per version
        raise PgTasksError(f"TASKS has no backend {alias!r}: {exc}") from exc
    if not isinstance(backend, PgTasksBackend):
        raise PgTasksError(
            f"TASKS[{alias!r}] is {type(backend).__module__}.{type(backend).__name__}, not "
            "pgtasks.contrib.django.PgTasksBackend"
        )
    return backend


def _arguments(path: str, params: Any) -> tuple[list[Any], dict[str, Any]]:
    """args and kwargs from the task's params; any other shape fails the task at once (no
    retry makes it right)."""
    if isinstance(params, dict) and set(params) <= {"args", "kwargs"}:
        args = params.get("args", [])
        kwargs = params.get("kwargs", {})
        if isinstance(args, list) and isinstance(kwargs, dict):
            return args, kwargs
    raise PermanentError(
        f'params of Django task {path} must be {{"args": [...], "kwargs": {{...}}}}, '
        f"got {json.dumps(params)[:200]}"
    )


def _returned(path: str, value: Any) -> Any:
    """The return value as Django stores it (normalize_json); one that is not JSON fails
    the task at once: running it again would only redo its work to the same end."""
    try:
        value = normalize_json(value)
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(
            f"Django task {path} returned a value that is not JSON: {exc}"
        ) from exc
    return value


def _handler(task: Task[Any, Any]) -> Callable[..., Any]:
    """The pgtasks handler `(ctx, params)` of one Django task."""
    path = task.module_path
    func: Callable[..., Any] = task.func

    if iscoroutinefunction(func):

        async def run_async(ctx: Any, params: Any) -> Any:
            args, kwargs = _arguments(path, params)
            try:
                if task.takes_context:
                    result = await task.get_backend().aget_result(str(ctx.task_id))
                    args = [TaskContext(task_result=result), *args]
                return _returned(path, await func(*args, **kwargs))
            finally:
                await sync_to_async(close_old_connections)()

        return run_async

    def run_sync(ctx: Any, params: Any) -> Any:
        args, kwargs = _arguments(path, params)
        try:
            if task.takes_context:
                result = task.get_backend().get_result(str(ctx.task_id))
                args = [TaskContext(task_result=result), *args]
            return _returned(path, func(*args, **kwargs))
        finally:
            connections.close_all()  # this thread's, which ends with the task

    return run_sync


#: One spec per task path, so registering twice (a second worker in one process, tests)
#: hands the Registry the same handler and is no conflict.
_specs: dict[tuple[str, str], TaskSpec] = {}


def spec_for(backend: PgTasksBackend, task: Task[Any, Any]) -> TaskSpec:
    """The pgtasks type of a Django task: its dotted path, its queue, and the backend's
    MAX_RETRIES and TIMEOUT (None: the database's settings)."""
    key = (backend.alias, task.module_path)
    spec = _specs.get(key)
    if spec is None:
        timeout = backend.timeout
        spec = TaskSpec(
            name=task.module_path,
            handler=_handler(task),
            is_async=iscoroutinefunction(task.func),
            queue=task.queue_name,
            max_retries=backend.max_retries,
            timeout=None if timeout is None else timedelta(seconds=float(timeout)),
        )
        _specs[key] = spec
    return spec


def register(alias: str, into: Registry, *, autodiscover: bool = True) -> list[str]:
    """Add a pgtasks type for every Django task of the backend `alias` to `into`; the
    names added. With `autodiscover`, every installed app's `tasks` module is imported
    first (modules imported before count too)."""
    backend = backend_for(alias)
    if autodiscover:
        autodiscover_modules("tasks")
    names = []
    for task in declared_tasks(alias).values():
        into.add(spec_for(backend, task))
        names.append(task.module_path)
    return sorted(names)
