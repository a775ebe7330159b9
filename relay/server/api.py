"""The JSON API the pages and scripts read: what is live, and how it is doing.

A stream with a view token is listed only for requests that present it (or
the operator's `auth.metrics_token`); asked for by name without it, it is a
401 whether it exists or not, so the answer reveals nothing about it.
"""

from __future__ import annotations

from aiohttp import web

from relay.server import auth
from relay.server.context import context
from relay.server.endpoint import stream_name
from relay.server.problems import Problem


async def list_streams(request: web.Request) -> web.Response:
    visible = auth.visible_streams(request)
    streams = sorted((s for s in context(request).streams if visible(s.name)), key=lambda s: s.name)
    return web.json_response({"streams": [s.describe() for s in streams]})


async def get_stream(request: web.Request) -> web.Response:
    name = stream_name(request)
    if not auth.is_operator(request):
        auth.require(request, name, "view")  # before looking it up: a refusal says nothing of the stream
    stream = context(request).streams.get(name)
    if stream is None:
        raise Problem(404, "unknown-stream", f"stream {name!r} is not live and has no viewers")
    return web.json_response(stream.describe())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/{stream}", get_stream)
