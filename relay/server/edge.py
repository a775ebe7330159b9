"""Edge mode: streams this server does not carry, pulled from an origin over WHEP.

A viewer's POST for a stream the edge does not carry starts one WHEP session
to the origin (Relay's own client, so any WHEP server can be the origin).
That pull looks to its `Stream` exactly like a publisher's session: it holds
the stream (`Stream.start`), hands each of its receivers to
`Stream.add_receiver` and makes the stream live when its ICE connects, so
whatever the forwarding path does with a publisher's receivers it does with
the pull's, and keyframe requests reach the origin as PLI through them.
When the origin ends the session (its publisher left, it shut down, consent
failed) the stream ends like a publisher's: the edge's viewers are told.
After the last viewer leaves, the pull ends `origin.linger` seconds later.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiortc import RTCRtpReceiver

from relay.client import ClientError, SessionError, WhepClient
from relay.config import Config
from relay.media.peer import Tasks
from relay.media.stream import Stream, Streams
from relay.sdp import CLOCK_RATES
from relay.server.directory import Lookup
from relay.server.events import stream_events_link
from relay.server.problems import Problem
from relay.server.session import ice_servers

log = logging.getLogger(__name__)

OFFLINE_RETRY_AFTER = 2
SHUTDOWN_DELETE = 0.5


def origin_url(template: str, name: str) -> str:
    """The origin's WHEP endpoint for `name`: `{stream}` filled in, or Relay's `/whep/{name}` appended."""
    if "{stream}" in template:
        return template.replace("{stream}", name)
    return f"{template.rstrip('/')}/whep/{name}"


class Pull:
    """One WHEP session to the origin that feeds a local stream, as a publisher's session would."""

    def __init__(self, stream: Stream, url: str, options: dict[str, Any],
                 on_closed: Callable[[Pull], None]) -> None:
        self.id = f"pull-{secrets.token_urlsafe(9)}"
        self.stream = stream
        self.closed = False
        self.client = WhepClient(url, on_receiver=self._add_receiver, **options)
        self._on_closed = on_closed
        self._tasks = Tasks()
        self._closing: asyncio.Future[None] | None = None

    def _add_receiver(self, kind: str, receiver: RTCRtpReceiver, codec: str) -> None:
        self.stream.add_receiver(kind, receiver, codec, CLOCK_RATES[kind])

    async def start(self) -> None:
        """Hold the stream, negotiate with the origin and wait for ICE; the stream is live after this."""
        self.stream.start(self)
        try:
            await self.client.start()
            await self.client.wait_connected()
        except BaseException:
            await self.close("the pull did not start")
            raise
        self.stream.publisher_connected(self)
        self._tasks.spawn(self._close_when_ended())

    async def _close_when_ended(self) -> None:
        await self.client.ended.wait()
        await self.close("the origin ended the session")

    async def close(self, reason: str) -> None:
        """End the pull; a second call (the edge shutting down) waits for the first to finish."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        self.closed = True
        log.info("pull %s of %r from %s closed: %s", self.id, self.stream.name, self.client.url, reason)
        self._tasks.cancel()
        self.stream.stop(self, wait_for_return=False)
        self._on_closed(self)
        await self.client.close()


def refusal(name: str, exc: ClientError) -> Problem:
    """What the viewer is told when the origin would not give the stream."""
    if not isinstance(exc, SessionError):
        return Problem(502, "origin-unreachable", f"this edge could not pull stream {name!r} from its origin: {exc}")
    retry = {"Retry-After": str(round(exc.retry_after or OFFLINE_RETRY_AFTER))}
    if exc.status in (404, 409):
        return Problem(409, "stream-offline",
                       f"stream {name!r} has no live publisher at the origin; retry after {retry['Retry-After']} s",
                       headers={**retry, "Link": stream_events_link(name)})
    if exc.status in (429, 503):
        return Problem(503, "origin-busy", f"the origin cannot take this edge's pull of {name!r} now: {exc}",
                       headers=retry)
    return Problem(502, "origin-refused", f"the origin refused this edge's pull of {name!r} ({exc}); "
                                          "its operator must check origin.url and origin.token")


class Edge:
    """The pulls of one edge: at most one per stream, started on demand, ended after the linger time."""

    def __init__(self, streams: Streams, config: Config, unix_socket: str | None = None) -> None:
        self._streams = streams
        self._config = config
        self._template = config.origin.url
        # Several origins: where each stream is, from the directory (`origin.url` for the rest).
        self._lookup = Lookup(config.directory) if config.directory.redis_url else None
        self._unix_socket = unix_socket
        self.pulls: dict[str, Pull] = {}
        self._starting: dict[str, asyncio.Future[None]] = {}
        self._holds: Counter[str] = Counter()
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._tasks = Tasks()
        streams.listeners.append(self._on_change)

    @asynccontextmanager
    async def pulled(self, name: str, token: str | None) -> AsyncIterator[None]:
        """Make sure `name` is carried here (pulling it if needed), and keep it while the caller joins it.

        The pull presents `origin.token`, or else `token` (the viewer's, which this server accepted).
        """
        self._holds[name] += 1
        try:
            await self._ensure(name, token)
            yield
        finally:
            self._holds[name] -= 1
            if not self._holds[name]:
                del self._holds[name]
            stream = self._streams.get(name)
            if stream is not None:
                self._on_change(stream)

    async def _ensure(self, name: str, token: str | None) -> None:
        stream = self._streams.get(name)
        if name not in self._starting and stream is not None and stream.publisher is not None:
            return  # carried: pulled already, or a local publisher
        starting = self._starting.get(name)
        if starting is None:
            starting = self._starting[name] = asyncio.ensure_future(self._pull(name, token))
            starting.add_done_callback(lambda task: self._started(name, task))
        await asyncio.shield(starting)  # a viewer that gives up does not cancel the others' pull

    def _started(self, name: str, task: asyncio.Future[None]) -> None:
        if self._starting.get(name) is task:
            del self._starting[name]
        if not task.cancelled():
            task.exception()  # each waiter raised it; retrieved even if none waited

    async def _locate(self, name: str) -> str:
        """The WHEP URL to pull `name` from: the directory's origin for it, else `origin.url`."""
        found = await self._lookup.origin(name) if self._lookup else None
        template = found or self._template
        if template is None:
            raise refusal(name, SessionError(404, "Not Found", "no origin carries it"))
        return origin_url(template, name)

    async def _pull(self, name: str, token: str | None) -> None:
        url = await self._locate(name)
        stream = self._streams.get_or_create(name)
        if stream.publisher is not None:
            return  # a local publisher took the name meanwhile
        options = {
            "token": self._config.origin.token or token,
            "ice_servers": ice_servers(self._config) or None,  # else the origin's, from its OPTIONS
            "timeout": self._config.ice.connect_timeout,
            "unix_socket": self._unix_socket,
        }
        pull = Pull(stream, url, options, self._closed)
        self.pulls[name] = pull
        try:
            await pull.start()
        except ClientError as exc:
            log.info("pull of %r from %s refused: %s", name, pull.client.url, exc)
            raise refusal(name, exc) from None
        log.info("pull %s of %r from %s is live", pull.id, name, pull.client.url)

    def _closed(self, pull: Pull) -> None:
        name = pull.stream.name
        if self.pulls.get(name) is pull:
            del self.pulls[name]
        timer = self._lingering.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _on_change(self, stream: Stream) -> None:
        pull = self.pulls.get(stream.name)
        if pull is None or stream.publisher is not pull:
            return
        idle = not stream.viewers and not self._holds[stream.name]
        timer = self._lingering.get(stream.name)
        if idle and timer is None:
            loop = asyncio.get_running_loop()
            self._lingering[stream.name] = loop.call_later(self._config.origin.linger, self._linger_over, pull)
        elif not idle and timer is not None:
            timer.cancel()
            del self._lingering[stream.name]

    def _linger_over(self, pull: Pull) -> None:
        self._lingering.pop(pull.stream.name, None)
        if not pull.stream.viewers and not self._holds[pull.stream.name]:
            self._tasks.spawn(pull.close(f"no viewer for {self._config.origin.linger:g} s"))

    async def close(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        # The viewers are told at once; the origin's DELETE gets a moment (a shutting-down origin may not answer).
        await asyncio.gather(*(asyncio.wait_for(pull.close("server shutting down"), SHUTDOWN_DELETE)
                               for pull in list(self.pulls.values())), return_exceptions=True)
        self._tasks.cancel()
        if self._lookup:
            await self._lookup.close()


EDGE = web.AppKey("edge", Edge)


def setup(app: web.Application, streams: Streams, config: Config, unix_socket: str | None = None) -> None:
    """Edge mode for `app`: pull what it does not carry from `config.origin.url` (through `unix_socket`)
    or the origin the directory names."""
    edge = app[EDGE] = Edge(streams, config, unix_socket)

    async def close(_: web.Application) -> None:
        await edge.close()

    app.on_shutdown.append(close)
    app.on_cleanup.append(close)
