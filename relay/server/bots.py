"""The media bots `relay serve` runs (`bots:` in the config, `--bot STREAM=MODULE:OBJECT`).

Each input stream's bots run in one child process, `relay bot ... --stats-json`,
so they share one decoder and nothing they do (block, leak, crash, segfault)
touches the server's event loop: for the server a bot is one more WHEP viewer
and, with an output, one more WHIP publisher on loopback. The child is started
when its stream goes live and stopped (SIGTERM) when it goes offline; when it
dies while the stream is live it is restarted after a backoff (1 s doubling to
30 s; back to 1 s after 30 s of running). It prints its bots' figures as a
JSON line a second on stdout, which is all the server reads from it: they go
into the stream's description (`bots`, `bot_process`), `/metrics`, and the
output stream's `made_by`.

The child authenticates with a random token made at start (passed in its
environment), which auth accepts for any stream: the configured tokens may be
stored hashed, so the server cannot hand those on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.config import BotConfig, Config
from relay.media.stream import Stream, Streams
from relay.server import auth, metrics
from relay.server.context import CONTEXT

log = logging.getLogger(__name__)

RESTART_FIRST, RESTART_MAX, RESTART_STABLE = 1.0, 30.0, 30.0
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL


@dataclass
class BotGroup:
    """The bots of one input stream and the process that runs them."""

    stream: str
    bots: list[BotConfig]
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    last_exit: int | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.process.pid if self.process else None, "running": self.process is not None,
                "restarts": self.restarts, "last_exit": self.last_exit}


def _local_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)


class Bots:
    """Starts, stops, restarts and reads the bot processes of every configured stream."""

    def __init__(self, config: Config, streams: Streams) -> None:
        self._streams = streams
        self.base_url = f"http://{_local_host(config.server.host)}:{config.server.port}"
        self.host_addresses = list(config.ice.host_addresses)
        self.token = secrets.token_urlsafe(32)
        self.groups: dict[str, BotGroup] = {}
        for bot in config.bots:
            self.groups.setdefault(bot.stream, BotGroup(bot.stream, [])).bots.append(bot)
        self.made_by: dict[str, dict[str, str]] = {}  # output stream -> {"bot", "stream"}
        for group in self.groups.values():
            for bot in group.bots:
                if bot.output:
                    self.made_by[bot.output] = {"bot": bot.bot, "stream": group.stream}
        self._closing = False
        streams.listeners.append(self._on_change)

    def _on_change(self, stream: Stream) -> None:
        if stream.name in self.made_by:
            stream.notes["made_by"] = self.made_by[stream.name]
        group = self.groups.get(stream.name)
        if group is None or self._closing:
            return
        self._annotate(group)
        if stream.live and group.task is None:
            group.task = asyncio.ensure_future(self._supervise(group))
        elif not stream.live and group.process is not None:
            self._terminate(group.process)

    def _live(self, name: str) -> bool:
        stream = self._streams.get(name)
        return bool(stream and stream.live) and not self._closing

    def _annotate(self, group: BotGroup) -> None:
        stream = self._streams.get(group.stream)
        if stream is not None:
            stream.notes["bots"] = group.stats or [{"name": b.bot, "output": b.output, "state": "stopped"}
                                                   for b in group.bots]
            stream.notes["bot_process"] = group.describe()

    def command(self, group: BotGroup) -> list[str]:
        command = [sys.executable, "-m", "relay", "bot", *(b.bot for b in group.bots),
                   "--input", f"{self.base_url}/whep/{group.stream}", "--wait", "--stats-json"]
        for bot in group.bots:
            command += ["--output", f"{self.base_url}/whip/{bot.output}" if bot.output else "-"]
        for address in self.host_addresses:
            command += ["--host-address", address]
        return command

    async def _supervise(self, group: BotGroup) -> None:
        backoff = RESTART_FIRST
        try:
            while self._live(group.stream):
                started = time.monotonic()
                group.process = await asyncio.create_subprocess_exec(
                    *self.command(group), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    env={**os.environ, "RELAY_TOKEN": self.token})
                log.info("bots of stream %s started (pid %d)", group.stream, group.process.pid)
                self._annotate(group)
                try:
                    await self._read(group, group.process)
                finally:
                    group.last_exit = await group.process.wait()
                    group.process = None
                    for stats in group.stats:
                        stats["state"] = "stopped"
                    self._annotate(group)
                if not self._live(group.stream):
                    break
                group.restarts += 1
                if time.monotonic() - started > RESTART_STABLE:
                    backoff = RESTART_FIRST
                log.warning("bots of stream %s exited with %s; restarting in %g s",
                            group.stream, group.last_exit, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_MAX)
        except Exception:
            log.exception("supervising the bots of stream %s failed", group.stream)
        finally:
            if group.process is not None:
                self._terminate(group.process)
            group.task = None
            self._annotate(group)
        if self._live(group.stream):  # it came back while the last process was stopping
            group.task = asyncio.ensure_future(self._supervise(group))

    async def _read(self, group: BotGroup, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                group.stats = list(json.loads(line)["bots"])
            except (ValueError, KeyError, TypeError):
                continue
            for bot, stats in zip(group.bots, group.stats):
                output = stats.get("output")
                if output and output not in self.made_by:
                    self.made_by[output] = {"bot": bot.bot, "stream": group.stream}
                    made = self._streams.get(output)
                    if made is not None:
                        made.notes["made_by"] = self.made_by[output]
            self._annotate(group)

    def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            asyncio.get_running_loop().call_later(STOP_GRACE, self._kill, process)

    @staticmethod
    def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.kill()

    async def close(self) -> None:
        self._closing = True
        tasks = [g.task for g in self.groups.values() if g.task is not None]
        for group in self.groups.values():
            if group.process is not None:
                self._terminate(group.process)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE + 1)
        for task in tasks:
            task.cancel()

    def collect(self, named: Any) -> Iterator[Metric]:
        labels = ["stream", "bot"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "fps": GaugeMetricFamily("relay_bot_fps", "Frames a bot handled per second", labels=labels),
            "lag_ms": GaugeMetricFamily("relay_bot_lag_seconds", "From a frame decoded to the bot done with it",
                                        labels=labels),
            "frames": CounterMetricFamily("relay_bot_frames", "Frames a bot handled", labels=labels),
            "drops": CounterMetricFamily("relay_bot_dropped_frames",
                                         "Frames a busy bot missed (it gets the newest)", labels=labels),
            "crashes": CounterMetricFamily("relay_bot_crashes", "Handler exceptions (the bot restarts)",
                                           labels=labels),
        }
        restarts = CounterMetricFamily("relay_bot_process_restarts", "Bot processes restarted after dying",
                                       labels=["stream"])
        for group in self.groups.values():
            if not named(group.stream):
                continue
            restarts.add_metric([group.stream], group.restarts)
            for stats in group.stats:
                for key, family in families.items():
                    value = stats.get(key)
                    if value is not None:
                        scaled = value / 1000 if key == "lag_ms" else value
                        family.add_metric([group.stream, str(stats["name"])], scaled)
        yield from families.values()
        yield restarts


class BotCollector(Collector):
    def __init__(self, bots: Bots) -> None:
        self._bots = bots

    def collect(self) -> Iterator[Metric]:
        return self._bots.collect(metrics.named_streams())


BOTS = web.AppKey("bots", Bots)


def setup(app: web.Application) -> None:
    """Run the configured bots; after metrics.setup (their figures join its registry)."""
    ctx = app[CONTEXT]
    if not ctx.config.bots:
        return
    bots = app[BOTS] = Bots(ctx.config, ctx.streams)
    auth.add_internal_token(app, bots.token)
    app[metrics.REGISTRY].register(BotCollector(bots))

    async def close(app: web.Application) -> None:
        await bots.close()

    app.on_shutdown.append(close)
