"""Several origins: which origin carries a stream, kept in Redis.

An origin (`directory.advertise` set) writes `relay:stream:{name}` =
its advertised URL for each of its live streams, with a TTL of
`directory.ttl` seconds renewed every third of it, and deletes the key
when the stream goes offline (a crashed origin's keys expire). An edge
(`directory.redis_url` alone) reads the key to know where to pull from.
Redis being down never stops a server: registration retries, and a lookup
that fails falls back to `origin.url`.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from relay.config import DirectoryConfig
from relay.media.peer import Tasks
from relay.media.stream import Stream, Streams

log = logging.getLogger(__name__)


def key(name: str) -> str:
    return f"relay:stream:{name}"


class Registry:
    """An origin's live streams in the directory, while they are live."""

    def __init__(self, streams: Streams, config: DirectoryConfig) -> None:
        assert config.redis_url is not None and config.advertise is not None
        self._redis = aioredis.Redis.from_url(config.redis_url, socket_timeout=2)
        self._url = config.advertise
        self._ttl = config.ttl
        self._streams = streams
        self._live: set[str] = set()
        self._tasks = Tasks()
        self._tasks.spawn(self._renew())
        streams.listeners.append(self._on_change)

    def _on_change(self, stream: Stream) -> None:
        if stream.live and stream.name not in self._live:
            self._live.add(stream.name)
            self._tasks.spawn(self._register(stream.name))
        elif not stream.live and stream.name in self._live:
            self._live.discard(stream.name)
            self._tasks.spawn(self._unregister(stream.name))

    async def _register(self, name: str) -> None:
        try:
            await self._redis.set(key(name), self._url, px=int(self._ttl * 1000))
        except RedisError as exc:
            log.warning("directory: could not register %r (retried within %g s): %s", name, self._ttl / 3, exc)

    async def _unregister(self, name: str) -> None:
        try:
            if await self._redis.get(key(name)) == self._url.encode():  # not if another origin took the name since
                await self._redis.delete(key(name))
        except RedisError as exc:
            log.warning("directory: could not unregister %r (it expires in %g s): %s", name, self._ttl, exc)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            await asyncio.gather(*(self._register(name) for name in list(self._live)))

    async def close(self) -> None:
        self._tasks.cancel()
        await asyncio.gather(*(self._unregister(name) for name in self._live))
        await self._redis.aclose()


class Lookup:
    """An edge's question: which origin carries this stream?"""

    def __init__(self, config: DirectoryConfig) -> None:
        assert config.redis_url is not None
        self._redis = aioredis.Redis.from_url(config.redis_url, socket_timeout=2)

    async def origin(self, name: str) -> str | None:
        """The registered origin URL of `name`, or None (not registered, or Redis unreachable)."""
        try:
            found = await self._redis.get(key(name))
        except RedisError as exc:
            log.warning("directory: lookup of %r failed: %s", name, exc)
            return None
        return found.decode() if isinstance(found, bytes) else found

    async def close(self) -> None:
        await self._redis.aclose()


def setup_registry(app: web.Application, streams: Streams, config: DirectoryConfig) -> None:
    """This origin registers its live streams (from startup, inside the running loop)."""
    registries: list[Registry] = []

    async def start(_: web.Application) -> None:
        registries.append(Registry(streams, config))

    async def close(_: web.Application) -> None:
        while registries:
            await registries.pop().close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
