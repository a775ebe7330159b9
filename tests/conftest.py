"""Shared fixtures and helpers: a real Relay on 127.0.0.1 and real aiortc peers.

Test modules import the plain helpers from here (`from ..conftest import ...`), never from
each other:

  poll_until(check)              wait for a condition, with a deadline
  start_relay / relay_with       an in-process Relay (the `relay` fixture is one on defaults)
  spawn_relay                    `relay serve` in a subprocess
  make_offer, request, assert_problem   raw WHIP/WHEP requests and RFC 9457 answers
  read_events                    the first server-sent events of an open response
  first_stamp, wait_ended        what a WHEP viewer sees: the first stamp, the end of the stream
  reinverted                     a frame of the invert bot's output as it was before the bot
  assert_nothing_left            no session, peer connection or server task outlives its use
  analyse, files, finished       recordings: what a file holds, the files of a stream, the end of writing
  make_media                     a media file of test-pattern frames and a tone, for the file sources
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import av
import numpy as np
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError

from relay.client import WhepClient
from relay.client.testpattern import Stamp, make_frame, read_stamp
from relay.config import load_config
from relay.media.aiortc_patch import restrict_host_addresses
from relay.server.app import create_app
from relay.server.context import CONTEXT, Context
from relay.server.recordings import Recordings
from relay.server.recordings_api import RECORDINGS

# One process: `relay serve` would start a worker per CPU (tests of workers ask for them).
LOOPBACK = {"ice": {"host_addresses": ["127.0.0.1"]}, "workers": {"count": 1}}

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

    async def wait_until(self, check: Callable[[], object], timeout: float = 10.0) -> None:
        """Poll a server-side condition (e.g. a session count) with a deadline."""
        await poll_until(check, timeout, interval=0.05)


async def poll_until(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until `check()` is true; AssertionError if it is not within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def start_relay(settings: dict[str, Any] | None = None) -> RunningRelay:
    config = load_config(data=merge(LOOPBACK, settings or {}))
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return RunningRelay(server, app[CONTEXT])


@asynccontextmanager
async def relay_with(settings: dict[str, Any] | None = None) -> AsyncIterator[RunningRelay]:
    """An in-process Relay on custom settings, closed on the way out."""
    running = await start_relay(settings)
    try:
        yield running
    finally:
        await running.server.close()


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
    scheme: str = "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def spawn_relay(tmp_path: Path, settings: dict[str, Any] | None = None,
                script: list[str] | None = None, env: dict[str, str] | None = None,
                args: list[str] | None = None, log: Path | None = None) -> RelayProcess:
    """Start a server process (one process unless `settings` say otherwise) with LOOPBACK settings
    on a free port (or the one `settings` give); wait until it answers.

    `args` are added to `relay serve`'s command line; with --tls-cert it serves (and is polled
    over) HTTPS, its certificate unchecked. With `log`, its output goes there.
    """
    port = (settings or {}).get("server", {}).get("port") or free_port()
    config = tmp_path / "relay.yaml"
    base = merge(LOOPBACK, {"server": {"port": port}, "workers": {"count": 1}})
    config.write_text(yaml.safe_dump(merge(base, settings or {})))
    command = [sys.executable, *(script or ["-m", "relay"]), *([] if script else ["serve"]), "--config", str(config),
               *(args or [])]
    scheme = "https" if "--tls-cert" in (args or []) else "http"
    output = log.open("ab") if log else None
    process = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    if output:
        output.close()  # the child has its own copy
    deadline = time.monotonic() + 60  # a ceiling: worker processes start slowly on a loaded machine
    while True:
        try:
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/api/streams", timeout=1,
                                   context=ssl._create_unverified_context()).close()
            return RelayProcess(process, port, scheme)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"relay did not start: {command}") from None
            time.sleep(0.1)


# --- Raw WHIP/WHEP requests and their problem answers -------------------------------------------


async def make_offer(direction: str = "sendonly", video_codec: str | None = None,
                     kinds: tuple[str, ...] = ("video", "audio")) -> str:
    """The SDP offer of a real aiortc peer that is closed at once (nothing will answer it)."""
    pc = RTCPeerConnection()
    try:
        for kind in kinds:
            transceiver = pc.addTransceiver(kind, direction=direction)
            if kind == "video" and video_codec:
                transceiver.setCodecPreferences(
                    [c for c in RTCRtpSender.getCapabilities("video").codecs
                     if c.mimeType.lower() in (video_codec.lower(), "video/rtx")]
                )
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def request(method: str, url: str, body: str | bytes | None = None,
                  **headers: str) -> tuple[aiohttp.ClientResponse, dict | str]:
    """One request; the response and its body (parsed if it is problem+json)."""
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, data=body, headers=headers) as response:
            if response.content_type == "application/problem+json":
                return response, await response.json(content_type=None)
            return response, await response.text()


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, str]]:
    """The first `count` server-sent events (event, data) of an open response."""
    events: list[tuple[str, str]] = []
    event, data = "message", []
    async with asyncio.timeout(10):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                events.append((event, "\n".join(data)))
                event, data = "message", []
    return events


def assert_problem(response: aiohttp.ClientResponse, body: object, status: int, *words: str) -> None:
    """`status` with an RFC 9457 body whose detail names each of `words`."""
    assert response.status == status, body
    assert response.content_type == "application/problem+json"
    assert isinstance(body, dict)
    assert body["status"] == status and body["type"].startswith("urn:relay:problem:") and body["title"]
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]


# --- What a viewer sees, and what is left behind -------------------------------------------------


async def first_stamp(viewer: WhepClient) -> Stamp:
    """The stamp of the first decoded video frame that carries a readable one."""
    async with asyncio.timeout(10):
        while "video" not in viewer.tracks:
            await asyncio.sleep(0.02)
        while True:
            stamp = read_stamp(await viewer.tracks["video"].recv())
            if stamp:
                return stamp


def reinverted(frame: av.VideoFrame) -> av.VideoFrame:
    """Undo the invert bot (tests/bots.py): the stamp and picture of its output read back only from this."""
    planes = frame.to_ndarray(format="yuv420p")
    return av.VideoFrame.from_ndarray(255 - planes, format="yuv420p")


async def wait_ended(viewer: WhepClient) -> None:
    """Read until the track ends: how a WHEP player learns the stream is over."""
    try:
        while True:
            await viewer.tracks["video"].recv()
    except MediaStreamError:
        pass


class HasContext(Protocol):
    ctx: Context


def live_relay_tasks() -> list[asyncio.Task]:
    """Tasks running code of the relay package (the server's own tasks)."""
    def code(task: asyncio.Task) -> Any:
        return getattr(task.get_coro(), "cr_code", None)

    return [t for t in asyncio.all_tasks() if code(t) and "/relay/" in code(t).co_filename]


def leftovers(relay: HasContext) -> list[str]:
    """What still holds resources although every peer has gone: sessions, streams' media, PCs, tasks."""
    left = [f"session {s.path} ({s.state})" for s in relay.ctx.sessions]
    for stream in relay.ctx.streams:  # offline streams stay listed a while, holding nothing
        sinks = sum(len(fanout.sinks) for fanout in stream.fanouts.values())
        if stream.live or stream.viewers or stream.tracks or sinks:
            left.append(f"stream {stream.name}: live={stream.live} viewers={len(stream.viewers)} "
                        f"tracks={sorted(stream.tracks)} sinks={sinks}")
    gc.collect()
    left += [f"peer connection {o.connectionState}" for o in gc.get_objects()
             if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"]
    left += [f"task {t.get_name()}: {t.get_coro()!r}" for t in live_relay_tasks()]
    return left


async def assert_nothing_left(relay: HasContext, timeout: float = 5.0) -> None:
    """Once the peers are gone, the server lets go of everything within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while left := leftovers(relay):
        if loop.time() > deadline:
            raise AssertionError(f"left behind after {timeout} s: {left}")
        await asyncio.sleep(0.05)


# --- Recordings ----------------------------------------------------------------------------------

FPS = 30  # the frame rate the recording tests publish at


@dataclass
class Recorded:
    """What one file holds, by demuxing (and, in the test only, decoding) it."""

    codecs: dict[str, str]
    size: tuple[int, int]
    video: list[float] = field(default_factory=list)  # packet times, s
    audio: list[float] = field(default_factory=list)
    first_is_keyframe: bool = False
    counters: list[int | None] = field(default_factory=list)
    header_duration: float | None = None

    @property
    def duration(self) -> float:
        return self.video[-1] - self.video[0] + 1 / FPS

    def assert_continuous(self) -> None:
        assert None not in self.counters, "a recorded frame has no readable stamp"
        first = self.counters[0]
        assert self.counters == list(range(first, first + len(self.counters))), "frames missing or repeated"


def analyse(path: Path) -> Recorded:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        recorded = Recorded(
            {s.type: s.codec_context.name for s in container.streams},
            (video.codec_context.width, video.codec_context.height),
            header_duration=container.duration / 1e6 if container.duration else None,
        )
        for packet in container.demux():
            if packet.stream.type == "video":
                if packet.size and not recorded.video:
                    recorded.first_is_keyframe = packet.is_keyframe
                if packet.size:
                    recorded.video.append(float(packet.pts * packet.time_base))
                for frame in packet.decode():
                    stamp = read_stamp(frame)
                    recorded.counters.append(stamp.counter if stamp else None)
            elif packet.size:
                recorded.audio.append(float(packet.pts * packet.time_base))
    return recorded


def files(root: Path, stream: str) -> list[Path]:
    return sorted((root / stream).iterdir()) if (root / stream).exists() else []


def recordings(relay: RunningRelay) -> Recordings:
    return relay.server.app[RECORDINGS]


async def finished(relay: RunningRelay, stream: str) -> None:
    """The publisher left: wait until its recorder is gone and its files are closed."""
    await relay.wait_until(lambda: recordings(relay).recorder(stream) is None)
    assert await recordings(relay).wait_finished(10)


# --- Media files ---------------------------------------------------------------------------------


def make_media(path: Path, seconds: float, video: str = "libvpx", gop: int = 10,
               width: int = 320, height: int = 240) -> None:
    """Test-pattern frames (counter n, send time 0) at FPS and a 440 Hz tone, encoded with PyAV."""
    with av.open(str(path), "w") as out:
        v = out.add_stream(video, rate=FPS)
        v.width, v.height, v.pix_fmt, v.bit_rate = width, height, "yuv420p", 400_000
        v.codec_context.gop_size = gop
        if video == "libx264":
            v.codec_context.profile = "Baseline"
        a = out.add_stream("libopus", rate=48000)
        a.layout = "mono"
        for n in range(round(seconds * FPS)):
            frame = make_frame(n, width, height, 0)
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            out.mux(v.encode(frame))
        tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * 48000)) / 48000)).astype(np.int16)
        for start in range(0, tone.size - 959, 960):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 960], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, start, Fraction(1, 48000)
            out.mux(a.encode(frame))
        out.mux(v.encode(None))
        out.mux(a.encode(None))
