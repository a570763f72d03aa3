"""What the templates show, computed in Python: relative times, the workflow graph's layout.
No I/O here, so each piece is tested without a browser."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from pgtasks.client import ActiveTask

#: A text label and a symbol per status, so status never depends on colour alone.
STATUS_ICON = {
    "PENDING": "○",
    "COMMIT": "◐",
    "RUNNING": "▶",
    "DONE": "✓",
    "FAILED": "✕",
    "CANCELLED": "⊘",
    "WAITING": "…",
}


def span(seconds: float) -> str:
    """A short duration: `45 s`, `3 min`, `2 h`, `4 d`."""
    s = abs(seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        return f"{s // 3600:.0f} h"
    return f"{s // 86400:.0f} d"


def relative(at: datetime, now: datetime | None = None) -> str:
    """`3 min ago`, `in 20 s`, `just now`."""
    now = now or datetime.now(UTC)
    delta = (at - now).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def time_tag(at: datetime | None, now: datetime | None = None) -> Markup:
    """<time> with the relative text, the exact time in `datetime` and on hover; the JS
    refreshes the text as time passes."""
    if at is None:
        return Markup("<span class=muted>—</span>")
    iso = at.isoformat()
    exact = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}" data-rel>{}</time>').format(
        iso, exact, relative(at, now)
    )


def duration(seconds: float) -> str:
    """A duration to the precision it deserves: `0.42 s`, `12.3 s`, `3 min 20 s`, `2 h 5 min`,
    `3 d 4 h`."""
    s = max(seconds, 0.0)
    if s < 10:
        return f"{s:.2f} s" if s < 1 else f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def duration_tag(value: timedelta | float | None) -> Markup:
    """A duration, with its exact length in seconds on hover."""
    if value is None:
        return Markup("<span class=muted>—</span>")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return Markup('<span class="dur" title="{} s">{}</span>').format(
        f"{seconds:.3f}", duration(seconds)
    )


def _getter(row: dict[str, Any] | Any) -> Any:
    """Reads a column of a row whether it is a dict (a list row) or a model (the detail)."""
    return row.get if isinstance(row, dict) else lambda k: getattr(row, k, None)


def waited(row: dict[str, Any] | Any, now: datetime) -> timedelta | None:
    """How long the task waited ready before its first start (started_at - run_at), or has
    waited so far while it is ready and not started. None when the row cannot tell: after
    a retry, snooze or yield, run_at is the next run's time, not when it first became ready."""
    get = _getter(row)
    run_at: datetime | None = get("run_at")
    started: datetime | None = get("started_at")
    if run_at is None:
        return None
    if started is not None:
        return max(started - run_at, timedelta(0)) if (get("attempt") or 0) <= 1 else None
    if get("status") in ("PENDING", "COMMIT") and run_at <= now:
        return now - run_at
    return None


def ran(row: dict[str, Any] | Any, now: datetime) -> timedelta | None:
    """How long the task has run: from its first start to its end, or to now while it is
    unfinished (task_status.elapsed, as the database computes it where the row has it)."""
    get = _getter(row)
    if get("elapsed") is not None:
        value: timedelta = get("elapsed")
        return value
    started: datetime | None = get("started_at")
    finished: datetime | None = get("finished_at")
    if started is None:
        return None
    return (finished or now) - started


def next_run(row: dict[str, Any] | Any, now: datetime) -> datetime | None:
    """When a task waiting to run again (PENDING or COMMIT with run_at ahead) runs: run_at
    as the database set it (the backoff of a retry, a snooze, a schedule). None otherwise."""
    get = _getter(row)
    run_at = get("run_at")
    if get("status") in ("PENDING", "COMMIT") and run_at is not None and run_at > now:
        when: datetime = run_at
        return when
    return None


def age(value: timedelta | float | None) -> str:
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return span(seconds)


def badge(status: str) -> Markup:
    icon = STATUS_ICON.get(status, "•")
    return Markup('<span class="badge s-{}"><span aria-hidden="true">{}</span> {}</span>').format(
        status.lower(), icon, status
    )


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def percent(row: dict[str, Any]) -> float | None:
    p = row.get("percent")
    return None if p is None else float(p)


#: How many of a worker's running tasks its row names; the rest are counted.
WORKER_TASKS_SHOWN = 5


def with_tasks(workers: list[dict[str, Any]], active: list[ActiveTask]) -> list[dict[str, Any]]:
    """Each worker row with `tasks`, what it runs now (Client.active rows, longest running
    first: id, task_type, percent, progress_message, running_for), at most
    WORKER_TASKS_SHOWN of them, and `more`, how many it runs beyond those."""
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for a in active:
        by_worker.setdefault(a.worker_id, []).append(
            a.model_dump(include={"id", "task_type", "percent", "progress_message", "running_for"})
        )
    out = []
    for w in workers:
        mine = by_worker.get(w["worker_id"], [])
        shown = mine[:WORKER_TASKS_SHOWN]
        out.append({**w, "tasks": shown, "more": len(mine) - len(shown)})
    return out


def lines(text: str | None) -> Markup:
    return Markup("<br>").join(escape(x) for x in (text or "").splitlines())


# -- workflow graph ------------------------------------------------------------------------


@dataclass
class Node:
    task_id: int
    name: str
    task_type: str
    status: str
    x: int
    y: int
    percent: float | None


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[tuple[int, int, int, int]]
    width: int
    height: int


NODE_W, NODE_H, GAP_X, GAP_Y = 170, 52, 60, 22


def layout(rows: list[dict[str, Any]]) -> Graph:
    """Layers left to right: a node sits one layer right of its deepest parent."""
    by_id = {int(r["task_id"]): r for r in rows}
    depth: dict[int, int] = {}

    def level(tid: int, seen: frozenset[int] = frozenset()) -> int:
        if tid in depth:
            return depth[tid]
        parents = [int(p) for p in (by_id[tid].get("parent_ids") or []) if int(p) in by_id]
        d = 0
        for p in parents:
            if p not in seen:  # a cycle cannot happen in a workflow; do not loop if it did
                d = max(d, level(p, seen | {tid}) + 1)
        depth[tid] = d
        return d

    for tid in sorted(by_id):
        level(tid)
    columns: dict[int, list[int]] = {}
    for tid in sorted(by_id):
        columns.setdefault(depth[tid], []).append(tid)
    nodes: dict[int, Node] = {}
    for d, ids in columns.items():
        for i, tid in enumerate(ids):
            r = by_id[tid]
            total, current = r.get("progress_total"), r.get("progress_current")
            pct = 100.0 * current / total if total and current is not None else None
            nodes[tid] = Node(
                task_id=tid, name=str(r.get("node") or r.get("task_type")),
                task_type=str(r.get("task_type")), status=str(r.get("status")),
                x=10 + d * (NODE_W + GAP_X), y=10 + i * (NODE_H + GAP_Y), percent=pct,
            )  # fmt: skip
    edges = []
    for tid, n in nodes.items():
        for p in by_id[tid].get("parent_ids") or []:
            if int(p) in nodes:
                src = nodes[int(p)]
                edges.append((src.x + NODE_W, src.y + NODE_H // 2, n.x, n.y + NODE_H // 2))
    width = 20 + (max(columns, default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = 20 + max((len(v) for v in columns.values()), default=1) * (NODE_H + GAP_Y) - GAP_Y
    return Graph(nodes=list(nodes.values()), edges=edges, width=width, height=height)
