"""What every HTTP handler shares: the settings, the streams, the sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from .config import Config
from .session import Sessions
from .stream import Streams


@dataclass
class Context:
    config: Config
    streams: Streams
    sessions: Sessions = field(default_factory=Sessions)
    accepting: bool = True

    @classmethod
    def create(cls, config: Config) -> Context:
        return cls(config, Streams(config.forwarding))


CONTEXT = web.AppKey("context", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]
