"""Limits that keep one client, or many, from exhausting the server.

Each is a `limits:` setting (0 = no limit): live streams, viewers per
stream, candidates per PATCH, and a token bucket of POST/PATCH requests per
client address (RFC 9725 §5: allocation happens before DTLS, so POST is the
cheap way to flood a WebRTC server). The SDP body size is `server.max_body_bytes`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.config import LimitsConfig
from relay.media.stream import Stream, Streams
from relay.sdp import Fragment
from relay.server.problems import Problem
from relay.server.session import Sessions

RATE_LIMITED_METHODS = ("POST", "PATCH")
FULL_RETRY_AFTER = 10
PENDING_RETRY_AFTER = 2


class RateLimiter:
    """A token bucket per client address, in bounded memory.

    At most `tracked_clients` buckets are kept, least recently used evicted
    first: an evicted client only gets a fresh (full) bucket back.
    """

    def __init__(self, rate: float, burst: int, tracked_clients: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tracked_clients = tracked_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Take one request from `client`'s bucket: 0.0 if allowed, else seconds until it would be."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.tracked_clients:
            self._buckets.popitem(last=False)
        return wait


def rate_limit_middleware(limits: LimitsConfig) -> Callable[..., Awaitable[web.StreamResponse]]:
    """429 with Retry-After once a client address has spent its burst of POST/PATCH requests."""
    limiter = RateLimiter(limits.requests_per_second, limits.request_burst, limits.tracked_clients)

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if limiter.rate and request.method in RATE_LIMITED_METHODS:
            wait = limiter.take(request.remote or "unknown")
            if wait:
                raise Problem(429, "rate-limited",
                              f"more than {limiter.burst} POST/PATCH requests in a burst, or more than "
                              f"{limiter.rate:g} a second, from {request.remote}; retry after the Retry-After delay",
                              headers={"Retry-After": str(math.ceil(wait))})
        return await handler(request)

    return middleware


def admit_pending(sessions: Sessions, address: str, limits: LimitsConfig) -> None:
    """503 when this address, or everyone, has too many sessions whose ICE has not connected yet.

    A POST costs ports and a peer connection before the client proves anything
    (RFC 9725 §5): pending sessions get their own, smaller budget, so they
    cannot take the seats and stream names of peers that do connect.
    """
    mine, most = sessions.pending[address], limits.max_pending_per_address
    if most and mine >= most:
        raise Problem(503, "too-many-pending",
                      f"{address} has {mine} sessions whose ICE has not connected yet; connect or DELETE them, "
                      "or retry after the Retry-After delay", headers={"Retry-After": str(PENDING_RETRY_AFTER)})
    if limits.max_pending and sessions.pending_total >= limits.max_pending:
        raise Problem(503, "too-many-pending",
                      f"this server has {sessions.pending_total} sessions still connecting; retry later",
                      headers={"Retry-After": str(PENDING_RETRY_AFTER)})


def streams_full(streams: Streams, limits: LimitsConfig) -> bool:
    """Whether `limits.max_streams` streams are live (their publishers connected)."""
    return bool(limits.max_streams) and sum(1 for stream in streams if stream.live) >= limits.max_streams


def admit_stream(streams: Streams, limits: LimitsConfig) -> None:
    """503 when `limits.max_streams` streams are live already (checked again when the publisher connects)."""
    if streams_full(streams, limits):
        raise Problem(503, "too-many-streams",
                      f"this server carries at most {limits.max_streams} live streams; "
                      "retry later or use another server",
                      headers={"Retry-After": str(FULL_RETRY_AFTER)})


def viewers_full(stream: Stream, limits: LimitsConfig) -> bool:
    """Whether the stream's connected viewers fill `limits.max_viewers_per_stream`."""
    return bool(limits.max_viewers_per_stream) and stream.watching >= limits.max_viewers_per_stream


def admit_viewer(stream: Stream, limits: LimitsConfig) -> None:
    """503 when the stream's seats are taken (checked again when the viewer connects)."""
    if viewers_full(stream, limits):
        raise Problem(503, "stream-full",
                      f"stream {stream.name!r} has its maximum of {limits.max_viewers_per_stream} viewers; retry later",
                      headers={"Retry-After": str(FULL_RETRY_AFTER)})


def check_candidates(fragment: Fragment, limits: LimitsConfig) -> None:
    most = limits.max_candidates_per_patch
    if most and len(fragment.candidates) > most:
        raise Problem(400, "too-many-candidates",
                      f"the fragment has {len(fragment.candidates)} candidates; send at most {most} per PATCH")
