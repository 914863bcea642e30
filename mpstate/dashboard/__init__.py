"""The operator dashboard: runs, a run's timeline, graph and live log, and operator actions.

Server-rendered pages (Jinja2) with one small script and one stylesheet shipped in the package:
no CDN, no build step. Needs ``pip install 'mpstate[dashboard]'``.

::

    from mpstate.dashboard import TokenAuth, dashboard_app

    app = dashboard_app(store, mp=mp, auth=TokenAuth(token))   # or Mount("/ops", app=app)
    # standalone: mpstate dashboard serve --token ... --app celery_app
"""

from __future__ import annotations

from mpstate.dashboard.app import dashboard_app
from mpstate.dashboard.auth import BasicAuth, DashboardAuth, LoginAuth, TokenAuth

__all__ = ["BasicAuth", "DashboardAuth", "LoginAuth", "TokenAuth", "dashboard_app"]
