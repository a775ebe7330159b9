"""The JSON API the pages and scripts read: what is live, and how it is doing."""

from __future__ import annotations

from aiohttp import web

from relay.server.context import context
from relay.server.endpoint import stream_name
from relay.server.problems import Problem


async def list_streams(request: web.Request) -> web.Response:
    streams = sorted(context(request).streams, key=lambda s: s.name)
    return web.json_response({"streams": [s.describe() for s in streams]})


async def get_stream(request: web.Request) -> web.Response:
    name = stream_name(request)
    stream = context(request).streams.get(name)
    if stream is None:
        raise Problem(404, "unknown-stream", f"stream {name!r} is not live and has no viewers")
    return web.json_response(stream.describe())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/{stream}", get_stream)
