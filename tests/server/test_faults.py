"""Peers that vanish without DELETE (SIGKILLed processes) are found by ICE consent and released.

The server runs in-process with the default `ice.consent_timeout` (10 s), so
the 15 s bound is the one the settings promise; the peers are `relay publish`
and `relay watch` processes, killed with SIGKILL so nothing says goodbye.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack
from relay.server.whep import ViewerSession

from ..conftest import RunningRelay, analyse, assert_nothing_left, files, finished, first_stamp, relay_with, wait_ended

RELEASED_WITHIN = 15.0


@contextmanager
def peer_process(command: str, url: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`relay publish` or `relay watch` with its ICE on loopback; killed on the way out if still running."""
    process = subprocess.Popen([sys.executable, "-m", "relay", command, url, "--host-address", "127.0.0.1", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def kill_and_time(relay: RunningRelay, process: subprocess.Popen[bytes], released: Callable[[], bool]) -> float:
    """SIGKILL the peer; seconds until the server says it is released."""
    process.send_signal(signal.SIGKILL)
    process.wait(5)
    killed = time.monotonic()
    await relay.wait_until(released, timeout=RELEASED_WITHIN + 5)
    return time.monotonic() - killed


def connected_viewers(relay: RunningRelay, stream: str, min_frames: int) -> int:
    return sum(1 for s in relay.ctx.sessions
               if isinstance(s, ViewerSession) and s.stream_name == stream and s.state == "connected"
               and s.viewer is not None and s.viewer.frames_sent >= min_frames)


async def test_killed_viewer_is_released_and_the_others_keep_watching() -> None:
    async with relay_with() as relay:
        video = TestPatternTrack(160, 120)
        async with WhipClient(relay.url("/whip/s"), [video]):
            async with WhepClient(relay.url("/whep/s"), kinds=("video",)) as stayer:
                await first_stamp(stayer)
                with peer_process("watch", relay.url("/whep/s"), "--video-only") as viewer:
                    await relay.wait_until(lambda: connected_viewers(relay, "s", 30) == 2, timeout=20)
                    took = await kill_and_time(relay, viewer, lambda: relay.ctx.sessions.count("whep") == 1)
                print(f"killed viewer released after {took:.1f} s")
                assert took <= RELEASED_WITHIN
                assert len(relay.ctx.streams.get("s").viewers) == 1
                now = video.frames_sent
                async with asyncio.timeout(5):  # the other viewer still gets every frame, up to the present
                    while (await first_stamp(stayer)).counter < now:
                        pass
        await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
        await assert_nothing_left(relay)


async def test_killed_publisher_is_released_viewers_told_and_recording_finalised(tmp_path: Path) -> None:
    """Without a reconnect grace (test_packets covers it) the viewers end with the killed publisher."""
    root = tmp_path / "rec"
    settings = {"recording": {"enabled": True, "dir": str(root)}, "forwarding": {"reconnect_grace": 0}}
    async with relay_with(settings) as relay:
        url = relay.url("/whip/cam")
        with peer_process("publish", url, "--test-pattern", "--size", "160x120", "--no-audio") as publisher:
            await relay.wait_until(lambda: relay.ctx.streams.get("cam") is not None
                                   and relay.ctx.streams.get("cam").packets_in > 0, timeout=20)
            async with WhepClient(relay.url("/whep/cam"), kinds=("video",)) as one, \
                    WhepClient(relay.url("/whep/cam"), kinds=("video",)) as two:
                await first_stamp(one)
                await first_stamp(two)
                await asyncio.sleep(2)  # a recording worth checking
                took = await kill_and_time(relay, publisher, lambda: relay.ctx.sessions.count("whip") == 0)
                print(f"killed publisher released after {took:.1f} s")
                assert took <= RELEASED_WITHIN
                assert not relay.ctx.streams.get("cam").live
                async with asyncio.timeout(5):
                    await asyncio.gather(wait_ended(one), wait_ended(two))
                await relay.wait_until(lambda: len(relay.ctx.sessions) == 0, timeout=5)
        await finished(relay, "cam")
        (path,) = files(root, "cam")
        recorded = analyse(path)
        assert recorded.header_duration is not None, "the recording was not finalised"
        assert recorded.duration >= 2 and recorded.first_is_keyframe
        assert None not in recorded.counters and recorded.counters == sorted(recorded.counters)
