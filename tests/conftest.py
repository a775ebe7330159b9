"""Shared fixtures: a real Relay on 127.0.0.1 and real aiortc peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestServer

from relay.app import create_app
from relay.config import load_config
from relay.context import CONTEXT, Context

LOOPBACK = {"ice": {"host_addresses": ["127.0.0.1"]}}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class RunningRelay:
    server: TestServer
    ctx: Context

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def wait_until(self, check: Any, timeout: float = 10.0) -> None:
        """Poll a server-side condition (e.g. a session count) with a deadline."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.05)


async def start_relay(settings: dict[str, Any] | None = None) -> RunningRelay:
    config = load_config(data=merge(LOOPBACK, settings or {}))
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return RunningRelay(server, app[CONTEXT])


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[RunningRelay]:
    running = await start_relay()
    yield running
    await running.server.close()
