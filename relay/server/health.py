"""`/healthz` (the process answers) and `/readyz` (it takes new sessions), for load balancers."""

from __future__ import annotations

from aiohttp import web

from relay.server.context import context
from relay.server.problems import Problem

SHUTDOWN_RETRY_AFTER = 5


def shutting_down() -> Problem:
    return Problem(503, "shutting-down", "Relay is shutting down; retry on another server or later",
                   headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER)})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = context(request)
    if not ctx.accepting:
        raise shutting_down()
    return web.json_response({"status": "ready", "sessions": len(ctx.sessions)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
