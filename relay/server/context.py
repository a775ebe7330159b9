"""What every HTTP handler shares: the settings, the streams, the sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from relay.config import Config
from relay.media.stream import Streams
from relay.server.session import Sessions


@dataclass
class Context:
    config: Config
    streams: Streams
    sessions: Sessions = field(default_factory=Sessions)
    accepting: bool = True

    @classmethod
    def create(cls, config: Config) -> Context:
        return cls(config, Streams(config.forwarding, data=config.data, chat=config.chat))


CONTEXT = web.AppKey("context", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]
