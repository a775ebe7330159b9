"""Shared fixtures: a real Relay on 127.0.0.1 and real aiortc peers."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
import yaml
from aiohttp.test_utils import TestServer

from relay.config import load_config
from relay.media.aiortc_patch import restrict_host_addresses
from relay.server.app import create_app
from relay.server.context import CONTEXT, Context

LOOPBACK = {"ice": {"host_addresses": ["127.0.0.1"]}}

# The tests' own aiortc peers stay on loopback too, even outside a namespace.
restrict_host_addresses(LOOPBACK["ice"]["host_addresses"])


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RelayProcess:
    """`relay serve` in a subprocess, for tests that signal or kill the server."""

    process: subprocess.Popen[bytes]
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def spawn_relay(tmp_path: Path, settings: dict[str, Any] | None = None,
                script: list[str] | None = None, env: dict[str, str] | None = None) -> RelayProcess:
    """Start a server process on a free port with LOOPBACK settings; wait until it answers."""
    port = free_port()
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(merge(merge(LOOPBACK, {"server": {"port": port}}), settings or {})))
    command = [sys.executable, *(script or ["-m", "relay"]), *([] if script else ["serve"]), "--config", str(config)]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=1).close()
            return RelayProcess(process, port)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"relay did not start: {command}") from None
            time.sleep(0.1)
