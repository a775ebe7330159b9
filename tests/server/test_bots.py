"""`relay serve` with bots: a child process per input stream, restarted, stopped and reported."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, read_stamp

from ..conftest import RelayProcess, reinverted, request, spawn_relay

WIDTH, HEIGHT = 320, 240
BOTS = {"bots": [
    {"stream": "cam", "bot": "tests.bots:invert", "output": "cam-inverted"},
    {"stream": "cam", "bot": "tests.bots:flaky", "output": "cam-flaky"},
    {"stream": "cam", "bot": "tests.bots:slow", "output": "cam-slow"},
]}


async def describe(server: RelayProcess, stream: str) -> dict[str, Any]:
    response, body = await request("GET", server.url(f"/api/streams/{stream}"))
    return json.loads(str(body)) if response.status == 200 else {}


async def wait_for(server: RelayProcess, stream: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll the stream's description until `check(description)` holds; the description."""
    seen: dict[str, Any] = {}

    async def poll() -> bool:
        seen.update(await describe(server, stream))
        return bool(seen) and bool(check(seen))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await poll():
        if loop.time() > deadline:
            raise AssertionError(f"{stream}: condition not met within {timeout} s: {seen}")
        await asyncio.sleep(0.25)
    return seen


async def watch(url: str, seconds: float, undo: Any = lambda frame: frame) -> tuple[int, list[int]]:
    """Frames decoded from a WHEP viewer over `seconds`, and the counters of the stamps in `undo(frame)`."""
    async with WhepClient(url, kinds=("video",)) as viewer:
        track = await viewer.wait_track("video")
        counters: list[int] = []
        frames = 0
        loop = asyncio.get_running_loop()
        while counters == []:  # from the first stamped frame on
            stamp = read_stamp(undo(await asyncio.wait_for(track.recv(), 10)))
            counters += [stamp.counter] if stamp else []
        end = loop.time() + seconds
        while loop.time() < end:
            stamp = read_stamp(undo(await asyncio.wait_for(track.recv(), 10)))
            frames += 1
            if stamp:
                counters.append(stamp.counter)
    return frames, counters


def by_name(description: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {bot["name"]: bot for bot in description.get("bots", [])}


async def test_bots_run_beside_forwarding_restart_and_follow_the_stream(tmp_path: Path) -> None:
    server = spawn_relay(tmp_path, BOTS)
    try:
        async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]), \
                WhipClient(server.url("/whip/plain"), [TestPatternTrack(WIDTH, HEIGHT)]):
            cam = await wait_for(server, "cam", lambda d: all(
                b.get("state") == "running" and b.get("frames", 0) > 0 for b in d["bots"]))
            # The input's own viewers, beside a stream without bots, over the same seconds.
            (cam_frames, cam_counters), (plain_frames, plain_counters) = await asyncio.gather(
                watch(server.url("/whep/cam"), 6), watch(server.url("/whep/plain"), 6))
            for counters in (cam_counters, plain_counters):
                assert counters == sorted(counters)
            cam_gaps = sum(b - a - 1 for a, b in zip(cam_counters, cam_counters[1:]))
            plain_gaps = sum(b - a - 1 for a, b in zip(plain_counters, plain_counters[1:]))
            print(f"\nviewer of cam (3 bots): {cam_frames / 6:.1f} fps, {cam_gaps} frames missed; "
                  f"of plain: {plain_frames / 6:.1f} fps, {plain_gaps} missed")
            assert cam_frames >= 0.8 * plain_frames and cam_gaps <= plain_gaps + 5

            cam = await wait_for(server, "cam", lambda d: by_name(d)["flaky"]["crashes"] >= 2
                                 and by_name(d)["slow"]["drops"] > 10)
            bots = by_name(cam)
            assert bots["invert"]["crashes"] == 0 and bots["invert"]["output"] == "cam-inverted"
            assert bots["slow"]["fps"] <= 8, bots["slow"]
            made = await describe(server, "cam-inverted")
            assert made["live"] and made["made_by"] == {"bot": "tests.bots:invert", "stream": "cam"}
            response, text = await request("GET", server.url("/metrics"))
            assert 'relay_bot_fps{bot="invert",stream="cam"}' in str(text)
            assert 'relay_bot_crashes_total{bot="flaky",stream="cam"}' in str(text)

            # The bot process dies: it is started again, and its output comes back.
            pid = cam["bot_process"]["pid"]
            os.kill(pid, signal.SIGKILL)
            cam = await wait_for(server, "cam", lambda d: d["bot_process"]["running"] and d["bot_process"]["pid"] != pid
                                 and by_name(d)["invert"]["state"] == "running")
            assert cam["bot_process"]["restarts"] == 1 and cam["bot_process"]["last_exit"] == -signal.SIGKILL
            frames, counters = await watch(server.url("/whep/cam-inverted"), 1, reinverted)
            assert len(counters) > frames / 2 and counters == sorted(counters)
        # The stream ends: its bots stop, and their outputs with them.
        cam = await wait_for(server, "cam", lambda d: not d["bot_process"]["running"])
        assert all(b["state"] == "stopped" for b in cam["bots"])
        await wait_for(server, "cam-inverted", lambda d: not d["live"])
        # It comes back: so do they.
        async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]):
            cam = await wait_for(server, "cam", lambda d: d["bot_process"]["running"]
                                 and by_name(d)["invert"]["state"] == "running")
            assert cam["bot_process"]["restarts"] == 1  # a stream's return is no crash
    finally:
        assert server.stop() == 0


async def test_the_server_process_still_decodes_nothing(tmp_path: Path) -> None:
    """The bots decode in their own process; the server's counters (tests/counting_server.py) stay at zero."""
    counts_file = tmp_path / "counts.json"
    tests = Path(__file__).resolve().parents[1]
    # The script's directory comes first on sys.path: `relay` must still be this checkout's.
    env = dict(os.environ, RELAY_CODEC_COUNTS=str(counts_file), PYTHONPATH=str(tests.parent))
    bots = {"bots": [{"stream": "cam", "bot": "tests.bots:passive"}, {"stream": "cam", "bot": "tests.bots:invert",
                                                                       "output": "cam-inverted"}]}
    server = spawn_relay(tmp_path, bots, script=[str(tests / "counting_server.py")], env=env)
    try:
        async with WhipClient(server.url("/whip/cam"), [TestPatternTrack(WIDTH, HEIGHT)]):
            await wait_for(server, "cam", lambda d: all(b.get("frames", 0) >= 30 for b in d["bots"]))
            frames, counters = await watch(server.url("/whep/cam-inverted"), 1, reinverted)
            assert len(counters) > frames / 2
    finally:
        assert server.stop() == 0
    counts = json.loads(counts_file.read_text())
    assert counts == {}, f"the server created or used codecs: {counts}"
