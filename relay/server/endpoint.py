"""HTTP behaviour WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep-04) share.

Both protocols have an endpoint (POST an offer) and session resources
(PATCH trickle candidates, DELETE); only what a POST builds differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from relay.config import Config
from relay.names import STREAM_NAME_RULE, valid_stream_name
from relay.sdp import SDP, SDPFRAG, Offer, SdpError, parse_fragment, parse_offer
from relay.server import limits
from relay.server.context import context
from relay.server.problems import Problem
from relay.server.session import Session


def stream_name(request: web.Request) -> str:
    name = request.match_info["stream"]
    if not valid_stream_name(name):
        raise Problem(400, "bad-stream-name",
                      f"stream name {name[:80]!r} is not allowed: use {STREAM_NAME_RULE}")
    return name


async def read_body(request: web.Request, content_type: str, limit: int, timeout: float) -> str:
    """The whole body, however the network split it: to its end, or 413 past `limit`, 408 after `timeout`."""
    if request.content_type != content_type:
        raise Problem(415, "unsupported-media-type",
                      f"send the body as Content-Type: {content_type} (got {request.content_type or 'none'!r})",
                      headers={"Accept-Post": SDP} if content_type == SDP else {"Accept-Patch": SDPFRAG})
    body = await read_bytes(request, limit, timeout, _too_large)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "bad-encoding", "the body must be UTF-8 text") from None


async def read_bytes(request: web.Request, limit: int, timeout: float,
                     too_large: Callable[[int], Problem]) -> bytes:
    """The whole body as bytes: `too_large(limit)` past `limit`, 408 after `timeout`, 400 if unreadable."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            # One read returns only what is buffered: a 3-8 KB offer arrives in several TCP segments.
            while chunk := await request.content.read(limit + 1 - len(body)):
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
    except TimeoutError:
        raise Problem(408, "body-timeout", f"the body did not arrive within {timeout:g} s; "
                                           "send all the bytes its Content-Length announces") from None
    except (HttpProcessingError, RequestPayloadError) as exc:  # bad chunking or Content-Encoding
        raise Problem(400, "bad-body", f"the body could not be read: {str(exc).strip()}") from None
    return bytes(body)


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"the body is larger than {limit} bytes; send a smaller SDP")


# What a client's offer must do with each m= section: WHIP sends (RFC 9725 §4.2),
# WHEP receives (draft-ietf-wish-whep-04 §4.3.5).
OFFER_DIRECTIONS = {"whip": ("sends", ("sendonly", "sendrecv")), "whep": ("receives", ("recvonly", "sendrecv"))}


async def read_offer(request: web.Request, kind: str) -> Offer:
    server = context(request).config.server
    text = await read_body(request, SDP, server.max_body_bytes, server.body_timeout)
    try:
        offer = parse_offer(text)
    except SdpError as exc:
        raise Problem(400, "bad-sdp", str(exc)) from None
    verb, allowed = OFFER_DIRECTIONS[kind]
    for media in offer.media:
        if media.direction not in allowed:
            raise Problem(400, "bad-direction", f"a {kind.upper()} offer {verb} media: the {media.kind} "
                                                f"m= section is {media.direction}; use {allowed[0]}")
    return offer


def ice_server_links(config: Config) -> list[str]:
    """RFC 9725 §4.6 Link headers, one per STUN/TURN URL."""
    links = []
    for server in config.ice.servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += (f'; username="{server.username}"; credential="{server.credential}"'
                         '; credential-type="password"')
            links.append(link)
    return links


def created(session: Session, answer: str, config: Config, links: list[str]) -> web.Response:
    response = web.Response(status=201, text=answer, content_type=SDP)
    response.headers["Location"] = session.path
    response.headers["ETag"] = session.etag
    response.headers["Accept-Patch"] = SDPFRAG
    for link in ice_server_links(config) + links:
        response.headers.add("Link", link)
    return response


async def options(request: web.Request) -> web.Response:
    """OPTIONS on an endpoint (RFC 9725 §4.2); CORS headers come from the middleware.

    A client like aiortc gathers its candidates before it POSTs, so it can use
    our STUN/TURN servers only if it learns them first: a plain (non-preflight)
    OPTIONS carries the ice-server Links too (RFC 9725 §4.6 allows it).
    """
    response = web.Response(status=204, headers={"Accept-Post": SDP})
    if "Access-Control-Request-Method" not in request.headers:
        for link in ice_server_links(context(request).config):
            response.headers.add("Link", link)
    return response


async def empty(request: web.Request) -> web.Response:
    """GET/HEAD on an endpoint or session: 2xx, no content (RFC 9725 §4.1, WHEP §4.2)."""
    return web.Response(status=200, content_type=SDP) if request.method == "HEAD" else web.Response(status=204)


def session_of(request: web.Request, kind: str) -> Session:
    ctx = context(request)
    session = ctx.sessions.get(kind, stream_name(request), request.match_info["session"])
    if session is None:
        raise Problem(404, "unknown-session",
                      f"there is no {kind.upper()} session at {request.path}; it ended or never existed")
    return session


def session_handlers(kind: str) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """PATCH, DELETE, GET and OPTIONS for `/{kind}/{stream}/{session}`."""

    async def patch(request: web.Request) -> web.Response:
        session = session_of(request, kind)
        server = context(request).config.server
        text = await read_body(request, SDPFRAG, server.max_body_bytes, server.body_timeout)
        if_match = request.headers.get("If-Match")
        try:
            fragment = parse_fragment(text)
        except SdpError as exc:
            raise Problem(400, "bad-sdpfrag", str(exc)) from None
        limits.check_candidates(fragment, context(request).config.limits)
        if if_match == "*" or session.is_ice_restart(fragment.ufrag, fragment.pwd):
            raise Problem(422, "ice-restart-unsupported",
                          "Relay cannot restart ICE (aiortc has no ICE restart); "
                          "DELETE this session and POST a new offer")
        if if_match is not None and if_match != session.etag:
            raise Problem(412, "etag-mismatch",
                          f"If-Match {if_match} does not match this session's ETag {session.etag}")
        await session.add_candidates(fragment)
        return web.Response(status=204)

    async def delete(request: web.Request) -> web.Response:
        ctx = context(request)
        name, session_id = stream_name(request), request.match_info["session"]
        session = ctx.sessions.get(kind, name, session_id)
        if session is not None:
            await session.close("DELETE by the client")
        elif not ctx.sessions.recently_closed(kind, name, session_id):
            session_of(request, kind)
        return web.Response(status=200)

    async def get(request: web.Request) -> web.Response:
        session_of(request, kind)
        return await empty(request)

    async def preflight(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Patch": SDPFRAG})

    return {"PATCH": patch, "DELETE": delete, "GET": get, "OPTIONS": preflight}
