"""The live web dashboard: server-rendered pages (Jinja2) with a little hand-written JS that
follows Server-Sent Events. `pgtasks serve` mounts it at `/`; in an app of your own:

    app.include_router(pgtasks.web.router(), prefix="/admin/pgtasks/api")
    app.include_router(dashboard_router(api_path="api"), prefix="/admin/pgtasks")

See docs/dashboard.md.
"""

from __future__ import annotations

from pgtasks.web.dashboard.routes import dashboard_router

__all__ = ["dashboard_router"]
