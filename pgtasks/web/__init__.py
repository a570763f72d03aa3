"""pgtasks over HTTP: `router()` (the JSON API) and `dashboard_router()` (the web dashboard)
for any FastAPI app, `create_app()` (both) for `pgtasks serve`.

Needs the `web` extra: `pip install pgtasks[web]`.
"""

from __future__ import annotations

from pgtasks.web.api import router
from pgtasks.web.app import create_app
from pgtasks.web.dashboard import dashboard_router
from pgtasks.web.settings import WebSettings

__all__ = ["WebSettings", "create_app", "dashboard_router", "router"]
