"""The aiohttp application: routes, CORS, and the lifetime of everything in it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.config import Config, ConfigError, ServerConfig
from relay.media import aiortc_patch
from relay.server import (
    api,
    auth,
    bots,
    connections,
    data_api,
    directory,
    edge,
    endpoint,
    events,
    health,
    limits,
    metrics,
    openapi,
    pages,
    proxy,
    recordings_api,
    whep,
    whip,
)
from relay.server.context import CONTEXT, Context
from relay.server.problems import problem_middleware

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match, ETag",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After",
    "Access-Control-Max-Age": "600",
}


def cors_middleware(origins: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Browser clients are often served from another origin (whip-whep.md §2)."""

    def allow(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        def add_cors(response: web.StreamResponse) -> None:
            allowed = allow(request)
            if allowed:
                response.headers.update(CORS_HEADERS)
                response.headers["Access-Control-Allow-Origin"] = allowed

        try:
            response = await handler(request)
        except web.HTTPException as exc:
            add_cors(exc)
            raise
        if not response.prepared:
            add_cors(response)
        return response

    return middleware


def _accepting(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not request.app[CONTEXT].accepting:
            raise health.shutting_down()
        return await handler(request)

    return guarded


def add_protocol_routes(app: web.Application) -> None:
    for kind, post in (("whip", whip.post), ("whep", whep.post)):
        authorised = auth.protected(auth.ROLE[kind])
        resource = app.router.add_resource(f"/{kind}/{{stream}}")
        resource.add_route("POST", _accepting(authorised(post)))
        resource.add_route("OPTIONS", endpoint.options)
        resource.add_route("GET", endpoint.empty)
        resource.add_route("HEAD", endpoint.empty)
        session = app.router.add_resource(f"/{kind}/{{stream}}/{{session}}")
        for method, handler in endpoint.session_handlers(kind).items():
            session.add_route(method, handler if method == "OPTIONS" else authorised(handler))


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from `server.tls_cert`/`tls_key`, or None for plain HTTP."""
    if server.tls_cert is None or server.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls_cert, server.tls_key: cannot use {server.tls_cert} with "
                          f"{server.tls_key}: {exc}") from None
    return context


def create_app(config: Config, origin_socket: str | None = None) -> web.Application:
    """The application; with `config.origin.url` an edge, pulling from it (through `origin_socket`)."""
    aiortc_patch.restrict_host_addresses(config.ice.host_addresses)
    aiortc_patch.set_consent_timeout(config.ice.consent_timeout)
    aiortc_patch.use_fast_ntp_clock()
    aiortc_patch.enlarge_receive_buffers()  # data channel bursts (see there)
    aiortc_patch.set_port_range(config.ice.port_range)
    app = web.Application(
        middlewares=[proxy.proxy_middleware(config.server), cors_middleware(config.server.cors_origins),
                     problem_middleware,
                     limits.rate_limit_middleware(config.limits)],
        client_max_size=config.server.max_body_bytes,
    )
    ctx = Context.create(config)
    app[CONTEXT] = ctx
    connections.setup(app, config)  # header deadline, connections per address, keep-alive, quiet bad requests
    auth.setup(app, config.auth)
    add_protocol_routes(app)
    health.add_routes(app)
    openapi.add_routes(app)
    api.add_routes(app)
    events.add_routes(app, ctx.streams)
    data_api.add_routes(app)  # data channels and the chat over HTTP
    pages.add_routes(app)
    directory_ = config.directory
    if config.origin.url or (directory_.redis_url and not directory_.advertise):  # edge mode
        edge.setup(app, ctx.streams, config, origin_socket)
    if directory_.advertise:  # an origin among several
        directory.setup_registry(app, ctx.streams, directory_)

    async def close_sessions(app: web.Application) -> None:
        ctx.accepting = False
        await ctx.sessions.close_all("server shutting down")

    app.on_shutdown.append(close_sessions)
    app.on_cleanup.append(close_sessions)  # any a request still in flight at shutdown went on to make
    metrics.setup(app, recordings_api.setup(app, ctx).totals)
    bots.setup(app)
    return app
