"""``/console``: the web console, static files shipped in this package (``api/console/``).

Plain HTML, ES modules and CSS written by hand: nothing to build, nothing fetched from elsewhere.
The page talks to the public REST API with the customer's key like any other client; every
response of it carries a policy that lets it load and connect to this server alone.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

CONSOLE_URL = "/console"
#: Package data: the wheel ships the folder with the code (hatch takes every file under the package).
CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
#: What the console's responses allow: its own scripts, styles and images (charts are drawn as
#: inline SVG, `data:` for the favicon), requests to this server; no inline code, no frames, no forms.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
router = APIRouter()


class _ConsoleFiles(StaticFiles):
    """The console's assets, each with the console's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


@router.get(CONSOLE_URL, include_in_schema=False)
async def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get(f"{CONSOLE_URL}/", include_in_schema=False)
async def console_slash() -> RedirectResponse:
    """``/console/`` is the page too (its files are under ``/console/``: a relative link needs one URL)."""
    return RedirectResponse("../console", status_code=308)


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(CONSOLE_URL, _ConsoleFiles(directory=CONSOLE_DIR), name="console-assets")
