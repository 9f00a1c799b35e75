"""The web dashboard: static files (index.html, plain ES modules, CSS; no build step) served at `/`.

`DashboardRoute` matches only `/` and the dashboard's own files, so every other path keeps
the gateway's routing (its 404 and 405 answers) untouched. The files need no token (API.md);
the pages call the public API with the token the user signs in with.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

DIRECTORY = Path(__file__).resolve().parent
SERVED_SUFFIXES = frozenset({".html", ".js", ".css", ".svg", ".png", ".ico"})


class DashboardRoute(Mount):
    """GET/HEAD `/` (index.html) and `/<file>` for each top-level file the dashboard ships."""

    def __init__(self, directory: Path = DIRECTORY) -> None:
        super().__init__("", app=StaticFiles(directory=directory, html=True), name="dashboard")
        self.path = "/"  # the metrics label (matching uses the regex compiled above)
        self.files = frozenset(f"/{p.name}" for p in directory.iterdir()
                               if p.is_file() and p.suffix in SERVED_SUFFIXES)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/" or path in self.files):
            return super().matches(scope)
        return Match.NONE, {}
