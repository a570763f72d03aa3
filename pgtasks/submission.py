"""The submit rules, each written once: what a submit sends the database besides the type.

`Client.submit`, `Client.submit_many` and every workflow node (pgtasks.workflows) build their
arguments with these functions, so a task submitted alone and the same task submitted as a
node of a workflow get the same queue, retries, timeout, backoff, run_at and keys:

* `params_json`: params as the JSON object the database stores;
* `policy`: queue, max_retries, timeout and backoff base;
* `run_at_for`: when the task may start (`run_at` or `delay`);
* `unique_rule` and `concurrency_rule`: the flow-control keys (docs/flow-control.md).

The order is always the same: an argument given to this submit wins; else the type's
declaration in this process's registry (`@task_register`), so a type submitted before any
worker registered it still gets its declared policy; else None, which the database
resolves as the type's registered policy, else its settings. Python holds no defaults of
its own. It imports nothing of pgtasks but pgtasks.registration and errors; bad input is
InvalidArgument (a PgTasksError), raised before any SQL runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from pydantic import BaseModel

from pgtasks.errors import InvalidArgument
from pgtasks.registration import TaskSpec, registry

#: What a submit accepts as params: a JSON object as a mapping, a pydantic model (dumped in
#: JSON mode), or None for no params.
ParamsArg: TypeAlias = Mapping[str, Any] | BaseModel | None

#: A duration as the API accepts it: seconds, or a timedelta.
Duration: TypeAlias = float | timedelta


def params_json(params: ParamsArg) -> dict[str, Any]:
    """The params as the JSON object the task stores (and its keys are derived from)."""
    if params is None:
        return {}
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json")
    if not isinstance(params, Mapping):
        raise InvalidArgument(
            f"params must be a dict or a pydantic model, got {type(params).__name__}"
        )
    return dict(params)


def _bad_duration(name: str, value: object) -> InvalidArgument:
    return InvalidArgument(
        f"{name} is not a duration: {value!r}",
        hint="pass seconds as a number, or a datetime.timedelta",
    )


def as_timedelta(value: Duration | None, name: str = "duration") -> timedelta | None:
    """A duration as a timedelta (what asyncpg sends as an interval); None stays None.
    Anything else (a string such as "1h", NaN, a bool, seconds beyond what a timedelta
    holds) is InvalidArgument naming `name`, not the ValueError or OverflowError that
    float() and timedelta() would let out."""
    if value is None or isinstance(value, timedelta):
        return value
    try:
        return timedelta(seconds=_seconds(value, name))
    except OverflowError:
        raise _bad_duration(name, value) from None


def as_seconds(value: Duration | None, name: str = "duration") -> float | None:
    """A duration as seconds (what a workflow spec, which is JSON, carries); None stays None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return _seconds(value, name)


def _seconds(value: float, name: str) -> float:
    # A string is refused even when float() reads it ("60"): "1h" next to it would be a
    # guess at units. A bool is an int to Python, never a duration to the caller.
    if isinstance(value, str | bytes | bool):
        raise _bad_duration(name, value)
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _bad_duration(name, value) from None
    if not math.isfinite(seconds):
        raise _bad_duration(name, value)
    return seconds


def run_at_for(run_at: datetime | None, delay: Duration | None) -> datetime | None:
    """When the task may start: `run_at`, or `delay` from now; None is now (the database's
    clock). Both at once is an error: which one should win is not for us to guess."""
    if run_at is not None and delay is not None:
        raise InvalidArgument("pass run_at or delay, not both")
    if delay is None:
        return run_at
    wait = as_timedelta(delay, "delay") or timedelta(0)
    try:
        return datetime.now().astimezone() + wait
    except OverflowError:
        raise _bad_duration("delay", delay) from None


@dataclass(frozen=True)
class Policy:
    """The retry and routing policy a submit sends; None lets the database decide."""

    queue: str | None
    max_retries: int | None
    timeout: timedelta | None
    backoff_base: timedelta | None
    soft_timeout: timedelta | None = None


def _declared(task_type: str) -> TaskSpec | None:
    return registry.get(task_type)


def policy(
    task_type: str,
    queue: str | None = None,
    max_retries: int | None = None,
    timeout: Duration | None = None,
    soft_timeout: Duration | None = None,
) -> Policy:
    """The policy of one submit: the arguments, else the type's declaration, else None
    (the database's rule). The backoff base is the declaration's only: a submit does not
    set it."""
    spec = _declared(task_type)
    if spec is not None:
        queue = queue or spec.queue
        max_retries = max_retries if max_retries is not None else spec.max_retries
        timeout = timeout if timeout is not None else spec.timeout
        soft_timeout = soft_timeout if soft_timeout is not None else spec.soft_timeout
    return Policy(
        queue=queue,
        max_retries=max_retries,
        timeout=as_timedelta(timeout, "timeout"),
        backoff_base=spec.backoff_base if spec is not None else None,
        soft_timeout=as_timedelta(soft_timeout, "soft_timeout"),
    )


def derived_unique_key(spec: TaskSpec, params: dict[str, Any]) -> str | None:
    """The unique key the type's declaration gives these params: `unique=True` is the type
    name plus the params as canonical JSON (same params, same key); a callable decides."""
    if spec.unique is None or spec.unique is False:
        return None
    if spec.unique is True:
        return f"{spec.name}:{json.dumps(params, sort_keys=True, separators=(',', ':'))}"
    return spec.unique(params)


def derived_concurrency_key(spec: TaskSpec, params: dict[str, Any]) -> str | None:
    """The concurrency key the type's declaration gives these params, if it declares one."""
    return spec.concurrency_key(params) if spec.concurrency_key is not None else None


def unique_rule(
    task_type: str,
    params: dict[str, Any],
    unique_key: str | None = None,
    unique_for: Duration | None = None,
) -> tuple[str | None, timedelta | None]:
    """(unique_key, unique_for) of one submit: the arguments; a key not given is derived
    from the declaration, and then its `unique_for` applies unless one was given."""
    spec = _declared(task_type)
    if unique_key is None and spec is not None:
        unique_key = derived_unique_key(spec, params)
        if unique_for is None and unique_key is not None:
            unique_for = spec.unique_for
    return unique_key, as_timedelta(unique_for, "unique_for")


def concurrency_rule(
    task_type: str,
    params: dict[str, Any],
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
) -> tuple[str | None, int | None]:
    """(concurrency_key, concurrency_limit) of one submit: the arguments; a key not given
    is derived from the declaration, and then its limit applies unless one was given."""
    spec = _declared(task_type)
    if concurrency_key is None and spec is not None:
        concurrency_key = derived_concurrency_key(spec, params)
        if concurrency_limit is None and concurrency_key is not None:
            concurrency_limit = spec.concurrency_limit
    return concurrency_key, concurrency_limit


@dataclass(frozen=True)
class FlowKeys:
    """The flow-control arguments of one submit (docs/flow-control.md)."""

    unique_key: str | None = None
    unique_for: timedelta | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    @property
    def empty(self) -> bool:
        """No flow control at all: the submit takes the plain, cheaper path."""
        return self == FlowKeys()


def flow_keys(
    task_type: str,
    params: dict[str, Any],
    unique_key: str | None = None,
    unique_for: Duration | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
) -> FlowKeys:
    """Both rules for one submit."""
    key, window = unique_rule(task_type, params, unique_key, unique_for)
    ckey, limit = concurrency_rule(task_type, params, concurrency_key, concurrency_limit)
    return FlowKeys(key, window, ckey, limit)


@dataclass(frozen=True)
class BatchFlowKeys:
    """The flow-control arguments of one `submit_many`: a key (or None) per item."""

    unique_keys: list[str | None] | None
    unique_for: timedelta | None
    concurrency_keys: list[str | None] | None
    concurrency_limit: int | None


def batch_flow_keys(
    task_type: str,
    items: list[dict[str, Any]],
    unique_keys: list[str | None] | None = None,
    unique_for: Duration | None = None,
    concurrency_keys: list[str | None] | None = None,
    concurrency_limit: int | None = None,
) -> BatchFlowKeys:
    """The rules of `flow_keys`, item by item. A list given is taken as it is (None in it
    means that item has no key); a list not given is derived per item, and left out when
    no item gets a key, so the batch takes the one-INSERT path. A type whose declaration
    derives no key (or that has none) skips the per-item pass (0.5 us per item, about
    as much as the rest of a batch's Python: 0.7 us per item of 10,000)."""
    spec = _declared(task_type)
    derives_unique = spec is not None and spec.unique is not None and spec.unique is not False
    derives_concurrency = spec is not None and spec.concurrency_key is not None
    if unique_keys is None and derives_unique:
        unique = [unique_rule(task_type, p, None, unique_for) for p in items]
        if any(k is not None for k, _ in unique):
            unique_keys = [k for k, _ in unique]
            unique_for = next(w for k, w in unique if k is not None)
    if concurrency_keys is None and derives_concurrency:
        conc = [concurrency_rule(task_type, p, None, concurrency_limit) for p in items]
        if any(k is not None for k, _ in conc):
            concurrency_keys = [k for k, _ in conc]
            concurrency_limit = next(limit for k, limit in conc if k is not None)
    window = as_timedelta(unique_for, "unique_for")
    return BatchFlowKeys(unique_keys, window, concurrency_keys, concurrency_limit)
