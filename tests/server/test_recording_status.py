"""A recording that cannot be written says so, forwarding goes on, and a later file tries again.

The server runs in a mount namespace of its own (`unshare -m`) on a small
tmpfs: full (ENOSPC) or remounted read-only (EROFS), which stops root too.
The test reaches that mount with `nsenter -t PID -m` and `/proc/PID/root`.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, read_stamp

from ..conftest import LOOPBACK, merge


@dataclass
class MountedRelay:
    """`relay serve` whose recordings directory is a tmpfs only it (and nsenter) can see."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path  # the recordings directory, as the server sees it

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def seen(self, path: Path) -> Path:
        """`path` inside the server's mount namespace, from outside it."""
        return Path(f"/proc/{self.process.pid}/root") / path.relative_to("/")

    def files(self, stream: str) -> list[Path]:
        directory = self.seen(self.root / stream)
        return sorted(directory.iterdir()) if directory.is_dir() else []

    async def mount(self, *options: str) -> None:
        """Remount the tmpfs in the server's namespace; retried while a closing file keeps it busy."""
        command = ["nsenter", "-t", str(self.process.pid), "-m", "mount", "-o", ",".join(options), str(self.root)]
        deadline = time.monotonic() + 10
        while True:
            proc = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{command}: {err.decode()}"
            await asyncio.sleep(0.2)


@asynccontextmanager
async def mounted_relay(tmp_path: Path, mount_options: str, read_only: bool = False,
                        **recording: Any) -> AsyncIterator[MountedRelay]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    root = tmp_path / "rec"
    root.mkdir()
    config = tmp_path / "relay.yaml"
    settings = {"server": {"port": port}, "recording": {"enabled": True, "dir": str(root), **recording}}
    config.write_text(yaml.safe_dump(merge(LOOPBACK, settings)))
    setup = f"mount -t tmpfs -o {mount_options} tmpfs {shlex.quote(str(root))}"
    if read_only:
        setup += f" && mount -o remount,ro {shlex.quote(str(root))}"
    serve = f"exec {shlex.quote(sys.executable)} -m relay serve --config {shlex.quote(str(config))}"
    process = subprocess.Popen(["unshare", "-m", "sh", "-c", f"{setup} && {serve}"])
    relay = MountedRelay(process, port, root)
    try:
        async with aiohttp.ClientSession() as http:
            await until(lambda: answers(http, relay.url("/healthz")), timeout=20, also=lambda: process.poll() is None)
        yield relay
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 15.0,
                also: Callable[[], bool] = lambda: True) -> Any:
    """Poll an async check until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        assert also(), "the server exited"
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.1)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def stream_state(http: aiohttp.ClientSession, relay: MountedRelay, name: str) -> dict[str, Any]:
    return dict(await get_json(http, relay.url(f"/api/streams/{name}")))


async def listed(http: aiohttp.ClientSession, relay: MountedRelay, name: str) -> list[dict[str, Any]]:
    return list((await get_json(http, relay.url(f"/api/recordings?stream={name}")))["recordings"])


def failed_with(words: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s["recording"] is False and words in (s.get("recording_error") or "").lower()


def recording_fine(s: dict[str, Any]) -> bool:
    return s["recording"] is True and s["recording_error"] is None


@dataclass
class EventLog:
    """Every `streams` event of /api/events, read in the background."""

    events: list[list[dict[str, Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def read(self, http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
            assert response.status == 200
            event = None
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "streams":
                    self.events.append(json.loads(line[6:])["streams"])

    def saw(self, name: str, *checks: Callable[[dict[str, Any]], bool]) -> bool:
        """Events of stream `name` met each check, in this order."""
        pending = list(checks)
        for streams in self.events:
            for s in streams:
                if pending and s["name"] == name and pending[0](s):
                    pending.pop(0)
        return not pending


@asynccontextmanager
async def event_log(http: aiohttp.ClientSession, url: str) -> AsyncIterator[EventLog]:
    log = EventLog()
    log.task = asyncio.create_task(log.read(http, url))
    try:
        yield log
    finally:
        log.task.cancel()
        await asyncio.gather(log.task, return_exceptions=True)


@dataclass
class Frames:
    """A viewer's decoded video, read in the background: (arrival, stamp counter)."""

    viewer: WhepClient
    seen: list[tuple[float, int]] = field(default_factory=list)

    async def read(self) -> None:
        while "video" not in self.viewer.tracks:
            await asyncio.sleep(0.02)
        while True:
            stamp = read_stamp(await self.viewer.tracks["video"].recv())
            if stamp:
                self.seen.append((time.monotonic(), stamp.counter))

    def since(self, moment: float) -> list[int]:
        return [counter for arrived, counter in self.seen if arrived >= moment]


@asynccontextmanager
async def watching(url: str) -> AsyncIterator[Frames]:
    async with WhepClient(url, kinds=("video",)) as viewer:
        frames = Frames(viewer)
        task = asyncio.create_task(frames.read())
        try:
            yield frames
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def assert_forwarding_goes_on(frames: Frames, seconds: float = 1.5) -> None:
    start = time.monotonic()
    await asyncio.sleep(seconds)
    counters = frames.since(start)
    assert len(counters) >= 10 * seconds, f"only {len(counters)} frames in {seconds} s"
    assert counters == sorted(counters) and len(set(counters)) == len(counters), "stamps must advance"


async def test_a_full_disk_fails_the_recording_visibly_and_the_next_segment_tries_again(tmp_path: Path) -> None:
    async with mounted_relay(tmp_path, "size=384k", segment_seconds=1) as relay, aiohttp.ClientSession() as http:
        async with event_log(http, relay.url("/api/events")) as events:
            async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]):
                async with watching(relay.url("/whep/cam")) as frames:
                    await until(lambda: _check(stream_state(http, relay, "cam"), recording_fine))
                    # Segments fill the 384 kB until a write fails.
                    failed = await until(lambda: _check(stream_state(http, relay, "cam"), failed_with("no space")),
                                         timeout=40)
                    assert failed["live"] is True
                    await until(lambda: _true(events.saw("cam", failed_with("no space"))), timeout=5)

                    # The cut file is listed as failed and does not grow; none is listed as being written
                    # (but for a retry's file while it fails, with nothing in it).
                    before = await listed(http, relay, "cam")
                    assert before and not [r for r in before if r["recording"] and r["size"]], before
                    cut = [r for r in before if r["error"]]
                    assert cut and "no space" in cut[0]["error"].lower(), before
                    await assert_forwarding_goes_on(frames)
                    after = {r["file"]: r for r in await listed(http, relay, "cam")}
                    for entry in cut:
                        assert after[entry["file"]]["size"] == entry["size"], "a failed file must not grow"
                        assert after[entry["file"]]["duration"] == entry["duration"]
                    assert failed_with("no space")(await stream_state(http, relay, "cam"))
                    async with http.get(relay.url("/metrics")) as response:
                        errors = [line for line in (await response.text()).splitlines()
                                  if line.startswith("relay_recording_errors_total ")]
                    assert errors and float(errors[0].split()[1]) >= 1

                    # Free the space: the next segment writes a file again, and the error clears.
                    for path in relay.files("cam"):
                        path.unlink(missing_ok=True)
                    fine = await until(lambda: _check(stream_state(http, relay, "cam"), recording_fine), timeout=10)
                    assert fine["live"] is True
                    await until(lambda: _true(events.saw("cam", failed_with("no space"), recording_fine)),
                                timeout=5)
                    writing = await until(lambda: _writing(http, relay, "cam"), timeout=5)
                    assert writing["error"] is None
                    size = relay.seen(relay.root / "cam" / writing["file"]).stat().st_size
                    await until(lambda: _true(relay.seen(relay.root / "cam" / writing["file"]).stat().st_size > size),
                                timeout=5)


async def test_a_read_only_directory_fails_the_recording_and_the_next_publish_tries_again(tmp_path: Path) -> None:
    async with mounted_relay(tmp_path, "size=4m", read_only=True) as relay, aiohttp.ClientSession() as http:
        async with event_log(http, relay.url("/api/events")) as events:
            async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]):
                async with watching(relay.url("/whep/cam")) as frames:
                    failed = await until(lambda: _check(stream_state(http, relay, "cam"),
                                                        failed_with("read-only")))
                    assert failed["live"] is True
                    await until(lambda: _true(events.saw("cam", failed_with("read-only"))), timeout=5)
                    await assert_forwarding_goes_on(frames)
                    assert await listed(http, relay, "cam") == []
                    # Writable again, but without segments this publish does not try again.
                    await relay.mount("remount", "rw")
                    await asyncio.sleep(1.5)
                    assert failed_with("read-only")(await stream_state(http, relay, "cam"))
                    assert relay.files("cam") == []
            # Offline, the stream still says why its recording failed.
            offline = await until(lambda: _check(stream_state(http, relay, "cam"), lambda s: not s["live"]))
            assert failed_with("read-only")(offline)

            # The next publish tries again, and it works.
            async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]):
                await until(lambda: _check(stream_state(http, relay, "cam"), lambda s: s["live"]))
                await until(lambda: _check(stream_state(http, relay, "cam"), recording_fine))
                writing = await until(lambda: _writing(http, relay, "cam"))
                assert len(relay.files("cam")) == 1
                await until(lambda: _true(events.saw("cam", failed_with("read-only"), recording_fine)), timeout=5)

                # Switching it off clears the state; switching it on tries a file at once.
                async with http.delete(relay.url("/api/streams/cam/recording")) as response:
                    assert (await response.json())["error"] is None
                await until(lambda: _check(stream_state(http, relay, "cam"),
                                           lambda s: not s["recording"] and s["recording_error"] is None))
                await until(lambda: _no_file_written(http, relay, "cam"))
                await relay.mount("remount", "ro")  # retried while the closing file keeps it busy
                async with http.post(relay.url("/api/streams/cam/recording")) as response:
                    assert response.status == 200
                await until(lambda: _check(stream_state(http, relay, "cam"), failed_with("read-only")))
                await relay.mount("remount", "rw")
                async with http.post(relay.url("/api/streams/cam/recording")) as response:
                    assert response.status == 200
                await until(lambda: _check(stream_state(http, relay, "cam"), recording_fine))
                await until(lambda: _true(len(relay.files("cam")) == 2))
                assert writing["file"] in [p.name for p in relay.files("cam")]


async def _check(state: Awaitable[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    value = await state
    return value if test(value) else None


async def _true(value: bool) -> bool:
    return value


async def _writing(http: aiohttp.ClientSession, relay: MountedRelay, name: str) -> dict[str, Any] | None:
    """The catalogue entry of the file being written, once it has bytes."""
    return next((r for r in await listed(http, relay, name) if r["recording"] and r["size"] > 0), None)


async def _no_file_written(http: aiohttp.ClientSession, relay: MountedRelay, name: str) -> bool:
    return not [r for r in await listed(http, relay, name) if r["recording"]]
