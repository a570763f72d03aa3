"""The standalone app behind `pgtasks serve`: the dashboard at /, the API under /api,
/metrics, OpenAPI at /docs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Response

from pgtasks import __version__
from pgtasks.client import Client
from pgtasks.fastapi import get_client, lifespan
from pgtasks.web.api import router
from pgtasks.web.dashboard import dashboard_router
from pgtasks.web.metrics import CONTENT_TYPE, render
from pgtasks.web.settings import WebSettings


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """The app `pgtasks serve` runs; `settings` default to the PGTASKS_* variables."""
    settings = settings or WebSettings()
    app = FastAPI(
        title="pgtasks",
        version=__version__,
        lifespan=lifespan(settings.database_url),
        docs_url="/docs",
    )
    app.include_router(router(settings=settings), prefix="/api")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(client: Annotated[Client, Depends(get_client)]) -> Response:
        return Response(await render(client), media_type=CONTENT_TYPE)

    # Last: its routes are the app's catch-all pages (/, /tasks, ...), the API's come first.
    app.include_router(dashboard_router(settings=settings, api_path="api"))
    return app
