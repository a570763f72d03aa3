"""The standalone app behind `pgtasks serve`: the dashboard at /, the API under /api,
/metrics, OpenAPI at /docs (Swagger UI), /redoc and /openapi.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from pgtasks import __version__
from pgtasks.client import Client
from pgtasks.fastapi import get_client, lifespan, replica_of
from pgtasks.web.api import INT64, router
from pgtasks.web.dashboard import dashboard_router
from pgtasks.web.dashboard.routes import COOKIE, sessions_for
from pgtasks.web.errors import error_response, to_response
from pgtasks.web.guard import SAFE_METHODS, Guard
from pgtasks.web.metrics import CONTENT_TYPE, render
from pgtasks.web.session import same
from pgtasks.web.settings import WebSettings

#: Swagger UI and ReDoc, vendored (static/README.md): the docs pages load nothing from
#: another site.
STATIC = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}
_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


#: The methods a 405's Allow may name.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(app: FastAPI, request: Request) -> list[str]:
    """Every method some route takes at this path, for a 405's Allow. Starlette names the
    methods of the first route whose path matched (GET /tasks/{id} for POST /tasks/cancel
    sent as PUT, or only GET for /tasks), so each method is asked of every route."""
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in app.router.routes
        )
    ]


def _integral_bounds(node: Any) -> None:
    """FastAPI's OpenAPI models hold bounds as floats, and int64's maximum does not survive
    a double (it becomes 2^63, one more than the API takes): write them back as the
    integers they are."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            for key in ("maximum", "minimum"):
                v = n.get(key)
                if isinstance(v, float) and v.is_integer():
                    n[key] = INT64 if v == float(2**63) else int(v)
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


def _app_answers(schema: dict[str, Any]) -> None:
    """Document what the app answers before a route runs (pgtasks.web.guard, the server):
    400 (a Host not allowed, a head that does not parse), 403 (a write from another
    origin), 408 and 413 (a body too slow or too large)."""
    answers = {
        "400": "Bad Request",
        "403": "Forbidden",
        "408": "Request Timeout",
        "413": "Content Too Large",
    }
    for ops in schema.get("paths", {}).values():
        for method, op in ops.items():
            codes = ["400"]
            if method.upper() not in SAFE_METHODS:
                codes.append("403")
            if "requestBody" in op:
                codes += ["408", "413"]
            for code in codes:
                content = {"application/json": {"schema": _ERROR}}
                op["responses"].setdefault(code, {"description": answers[code], "content": content})


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """The app `pgtasks serve` runs; `settings` default to the PGTASKS_* variables."""
    settings = settings or WebSettings()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    sessions = sessions_for(settings)
    app = FastAPI(
        title="pgtasks",
        version=__version__,
        lifespan=lifespan(settings.database_url, read_url=settings.read_database_url),
        # Served below, behind the token when one is set.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(Guard, settings=settings)
    app.include_router(router(settings=settings), prefix="/api")

    # -- one error shape for what no route answered (404, 405, a crash) ------------------

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            allow = ", ".join(_allowed(app, request))
            exc = HTTPException(405, "method not allowed here", headers={"Allow": allow})
        answer = to_response(exc)
        return answer if answer is not None else await crashed(request, exc)

    async def crashed(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal_error", "the server failed; see its log")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, http_error)
    app.add_exception_handler(Exception, crashed)

    # -- the OpenAPI and its pages --------------------------------------------------------

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _integral_bounds(schema)
            _app_answers(schema)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]

    def may_read_docs(request: Request) -> bool:
        if token is None or settings.api_open_reads:
            return True
        if sessions.valid(request.cookies.get(COOKIE, "")):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and same(given.strip(), token)

    def login_first(request: Request) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(request: Request) -> Response:
        if not may_read_docs(request):
            return error_response(401, "unauthorized", "the API's schema needs the token")
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> Response:
        if not may_read_docs(request):
            return login_first(request)
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="pgtasks API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            oauth2_redirect_url=None,
            # No badge from the public validator: the page talks to this server only.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        if not may_read_docs(request):
            return login_first(request)
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="pgtasks API",
            redoc_js_url="/docs/static/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg",
            with_google_fonts=False,
        )

    @app.get("/docs/static/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            return error_response(404, "not_found", f"no asset {name[:100]!r}")
        return Response(
            (STATIC / name).read_bytes(),
            media_type=DOCS_ASSETS[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, client: Annotated[Client, Depends(get_client)]) -> Response:
        replica = replica_of(request)
        body = await render(replica or client, primary=client if replica is not None else None)
        return Response(body, media_type=CONTENT_TYPE)

    # Last: its routes are the app's catch-all pages (/, /tasks, ...), the API's come first.
    app.include_router(dashboard_router(settings=settings, api_path="api", sessions=sessions))
    return app
