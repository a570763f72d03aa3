"""The dashboard's routes: HTML pages that read through the Client, two event streams, the
static files, and the login that lets a browser carry the API token.

Pages read; they never write. Every action (cancel, retry, pause...) is a fetch() from the
browser to the JSON API with `Authorization: Bearer <token>`, so the dashboard has no
write path of its own and exactly the API's auth.

How a browser gets the token (docs/dashboard.md): the login form posts it here; the
answer sets an HttpOnly, SameSite=Strict cookie holding a session (pgtasks.web.session:
signed, expiring, ended by logout; pages and event streams check it: a browser cannot
put headers on a page load or an EventSource), and the form's script keeps the token
itself in sessionStorage for the fetch() calls.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.background import BackgroundTask

from pgtasks import __version__
from pgtasks.client import STATUSES, Client
from pgtasks.errors import TaskNotFound, WorkflowNotFound
from pgtasks.fastapi import ClientSources
from pgtasks.queries import SEARCH_WINDOW
from pgtasks.web.dashboard import views
from pgtasks.web.errors import ApiError, ErrorRoute, error_response
from pgtasks.web.session import Sessions, same
from pgtasks.web.settings import WebSettings
from pgtasks.web.sse import HEADERS, stream_slots, take_slot, task_events

HERE = Path(__file__).resolve().parent
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
COOKIE = "pgtasks_dashboard"
PAGE = 50
#: Children listed on a task's page; the page of a parent with more says the list stops there.
CHILDREN_SHOWN = 500
#: How often the overview stream sends queue cards and workers.
TICK_S = 1.0
#: The overview charts' spans (the selector), in seconds: the roll-up's buckets over them.
CHART_SPANS = {"5m": 300, "1h": 3600, "24h": 86400}

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    rel=views.time_tag, age=views.age, badge=views.badge, pretty=views.pretty,
    lines=views.lines, icon=lambda s: views.STATUS_ICON.get(str(s), "•"),
    dur=views.duration_tag,
)  # fmt: skip
_env.globals.update(waited=views.waited, ran=views.ran, next_run=views.next_run)
# Jinja's own urlencode keeps "/": a queue named `a/../../schedules/x` made the action URL
# api/queues/a/../../schedules/x/pause, which the browser resolves to a schedule's. Every
# character but the unreserved ones is escaped, so a name stays one path segment.
_env.filters["urlencode"] = lambda v: quote(str(v), safe="")


def sessions_for(settings: WebSettings) -> Sessions:
    """The dashboard sessions `settings` describe (token, PGTASKS_SESSION_SECRET, TTL)."""
    key = settings.session_secret
    secret = key.get_secret_value().encode() if key else None
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return Sessions(token, secret=secret, ttl=settings.session_ttl)


def _jsonable(value: Any) -> Any:
    """Rows as JSON for the event stream: times as ISO text, intervals as seconds."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _script_json(data: Any) -> str:
    """JSON to inline in a <script> element: `<` escaped, so no text closes the element."""
    return json.dumps(_jsonable(data)).replace("<", "\\u003c")


def dashboard_router(
    client: Client | None = None,
    *,
    settings: WebSettings | None = None,
    api_path: str = "api",
    sessions: Sessions | None = None,
    reader: Client | None = None,
) -> APIRouter:
    """The dashboard as a router. `api_path` is where the JSON API is mounted: relative to
    the dashboard's own prefix (`"api"`: the dashboard at /x, the API at /x/api), or an
    absolute path (`"/internal/pgtasks-api"`). With no `client`, the app's running one.
    `sessions` (default: from `settings`) lets the app check the same logins elsewhere.

    Pages and the overview stream read through `reader`, a Client of a replica (default:
    the app's replica Client when it has one and no `client` is given, else the
    primary's); each page then says how far behind its primary the replica is once that
    is more than settings.read_lag_threshold. The task stream stays on the primary: it
    follows the task through LISTEN and watch_task, which a hot standby cannot run."""
    settings = settings or WebSettings()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    sessions = sessions or sessions_for(settings)
    open_reads = settings.api_open_reads

    sources = ClientSources(client, reader)
    the_client, the_replica, the_reader = sources.primary, sources.replica, sources.read

    async def replica_lag(request: Request) -> None:
        """How far behind the replica is, for page() to show (nothing: pages read the
        primary). The database compares the lag with the threshold."""
        replica = the_replica(request)
        if replica is not None and can_read(request):
            request.state.pgtasks_replica = await replica.replica_lag(settings.read_lag_threshold)

    C = Annotated[Client, Depends(the_client)]
    R = Annotated[Client, Depends(the_reader)]
    #: On every page: the replica's lag, read before the page is.
    LAG = [Depends(replica_lag)]
    ui = APIRouter(include_in_schema=False, route_class=ErrorRoute)

    def base_of(request: Request) -> str:
        return request.url_for("pgtasks_dashboard_overview").path.rstrip("/")

    def api_of(base: str, request: Request) -> str:
        if api_path.startswith("/"):
            root: str = request.scope.get("root_path", "")
            return root + api_path.rstrip("/")
        return f"{base}/{api_path.strip('/')}"

    def can_read(request: Request) -> bool:
        if token is None or open_reads:
            return True
        if logged_in(request):
            return True
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and same(bearer.strip(), token)

    def logged_in(request: Request) -> bool:
        return sessions.valid(request.cookies.get(COOKIE, ""))

    def page(request: Request, name: str, **ctx: Any) -> Response:
        base = base_of(request)
        if not can_read(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{base}/login?next={quote(target)}", status_code=303)
        html = _env.get_template(name).render(
            request=request, base=base, api=api_of(base, request), version=__version__,
            read_only=settings.dashboard_read_only, token_set=token is not None,
            logged_in=logged_in(request), now=datetime.now(UTC), statuses=STATUSES,
            replica=getattr(request.state, "pgtasks_replica", None), **ctx,
        )  # fmt: skip
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def denied(request: Request) -> Response | None:
        if can_read(request):
            return None
        return Response("log in first", status_code=401)

    # -- pages ---------------------------------------------------------------------------

    @ui.get("/", name="pgtasks_dashboard_overview", dependencies=LAG)
    async def overview(request: Request, c: R) -> Response:
        if not can_read(request):
            return page(request, "overview.html")
        cards, chart, workers, active, stranded = await asyncio.gather(
            c.queue_cards(), c.chart(CHART_SPANS["5m"]), c.workers(), c.active(), c.stranded(20)
        )
        workers = views.with_tasks(workers, active)
        data = {"chart": {"span": "5m", "buckets": chart}, "queues": cards, "workers": workers}
        return page(
            request, "overview.html", title="Overview", nav="overview", cards=cards,
            workers=workers, initial=_script_json(data), stranded=stranded,
        )  # fmt: skip

    @ui.get("/tasks", name="pgtasks_dashboard_tasks", dependencies=LAG)
    async def tasks(
        request: Request,
        c: R,
        status: str | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        q: str | None = None,
        order: str = "newest",
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        if not can_read(request):
            return page(request, "tasks.html")
        status = status if status in STATUSES else None
        queue, task_type, q = queue or None, task_type or None, (q or "").strip() or None
        if q is not None and q.lstrip("#").isdigit():  # an id: go straight to it
            return RedirectResponse(f"{base_of(request)}/tasks/{int(q.lstrip('#'))}", 303)
        oldest_ready = order == "ready"
        rows = await c.browse(
            status=status, queue=queue, task_type=task_type, search=q, after_id=after,
            oldest_ready=oldest_ready, limit=PAGE + 1,
        )  # fmt: skip
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        filters = {"status": status, "queue": queue, "task_type": task_type, "q": q,
                   "order": "ready" if oldest_ready else None}  # fmt: skip
        cards, types = await asyncio.gather(c.queue_cards(), c.types())
        return page(
            request, "tasks.html", title="Tasks", nav="tasks", rows=rows, more=more,
            filters=filters, first_page=after is None, search_window=SEARCH_WINDOW,
            next_after=rows[-1]["id"] if more and rows else None,
            queues=[x["queue"] for x in cards], types=[t["task_type"] for t in types],
        )  # fmt: skip

    @ui.get("/tasks/{task_id}", name="pgtasks_dashboard_task", dependencies=LAG)
    async def task(request: Request, c: R, task_id: int) -> Response:
        if not can_read(request):
            return page(request, "task.html")
        try:
            detail = await c.detail(task_id)
        except TaskNotFound:
            resp = page(request, "missing.html", title=f"Task {task_id}", what=f"task {task_id}")
            resp.status_code = 404
            return resp
        history, logs, inbox, children = await asyncio.gather(
            c.history(task_id), c.logs(task_id, limit=1000), c.inbox(task_id),
            c.children(task_id, limit=CHILDREN_SHOWN + 1),
        )  # fmt: skip
        return page(
            request, "task.html", title=f"Task {task_id}", nav="tasks", t=detail,
            history=history, logs=logs, last_log=logs[-1].id if logs else 0, inbox=inbox,
            children=children[:CHILDREN_SHOWN], more_children=len(children) > CHILDREN_SHOWN,
        )  # fmt: skip

    @ui.get("/failed", name="pgtasks_dashboard_failed", dependencies=LAG)
    async def failed(
        request: Request,
        c: R,
        queue: str | None = None,
        task_type: str | None = None,
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        if not can_read(request):
            return page(request, "failed.html")
        queue, task_type = queue or None, task_type or None
        groups, rows = await asyncio.gather(
            c.failed_groups(),
            c.browse(status="FAILED", queue=queue, task_type=task_type, after_id=after,
                     limit=PAGE + 1),
        )  # fmt: skip
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        return page(
            request, "failed.html", title="Failed", nav="failed", groups=groups, rows=rows,
            more=more, next_after=rows[-1]["id"] if more else None,
            filters={"queue": queue, "task_type": task_type},
        )  # fmt: skip

    @ui.get("/queues", name="pgtasks_dashboard_queues", dependencies=LAG)
    async def queues(request: Request, c: R) -> Response:
        if not can_read(request):
            return page(request, "queues.html")
        return page(request, "queues.html", title="Queues", nav="queues",
                    cards=await c.queue_cards())  # fmt: skip

    @ui.get("/schedules", name="pgtasks_dashboard_schedules", dependencies=LAG)
    async def schedules(request: Request, c: R) -> Response:
        if not can_read(request):
            return page(request, "schedules.html")
        return page(request, "schedules.html", title="Schedules", nav="schedules",
                    schedules=await c.schedules())  # fmt: skip

    @ui.get("/workflows", name="pgtasks_dashboard_workflows", dependencies=LAG)
    async def workflows(request: Request, c: R) -> Response:
        if not can_read(request):
            return page(request, "workflows.html")
        return page(request, "workflows.html", title="Workflows", nav="workflows",
                    workflows=await c.workflows(limit=50))  # fmt: skip

    @ui.get("/workflows/{workflow_id}", name="pgtasks_dashboard_workflow", dependencies=LAG)
    async def workflow(request: Request, c: R, workflow_id: int) -> Response:
        if not can_read(request):
            return page(request, "workflow.html")
        try:
            wf = await c.workflow(workflow_id)
        except WorkflowNotFound:
            what = f"workflow {workflow_id}"
            resp = page(request, "missing.html", title=f"Workflow {workflow_id}", what=what)
            resp.status_code = 404
            return resp
        graph = views.layout([dict(n) for n in wf.get("nodes", [])])
        return page(
            request, "workflow.html", title=f"Workflow {workflow_id}", nav="workflows",
            wf=wf, graph=graph, workflow_id=workflow_id,
            node_w=views.NODE_W, node_h=views.NODE_H,
        )  # fmt: skip

    @ui.get("/charts", name="pgtasks_dashboard_charts")
    async def charts(request: Request, c: C, span: Literal["5m", "1h", "24h"] = "5m") -> Response:
        """The overview's charts for the selector, behind the cookie like the streams: the
        roll-up's buckets (Client.chart) as JSON."""
        if (no := denied(request)) is not None:
            return no
        rows = await c.chart(CHART_SPANS[span])
        body = _script_json({"span": span, "buckets": rows})
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    # -- login ---------------------------------------------------------------------------

    def _next(request: Request, target: str | None) -> str:
        base = base_of(request)
        # Only a path inside the dashboard: no open redirect to another site.
        if target and target.startswith(f"{base}/") and not target.startswith("//"):
            return target
        return f"{base}/"

    @ui.get("/login", name="pgtasks_dashboard_login")
    async def login_form(request: Request, next: str | None = None) -> Response:
        base = base_of(request)
        html = _env.get_template("login.html").render(
            request=request, base=base, api=api_of(base, request), version=__version__,
            title="Log in", nav=None, read_only=settings.dashboard_read_only,
            token_set=token is not None, logged_in=logged_in(request),
            next=_next(request, next), error=None, now=datetime.now(UTC),
        )  # fmt: skip
        return HTMLResponse(html)

    @ui.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        given = (form.get("token") or [""])[0].strip()
        target = _next(request, (form.get("next") or [""])[0] or None)
        if token is None or not same(given, token):
            base = base_of(request)
            html = _env.get_template("login.html").render(
                request=request, base=base, api=api_of(base, request), version=__version__,
                title="Log in", nav=None, read_only=settings.dashboard_read_only,
                token_set=token is not None, logged_in=False, next=target,
                error="That is not this server's token." if token else "No token is set.",
                now=datetime.now(UTC),
            )  # fmt: skip
            return HTMLResponse(html, status_code=401)
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(
            COOKIE, sessions.issue(), max_age=int(sessions.ttl), httponly=True,
            samesite="strict", secure=request.url.scheme == "https", path=f"{base_of(request)}/",
        )  # fmt: skip
        return resp

    @ui.post("/logout")
    async def logout(request: Request) -> Response:
        sessions.revoke(request.cookies.get(COOKIE, ""))  # ends it here, not only in this browser
        resp = RedirectResponse(f"{base_of(request)}/login", status_code=303)
        resp.delete_cookie(COOKIE, path=f"{base_of(request)}/")
        return resp

    # -- live ----------------------------------------------------------------------------

    @ui.get("/stream/overview")
    async def overview_stream(request: Request, c: R) -> Response:
        """`overview` every second: queue cards and workers with the tasks each runs (the
        charts come from the roll-up, GET charts)."""
        if (no := denied(request)) is not None:
            return no
        try:
            release = await take_slot(stream_slots(c, settings.api_max_streams))
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.hint)

        async def body() -> AsyncIterator[str]:
            # One query at a time: a stream's slot stands for one connection of the pool.
            try:
                while not await request.is_disconnected():
                    cards = await c.queue_cards()
                    workers = views.with_tasks(await c.workers(), await c.active())
                    data = {"queues": cards, "workers": workers}
                    yield f"event: overview\ndata: {json.dumps(_jsonable(data))}\n\n"
                    await asyncio.sleep(TICK_S)
            finally:
                release()

        return StreamingResponse(
            body(), media_type="text/event-stream", headers=HEADERS,
            background=BackgroundTask(release),
        )  # fmt: skip

    @ui.get("/stream/tasks/{task_id}")
    async def task_stream(
        request: Request, c: C, task_id: int, after_id: Annotated[int, Query(ge=0)] = 0
    ) -> Response:
        """The API's task event stream (status, progress, log, end), behind the cookie."""
        if (no := denied(request)) is not None:
            return no
        slots = stream_slots(c, settings.api_max_streams)
        with contextlib.suppress(TaskNotFound):
            return await task_events(c, task_id, after_id=after_id, slots=slots)
        return Response("no such task", status_code=404)

    @ui.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404)
        return Response(
            (HERE / "static" / name).read_bytes(), media_type=STATIC[name],
            headers={"Cache-Control": "public, max-age=3600"},
        )  # fmt: skip

    return ui
