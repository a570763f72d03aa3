"""Workflows: `chain`, `group` and `chord` builders that compile to one submit_workflow call.

The database resolves the graph (docs/workflows.md): a task with unfinished parents waits
(status WAITING), the finish of its last parent releases it in the same transaction, a
failed parent cancels its dependents unless they say `on_parent_failure="run"`. This
module only builds the spec:

    wf = await client.submit(chain(extract.s({"day": day}), transform.s(), load.s()))
    wf = await client.submit(chord([process.s({"i": i}) for i in items], notify.s()))
    result = await client.wait_workflow(wf)

A node is `MyTask.s(params, **options)` or `task_node("type", params, **options)`, with the
options of NodeOptions. Builders nest: a chain of groups, a group of chains, a chord whose
header is a chain... Each occurrence of a node is a task of its own. Each node follows the
rules of a single submit (pgtasks.submission), so a type gets the same policy alone and in
a graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias, TypedDict, Unpack

from pgtasks.errors import PgTasksError
from pgtasks.registration import TaskRef, type_name
from pgtasks.submission import (
    Duration,
    ParamsArg,
    as_seconds,
    concurrency_rule,
    params_json,
    policy,
    run_at_for,
)


class NodeOptions(TypedDict, total=False):
    """The options of a workflow node (`MyTask.s(params, **options)`, `task_node`).

    Submit's options that apply to one task of a graph, plus `name`, the node's name in
    the workflow (default: its type, numbered when the type occurs more than once), and
    `on_parent_failure`: "cancel" (the default: a failed or cancelled parent cancels this
    node) or "run" (it runs anyway and sees a ParentFailure in `ctx.parent_results`).
    None is the same as leaving an option out.
    """

    name: str | None
    queue: str | None
    priority: int | None
    run_at: datetime | None
    delay: Duration | None
    max_retries: int | None
    timeout: Duration | None
    soft_timeout: Duration | None
    concurrency_key: str | None
    concurrency_limit: int | None
    on_parent_failure: Literal["cancel", "run"] | None


@dataclass(frozen=True, eq=False)
class TaskNode:
    """One task of a workflow: its type, params, node name and options (NodeOptions less
    `name`), as `MyTask.s(...)` or `task_node(...)` made it."""

    task_type: str
    params: ParamsArg = None
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


#: Any workflow: what `submit` and `submit_workflow` take and the builders nest.
Node: TypeAlias = TaskNode | Chain | Group | Chord


def task_node(
    task: TaskRef, params: ParamsArg = None, /, **options: Unpack[NodeOptions]
) -> TaskNode:
    """A node of type `task` (a type name or a registered task) with these params: what
    `MyTask.s(params, **options)` returns, for a type known only by name. An unknown option
    is refused here rather than dropped from the graph."""
    unknown = set(options) - NodeOptions.__optional_keys__
    if unknown:
        raise PgTasksError(f"unknown workflow node option(s): {', '.join(sorted(unknown))}")
    rest: dict[str, Any] = dict(options)
    name = rest.pop("name", None)
    return TaskNode(type_name(task), params, name, rest)


def _nodes(items: tuple[Node | Iterable[Node], ...], what: str) -> tuple[Node, ...]:
    first = items[0] if len(items) == 1 else None
    if first is not None and not isinstance(first, Node) and isinstance(first, Iterable):
        items = tuple(first)  # group([a, b, c]) as well as group(a, b, c)
    nodes: list[Node] = []
    for item in items:
        if not isinstance(item, Node):
            raise PgTasksError(
                f"{what}() takes workflow nodes (MyTask.s(...), task_node(...), chain, group, "
                f"chord), got {type(item).__name__}"
            )
        nodes.append(item)
    if not nodes:
        raise PgTasksError(f"{what}() needs at least one node")
    return tuple(nodes)


def chain(*steps: Node | Iterable[Node]) -> Chain:
    """Steps one after the other: `chain(a.s(), b.s(), c.s())`, or `chain([...])`. A step
    sees the results of the one before as `ctx.parent_result` / `ctx.parent_results`."""
    return Chain(_nodes(steps, "chain"))


def group(*members: Node | Iterable[Node]) -> Group:
    """Members side by side: `group(a.s(), b.s())`, or `group([...])`; what follows the
    group waits for all of them."""
    return Group(_nodes(members, "group"))


def chord(header: Node | Iterable[Node], callback: Node) -> Chord:
    """`chord(group(...), callback)`: the callback runs after all of the header, with its
    results as parent results; a plain list of nodes is taken as a group."""
    head = header if isinstance(header, Node) else group(header)
    (cb,) = _nodes((callback,), "chord")
    return Chord(head, cb)


@dataclass(frozen=True)
class ParentFailure:
    """What `ctx.parent_results` holds for a parent that ended FAILED or CANCELLED (seen only
    by a node with on_parent_failure="run"), in place of a result it never produced."""

    task_id: int
    status: str
    error: str | None
    node: str | None = None


@dataclass(frozen=True)
class ChildFailure:
    """What `ctx.wait_for_children()` holds for a child that ended FAILED or CANCELLED (or
    was pruned before its parent read it: status "MISSING"), in place of a result it never
    produced, as a ParentFailure stands in for a failed parent's."""

    task_id: int
    status: str
    error: str | None


class SubmittedWorkflow(int):
    """The workflow's id (an int, so it passes wherever an id does) and `.nodes`, node
    name -> task id, to follow single tasks of the graph."""

    #: Node name -> task id, for every task of the graph.
    nodes: dict[str, int]

    def __new__(cls, workflow_id: int, nodes: dict[str, int]) -> SubmittedWorkflow:
        obj = super().__new__(cls, workflow_id)
        obj.nodes = dict(nodes)
        return obj

    def __repr__(self) -> str:
        return f"SubmittedWorkflow({int(self)}, nodes={self.nodes!r})"


def _leaves(node: Node) -> Iterator[TaskNode]:
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


def _spec_node(node: TaskNode, name: str, after: list[str]) -> dict[str, Any]:
    """One node of the SQL spec, by the rules of a single submit (pgtasks.submission): the
    node's option, else the type's @task_register declaration, else nothing, for the
    database to resolve."""
    o = dict(node.options)
    params = params_json(node.params)
    p = policy(
        node.task_type,
        o.pop("queue", None),
        o.pop("max_retries", None),
        o.pop("timeout", None),
        o.pop("soft_timeout", None),
    )
    run_at = run_at_for(o.pop("run_at", None), o.pop("delay", None))
    key, limit = concurrency_rule(
        node.task_type, params, o.pop("concurrency_key", None), o.pop("concurrency_limit", None)
    )
    out: dict[str, Any] = {"name": name, "type": node.task_type, "params": params}
    if after:
        out["after"] = after
    fields = {
        "queue": p.queue, "max_retries": p.max_retries, "timeout": as_seconds(p.timeout),
        "backoff_base": as_seconds(p.backoff_base), "soft_timeout": as_seconds(p.soft_timeout),
        "run_at": run_at.isoformat() if run_at else None,
        "concurrency_key": key, "concurrency_limit": limit,
    }  # fmt: skip
    out.update({k: v for k, v in {**fields, **o}.items() if v is not None})
    return out


def child_spec(node: TaskNode) -> dict[str, Any]:
    """One child of spawn_children, by the rules of a single submit, as `_spec_node`
    builds a workflow node: the node's option, else the type's declaration, else nothing,
    for the database to resolve. A child has no node name and no parents."""
    if not isinstance(node, TaskNode):
        raise PgTasksError(
            "ctx.spawn() takes task nodes (MyTask.s(...), task_node(...)), "
            f"got {type(node).__name__}"
        )
    for option in ("name", "on_parent_failure"):
        if node.options.get(option) is not None or (option == "name" and node.name is not None):
            raise PgTasksError(f"a spawned child takes no {option} (it is no workflow node)")
    spec = _spec_node(node, "", [])
    del spec["name"]
    return spec


def child_results_from(raw: list[dict[str, Any]]) -> list[Any]:
    """wait_for_children() JSON as ctx.wait_for_children shows it: each child's result in
    spawn order, or a ChildFailure for a child that did not end DONE."""
    return [
        v.get("result")
        if v.get("status") == "DONE"
        else ChildFailure(int(v["id"]), str(v.get("status", "")), v.get("error"))
        for v in raw
    ]


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
