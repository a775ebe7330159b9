"""Live updates as server-sent events, so pages do not poll.

Two channels: `GET /api/events` sends the whole stream list (event `streams`)
for the dashboard; the WHEP server-sent-events extension (WHEP core
extensions, `urn:ietf:params:whep:ext:core:server-sent-events`) sends one
stream's `active`, `inactive` and `viewercount` events to its players.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from relay.media.stream import Stream, Streams
from relay.server import auth
from relay.server.context import context
from relay.server.endpoint import stream_name
from relay.server.problems import Problem

SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"
STREAM_EVENTS = ("active", "inactive", "viewercount")
HEARTBEAT = 2.0  # the dashboard's bitrates and uptimes move even when nothing changes
SUBSCRIPTION_TTL = 60.0
MAX_SUBSCRIPTIONS = 4096


@dataclass
class Subscription:
    stream: str
    events: tuple[str, ...]
    created: float


class EventHub:
    """Wakes every open event stream when any stream changes."""

    def __init__(self, streams: Streams) -> None:
        self._waiters: dict[asyncio.Event, Callable[[str], bool] | None] = {}
        self._closed = False
        self.subscriptions: OrderedDict[str, Subscription] = OrderedDict()
        streams.listeners.append(self._on_change)

    def _on_change(self, stream: Stream | None) -> None:
        """`stream` changed; None when the hub closes, so every event stream ends."""
        for waiter, only in self._waiters.items():
            if stream is None or only is None or only(stream.name):
                waiter.set()

    def close(self) -> None:
        self._closed = True
        self._on_change(None)

    async def changes(self, heartbeat: float | None,
                      only: Callable[[str], bool] | None = None) -> AsyncIterator[None]:
        """Yields now, then after every change (of a stream `only` admits) or heartbeat, until the hub closes."""
        waiter = asyncio.Event()
        self._waiters[waiter] = only
        try:
            while not self._closed:
                yield
                try:
                    await asyncio.wait_for(waiter.wait(), heartbeat)
                except TimeoutError:
                    pass
                waiter.clear()
                await asyncio.sleep(0.1)  # coalesce bursts of changes
        finally:
            self._waiters.pop(waiter, None)

    def subscribe(self, stream: str, events: tuple[str, ...]) -> str:
        now = time.monotonic()
        while self.subscriptions and (
            len(self.subscriptions) >= MAX_SUBSCRIPTIONS
            or next(iter(self.subscriptions.values())).created < now - SUBSCRIPTION_TTL
        ):
            self.subscriptions.popitem(last=False)
        key = secrets.token_urlsafe(12)
        self.subscriptions[key] = Subscription(stream, events, now)
        return key


HUB = web.AppKey("events", EventHub)


def stream_events_link(name: str) -> str:
    return f'</api/streams/{name}/events>; rel="{SSE_REL}"; events="{",".join(STREAM_EVENTS)}"'


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, event: str, data: object) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


async def all_streams(request: web.Request) -> web.StreamResponse:
    """The streams this subscriber may view (decided by the token it opened with); others neither show nor wake it."""
    hub, streams = request.app[HUB], context(request).streams
    visible = auth.visible_streams(request)
    response = await open_event_stream(request)
    try:
        async for _ in hub.changes(HEARTBEAT, visible):
            shown = sorted((s for s in streams if visible(s.name)), key=lambda s: s.name)
            await _send(response, "streams", {"streams": [s.describe() for s in shown]})
    except ConnectionError:
        pass
    return response


async def subscribe(request: web.Request) -> web.Response:
    """POST a JSON list of wanted events; 201 with the event stream's Location."""
    name = stream_name(request)
    timeout = context(request).config.server.body_timeout
    try:
        async with asyncio.timeout(timeout):
            wanted = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        wanted = None
    except TimeoutError:
        raise Problem(408, "body-timeout", f"the body did not arrive within {timeout:g} s") from None
    except (HttpProcessingError, RequestPayloadError) as exc:  # bad chunking or Content-Encoding
        raise Problem(400, "bad-body", f"the body could not be read: {' '.join(str(exc).split())}") from None
    if not isinstance(wanted, list) or not all(isinstance(e, str) for e in wanted):
        raise Problem(400, "bad-event-list",
                      f"send a JSON array of event names, e.g. {json.dumps(list(STREAM_EVENTS))}")
    events = tuple(e for e in wanted if e in STREAM_EVENTS) or STREAM_EVENTS
    key = request.app[HUB].subscribe(name, events)
    return web.Response(status=201, headers={"Location": f"/api/streams/{name}/events/{key}"})


async def stream_events(request: web.Request) -> web.StreamResponse:
    name = stream_name(request)
    hub = request.app[HUB]
    subscription = hub.subscriptions.get(request.match_info["key"])
    if subscription is None or subscription.stream != name:
        raise Problem(404, "unknown-event-stream",
                      "this event stream does not exist or expired; POST again to subscribe")
    response = await open_event_stream(request)
    last: dict[str, object] = {}
    try:
        async for _ in hub.changes(None):
            stream = context(request).streams.get(name)
            live, viewers = bool(stream and stream.live), stream.watching if stream else 0
            if last.get("live") != live:
                event = "active" if live else "inactive"
                if event in subscription.events:
                    await _send(response, event, {})
            if last.get("viewers") != viewers and "viewercount" in subscription.events:
                await _send(response, "viewercount", {"viewercount": viewers})
            last = {"live": live, "viewers": viewers}
    except ConnectionError:
        pass
    return response


def add_routes(app: web.Application, streams: Streams) -> None:
    hub = app[HUB] = EventHub(streams)
    app.router.add_get("/api/events", all_streams)
    app.router.add_post("/api/streams/{stream}/events", auth.protected("view")(subscribe))
    app.router.add_get("/api/streams/{stream}/events/{key}", stream_events)

    async def close(app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(close)
