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
from fractions import Fraction
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack
from relay.media.fanout import FanOut, MediaFrame
from relay.media.viewer import ViewerTrack
from relay.server.whep import ViewerSession

from .conftest import RunningRelay
from .test_lifecycle import assert_nothing_left, first_stamp
from .test_limits import relay_with
from .test_recording import analyse, files, finished

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
                    while await first_stamp(stayer) < now:
                        pass
        await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
        await asyncio.sleep(0.1)
        assert_nothing_left(relay)


async def wait_ended(viewer: WhepClient) -> None:
    """Read until the track ends: how a WHEP player learns the stream is over."""
    try:
        while True:
            await viewer.tracks["video"].recv()
    except MediaStreamError:
        pass


async def test_killed_publisher_is_released_viewers_told_and_recording_finalised(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    async with relay_with({"recording": {"enabled": True, "dir": str(root)}}) as relay:
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


def test_a_slow_viewer_is_bounded_and_resumes_on_a_keyframe() -> None:
    """A viewer whose sender never drains holds at most its queue, then waits for a keyframe."""
    requests: list[str] = []
    fanout = FanOut("video")
    track = ViewerTrack(fanout, 10, requests.append)
    fanout.add(track)  # as the sender's first recv() would

    def frame(n: int, keyframe: bool) -> MediaFrame:
        packet = av.Packet(bytes(1000))
        packet.pts, packet.time_base = n * 3000, Fraction(1, 90000)
        return MediaFrame(packet, keyframe, 1000)

    for n in range(1000):
        fanout.push(frame(n, keyframe=n % 300 == 0))
        assert len(track._queue) <= 10
    assert track.overflows >= 3 and requests.count("viewer queue overflow") == track.overflows
    assert track.waiting_keyframe  # frame 910 overflowed the queue again: 911-999 were dropped
    fanout.push(frame(1000, keyframe=False))
    assert len(track._queue) == 0, "nothing but a keyframe is queued while waiting for one"
    fanout.push(frame(1001, keyframe=True))
    assert len(track._queue) == 1 and not track.waiting_keyframe
