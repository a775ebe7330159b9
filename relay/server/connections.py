"""Connections before (and between) requests: slow headers, too many per address, malformed-request noise.

What aiohttp covers, set here for both `relay serve` (`web.run_app`) and the
tests' `TestServer`, since both build their server through the application:

- `keepalive_timeout` (`server.keepalive_timeout`): an idle keep-alive
  connection is closed, and so is one whose next request's headers are not
  complete by then (aiohttp does not reset the timer on partial data);
- `lingering_time` (`server.body_timeout`): a body no handler reads is
  drained after the response for at most this long, then the connection closes.

What it does not cover, done here on its `Server`:

- a header deadline: a new connection that has not sent complete request
  headers within `server.header_timeout` gets a 408 and is closed;
- `limits.max_connections_per_address`: one connection more from an address
  gets a 503 and is closed before anything is read;
- its server logger writes a multi-line traceback at ERROR for every
  malformed request line, header or body: those become one WARNING line, at
  most one a second per kind, with a count of the ones left out. Relay's own
  faults are unaffected (`problems.problem_middleware` logs them with their
  traceback, and aiohttp's 500s for anything else keep theirs).

Request bodies have their own deadline in `endpoint.read_body` (408).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from relay.config import Config

log = logging.getLogger(__name__)

# The aiohttp internals this module hooks (also Server.request_factory and RequestHandler._task_handler,
# attributes); checked at import.
for _owner, _name in ((web.Application, "_make_handler"), (web.Server, "connection_made"),
                      (web.Server, "connection_lost"), (RequestHandler, "force_close")):
    if not callable(getattr(_owner, _name, None)):
        raise ImportError(f"relay.server.connections: aiohttp's {_owner.__name__} has no {_name}")
if "_task_handler" not in RequestHandler.connection_made.__code__.co_names:
    raise ImportError("relay.server.connections: aiohttp's RequestHandler no longer keeps its task in _task_handler")


def _answer(status: int, reason: str, slug: str, detail: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP response with a problem body, written to a transport before any request is read."""
    body = json.dumps({"type": f"urn:relay:problem:{slug}", "title": reason, "status": status,
                       "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/problem+json", "Connection: close",
            f"Content-Length: {len(body)}", *([f"Retry-After: {retry_after}"] if retry_after else [])]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


class ClientNoise(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, with errors a client caused as one rate-limited WARNING line.

    Anything else (a handler's crash that reached aiohttp, aiohttp's own
    faults) passes through as it was, traceback and all.
    """

    def __init__(self, logger: logging.Logger = server_logger, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logger, {})
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}  # by kind: bounded by the kinds of error there are
        self._suppressed: Counter[str] = Counter()

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = _exception(kwargs.get("exc_info"))
        if level > logging.DEBUG and isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            text = str(msg) % args if args else str(msg)
            self.quietly(type(exc).__name__, f"malformed request: {type(exc).__name__}: {_one_line(exc)} ({text})")
        else:
            super().log(level, msg, *args, **kwargs)

    def quietly(self, kind: str, text: str) -> None:
        """`text` at WARNING, unless a line of this kind went out less than `interval` ago."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        left_out = self._suppressed.pop(kind, 0)
        if left_out and last is not None:
            text += f" (and {left_out} more like it in the {now - last:.1f} s before)"
        log.warning("%s", text)


def _exception(exc_info: object) -> BaseException | None:
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return exc_info if isinstance(exc_info, BaseException) else None


def _one_line(exc: BaseException) -> str:
    """aiohttp's multi-line message (the bad bytes as a repr, a caret line) in at most 200 characters."""
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    text = re.sub(r"^\d{3}, message: ", "", text).replace(" ^", "")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)  # no terminal escapes
    return text if len(text) <= 200 else text[:197] + "..."


def _cancel_start(handler: RequestHandler) -> None:
    task = handler._task_handler
    if task is not None:
        task.cancel()


class ConnectionGuard:
    """The per-address connection cap and the header deadline, on one aiohttp `Server`."""

    def __init__(self, header_timeout: float, per_address: int, noise: ClientNoise) -> None:
        self.header_timeout = header_timeout
        self.per_address = per_address
        self.noise = noise
        self.open: Counter[str] = Counter()  # open connections by client address
        self._address: dict[RequestHandler, str] = {}
        self._deadlines: dict[RequestHandler, asyncio.TimerHandle] = {}

    def attach(self, server: web.Server) -> None:
        made, lost, make_request = server.connection_made, server.connection_lost, server.request_factory

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._opened(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._closed(handler)
            lost(handler, exc)

        def request_factory(message: Any, payload: Any, protocol: RequestHandler, writer: Any, task: Any) -> Any:
            self._headers_in(protocol)  # a whole request line and header block (or a malformed one) is in
            return make_request(message, payload, protocol, writer, task)

        # Each RequestHandler calls these on its Server and copies request_factory when it is made.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory

    def _opened(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        if self.per_address and self.open[address] >= self.per_address:
            self.noise.quietly("connection-cap", f"refused a connection from {address}: {self.open[address]} "
                                                 "are open already (limits.max_connections_per_address)")
            transport.write(_answer(503, "Service Unavailable", "too-many-connections",
                                    f"more than {self.per_address} open connections from {address}; "
                                    "close some, or reuse them (keep-alive)", retry_after=5))
            # Closed now, the handler's connection_lost runs before the task aiohttp is about to
            # start for it, which then fails its first assertion: that task is cancelled first.
            asyncio.get_running_loop().call_soon(_cancel_start, handler)
            handler.force_close()  # the transport sends the 503, then closes; nothing is read
            return
        self.open[address] += 1
        self._address[handler] = address
        loop = asyncio.get_running_loop()
        self._deadlines[handler] = loop.call_later(self.header_timeout, self._too_slow, handler)

    def _headers_in(self, handler: RequestHandler) -> None:
        deadline = self._deadlines.pop(handler, None)
        if deadline:
            deadline.cancel()

    def _too_slow(self, handler: RequestHandler) -> None:
        self._deadlines.pop(handler, None)
        address = self._address.get(handler, "?")
        self.noise.quietly("header-timeout", f"closed a connection from {address}: no complete request "
                                             f"headers within {self.header_timeout:g} s (server.header_timeout)")
        if handler.transport is not None:
            handler.transport.write(_answer(408, "Request Timeout", "header-timeout",
                                            f"the request headers did not arrive within {self.header_timeout:g} s"))
        handler.force_close()

    def _closed(self, handler: RequestHandler) -> None:
        self._headers_in(handler)
        address = self._address.pop(handler, None)
        if address is not None:
            self.open[address] -= 1
            if self.open[address] <= 0:
                del self.open[address]


GUARD = web.AppKey("connection_guard", ConnectionGuard)


def setup(app: web.Application, config: Config) -> ConnectionGuard:
    """Install the settings and the guard on every server made from `app` (run_app, AppRunner, TestServer)."""
    noise = ClientNoise()
    guard = ConnectionGuard(config.server.header_timeout, config.limits.max_connections_per_address, noise)
    settings: MutableMapping[str, Any] = {
        "keepalive_timeout": config.server.keepalive_timeout,
        "lingering_time": config.server.body_timeout,
        "logger": noise,
    }
    make_handler = app._make_handler

    def make_guarded_handler(**kwargs: Any) -> web.Server:
        server = make_handler(**{**kwargs, **settings})
        guard.attach(server)
        return server

    app._make_handler = make_guarded_handler  # type: ignore[method-assign]
    app[GUARD] = guard
    return guard
