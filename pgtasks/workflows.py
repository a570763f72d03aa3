"""Workflows: `chain`, `group` and `chord` builders that compile to one submit_workflow call.

The database resolves the graph (docs/workflows.md): a task with unfinished parents waits
(status WAITING), the finish of its last parent releases it in the same transaction, a
failed parent cancels its dependents unless they say `on_parent_failure="run"`. This
module only builds the spec:

    wf = await client.submit(chain(extract.s({"day": day}), transform.s(), load.s()))
    wf = await client.submit(chord([process.s({"i": i}) for i in items], notify.s()))
    result = await client.wait_workflow(wf)

A node is `MyTask.s(params, **options)` or `task_node("type", params, **options)`; the
options are submit's (queue, priority, run_at, delay, max_retries, timeout,
concurrency_key, concurrency_limit) plus `name` (the node's name in the workflow) and
`on_parent_failure` ("cancel" or "run"). Builders nest: a chain of groups, a group of
chains, a chord whose header is a chain... Each occurrence of a node is a task of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pgtasks.errors import PgTasksError
from pgtasks.task import registry, type_name

_OPTIONS = frozenset({
    "queue", "priority", "run_at", "delay", "max_retries", "timeout", "concurrency_key",
    "concurrency_limit", "on_parent_failure",
})  # fmt: skip


@dataclass(frozen=True, eq=False)
class TaskNode:
    """One task of a workflow: its type, params and submit options."""

    task_type: str
    params: Any = None
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Chain:
    """Each step starts after the previous one ended (all of it, for a group)."""

    steps: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Group:
    """Members run side by side; what follows a group waits for all of them."""

    members: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Chord:
    """A header (usually a group) and a callback that runs after all of it."""

    header: Node
    callback: Node


Node = TaskNode | Chain | Group | Chord


def task_node(
    task: Any, params: Any = None, /, *, name: str | None = None, **options: Any
) -> TaskNode:
    """A node of type `task` (a type name or a registered task) with these params."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise PgTasksError(f"unknown workflow node option(s): {', '.join(sorted(unknown))}")
    return TaskNode(type_name(task), params, name, options)


def _nodes(items: tuple[Any, ...], what: str) -> tuple[Node, ...]:
    if len(items) == 1 and not isinstance(items[0], Node) and isinstance(items[0], Iterable):
        items = tuple(items[0])  # group([a, b, c]) as well as group(a, b, c)
    for item in items:
        if not isinstance(item, Node):
            raise PgTasksError(
                f"{what}() takes workflow nodes (MyTask.s(...), task_node(...), chain, group, "
                f"chord), got {type(item).__name__}"
            )
    if not items:
        raise PgTasksError(f"{what}() needs at least one node")
    return items


def chain(*steps: Any) -> Chain:
    return Chain(_nodes(steps, "chain"))


def group(*members: Any) -> Group:
    return Group(_nodes(members, "group"))


def chord(header: Any, callback: Node) -> Chord:
    """`chord(group(...), callback)`; a plain list of nodes is taken as a group."""
    head = header if isinstance(header, Node) else group(header)
    (cb,) = _nodes((callback,), "chord")
    return Chord(head, cb)


@dataclass(frozen=True)
class ParentFailure:
    """What `ctx.parent_results` holds for a parent that ended FAILED or CANCELLED (seen only
    by a node with on_parent_failure="run")."""

    task_id: int
    status: str
    error: str | None
    node: str | None = None


class SubmittedWorkflow(int):
    """The workflow's id (an int) and `.nodes`, node name -> task id."""

    nodes: dict[str, int]

    def __new__(cls, workflow_id: int, nodes: dict[str, int]) -> SubmittedWorkflow:
        obj = super().__new__(cls, workflow_id)
        obj.nodes = dict(nodes)
        return obj

    def __repr__(self) -> str:
        return f"SubmittedWorkflow({int(self)}, nodes={self.nodes!r})"


def _leaves(node: Node) -> Iterable[TaskNode]:
    if isinstance(node, TaskNode):
        yield node
    elif isinstance(node, Chain):
        for s in node.steps:
            yield from _leaves(s)
    elif isinstance(node, Group):
        for m in node.members:
            yield from _leaves(m)
    else:
        yield from _leaves(node.header)
        yield from _leaves(node.callback)


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _spec_node(node: TaskNode, name: str, after: list[str]) -> dict[str, Any]:
    """One node of the SQL spec. Queue, retries, timeout, backoff and run_at follow the same
    rule as Client.submit (Client._policy, Client._when: the node's option, else the type's
    @task_register declaration, else NULL for the database to resolve); only a concurrency
    key, which needs the params and the Python lambda, is derived here."""
    from pgtasks.client import Client, _params  # the submit rules, shared with Client.submit

    o = dict(node.options)
    params = _params(node.params)
    queue, retries, timeout, base = Client._policy(
        node.task_type, o.pop("queue", None), o.pop("max_retries", None), o.pop("timeout", None)
    )
    run_at = Client._when(o.pop("run_at", None), o.pop("delay", None))
    declared = registry.get(node.task_type)
    if o.get("concurrency_key") is None and declared is not None and declared.concurrency_key:
        o["concurrency_key"] = declared.concurrency_key_for(params)
        o.setdefault("concurrency_limit", declared.concurrency_limit)
    out: dict[str, Any] = {"name": name, "type": node.task_type, "params": params}
    if after:
        out["after"] = after
    fields = {
        "queue": queue, "max_retries": retries, "timeout": _seconds(timeout),
        "backoff_base": _seconds(base), "run_at": run_at.isoformat() if run_at else None,
    }  # fmt: skip
    out.update({k: v for k, v in {**fields, **o}.items() if v is not None})
    return out


def compile_workflow(root: Node, *, name: str | None = None) -> dict[str, Any]:
    """The submit_workflow spec of a builder tree. Unnamed nodes are named after their
    type, with #1, #2... when the type occurs more than once."""
    if not isinstance(root, Node):
        raise PgTasksError(f"not a workflow node: {type(root).__name__}")
    counts = Counter(n.task_type for n in _leaves(root))
    seen: Counter[str] = Counter()
    taken: set[str] = {n.name for n in _leaves(root) if n.name is not None}
    nodes: list[dict[str, Any]] = []
    used: set[str] = set()

    def name_of(node: TaskNode) -> str:
        if node.name is not None:
            if node.name in used:
                raise PgTasksError(f"workflow node name {node.name!r} is used twice")
            return node.name
        t = node.task_type
        while True:
            seen[t] += 1
            candidate = t if counts[t] == 1 else f"{t}#{seen[t]}"
            if candidate not in taken and candidate not in used:
                return candidate

    def add(node: Node, after: list[str]) -> list[str]:
        if isinstance(node, TaskNode):
            n = name_of(node)
            used.add(n)
            nodes.append(_spec_node(node, n, after))
            return [n]
        if isinstance(node, Chain):
            for step in node.steps:
                after = add(step, after)
            return after
        if isinstance(node, Group):
            return [sink for m in node.members for sink in add(m, after)]
        return add(node.callback, add(node.header, after))

    add(root, [])
    spec: dict[str, Any] = {"nodes": nodes}
    if name is not None:
        spec["name"] = name
    return spec


def parent_results_from(raw: dict[str, Any]) -> dict[int, Any]:
    """parent_results() JSON as ctx.parent_results shows it: id -> result, or a
    ParentFailure for a parent that ended FAILED or CANCELLED."""
    out: dict[int, Any] = {}
    for key, v in raw.items():
        tid = int(key)
        if v.get("status") == "DONE":
            out[tid] = v.get("result")
        else:
            out[tid] = ParentFailure(tid, v.get("status", ""), v.get("error"), v.get("node"))
    return dict(sorted(out.items()))
