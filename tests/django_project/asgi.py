"""The project's ASGI app with pgtasks' dashboard and HTTP API beside Django, under /tasks/
(docs/django.md): FastAPI serves /tasks/ and the lifespan that opens pgtasks' Client;
everything else goes to Django."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()  # sets Django up before anything reads its settings

from fastapi import FastAPI  # noqa: E402

from pgtasks.contrib.django import database_url  # noqa: E402
from pgtasks.fastapi import lifespan  # noqa: E402
from pgtasks.web import WebSettings, dashboard_router, router  # noqa: E402


def create_application() -> FastAPI:
    settings = WebSettings()  # PGTASKS_API_TOKEN and the other PGTASKS_* variables
    app = FastAPI(lifespan=lifespan(database_url()))
    app.include_router(router(settings=settings), prefix="/tasks/api")
    app.include_router(dashboard_router(settings=settings), prefix="/tasks")
    app.mount("/", django_app)
    return app
