"""The web pages, served by Relay itself: plain files from web/, no build step."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.server.endpoint import stream_name
from relay.server.problems import Problem
from relay.server.proxy import base_path

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
# Names of files in web/: no separators, no leading dot, no NUL, so no path outside it.
ASSET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


# Every page's links are relative to its <base>, which carries the path prefix (server.base_path).
BASE_TAG = '<base href="/">'


def _page(name: str, named_stream: bool) -> Handler:
    path = WEB_DIR / name
    if BASE_TAG not in path.read_text():
        raise RuntimeError(f"{path} has no {BASE_TAG}: its links would break under a path prefix")

    async def handler(request: web.Request) -> web.Response:
        if named_stream:
            stream_name(request)  # a bad name gets its 400 problem, not a page
        html = path.read_text().replace(BASE_TAG, f'<base href="{base_path(request)}/">', 1)
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-cache"})

    return handler


async def static(request: web.Request) -> web.FileResponse:
    """A file of web/ (aiohttp's own static route answers a missing file without a problem body)."""
    name = request.match_info["file"]
    path = WEB_DIR / name
    if not ASSET_NAME.fullmatch(name) or not path.is_file():
        raise Problem(404, "not-found", f"there is no page asset {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", _page("index.html", False))
    app.router.add_get("/publish/{stream}", _page("publish.html", True))
    app.router.add_get("/watch/{stream}", _page("watch.html", True))
    app.router.add_get("/static/{file}", static)
