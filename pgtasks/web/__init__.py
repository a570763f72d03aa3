"""pgtasks over HTTP: `router()` for any FastAPI app, `create_app()` for `pgtasks serve`.

Needs the `web` extra: `pip install pgtasks[web]`.
"""

from __future__ import annotations

from pgtasks.web.api import router
from pgtasks.web.app import create_app
from pgtasks.web.settings import WebSettings

__all__ = ["WebSettings", "create_app", "router"]
