"""The measuring viewer: stock, decoding aiortc viewers that read every frame's stamp.

A "leg" is one such viewer, through a server (WHEP) or straight from the
publisher (direct). It reports frame rate, stamp-counter gaps, RTP loss and
stamp latency since its last snapshot. `join` measures how long a new viewer
waits for its first decoded frame.
Run by `bench.measure` as `python -m bench.probe`; requests on stdin.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import blackhole_consume
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.client import ClientError, WhepClient
from relay.client.testpattern import latency_ms, read_stamp

from .peers import loopback_only
from .proc import serve
from .stats import percentile

JOIN_TIMEOUT = 15.0
CROWD_TIMEOUT = 30.0  # 32 handshakes queue on one process
FREEZE_AVERAGE_FRAMES = 30


def is_freeze(interval: float, recent: deque[float]) -> bool:
    """webrtc-stats' freeze: a frame interval of at least max(3 × avg, avg + 150 ms), avg over the
    last 30 intervals (RTCInboundRtpStreamStats.freezeCount)."""
    if not recent:
        return False
    average = sum(recent) / len(recent)
    return interval >= max(3 * average, average + 0.150)


class Leg:
    """One decoding viewer's media since the last snapshot."""

    def __init__(self, pc: RTCPeerConnection, tracks: dict[str, MediaStreamTrack], loop_frames: int | None) -> None:
        self.pc = pc
        self._loop = loop_frames or 1 << 32
        self._timed = loop_frames is None  # a replayed loop's stamps carry no send time
        self._last_counter: int | None = None
        self._last_frame_at: float | None = None
        self._last_rtp = (0, 0)
        self._intervals: deque[float] = deque(maxlen=FREEZE_AVERAGE_FRAMES)
        self._open_freeze_counted = False
        self._reset()
        self._tasks = [
            # aiortc decodes every packet into an unbounded queue: audio is read and dropped (aiortc #554).
            asyncio.create_task(self._video(track) if kind == "video" else blackhole_consume(track))
            for kind, track in tracks.items()
        ]

    def _reset(self) -> None:
        self._since = time.monotonic()
        self.frames = 0
        self.unreadable = 0
        self.missing = 0
        self.latencies: list[float] = []
        self.max_gap = 0.0
        self.freezes = 0
        self.frozen = 0.0

    def _count_freeze(self, now: float) -> None:
        """The freeze since the last frame, as far as it lies in this window (a freeze that spans a
        snapshot counts in the window where it was first seen, its time in each)."""
        assert self._last_frame_at is not None
        if not self._open_freeze_counted:
            self.freezes += 1
        self.frozen += now - max(self._last_frame_at, self._since)

    async def _video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if self._last_frame_at is not None:
                    interval = now - self._last_frame_at
                    self.max_gap = max(self.max_gap, interval)
                    if is_freeze(interval, self._intervals):
                        self._count_freeze(now)
                    self._open_freeze_counted = False
                    self._intervals.append(interval)
                self._last_frame_at = now
                stamp = read_stamp(frame)
                if stamp is None:
                    self.unreadable += 1
                    continue
                if self._timed:
                    self.latencies.append(latency_ms(stamp))
                self.frames += 1
                if self._last_counter is not None:
                    gap = (stamp.counter - self._last_counter - 1) % self._loop
                    if gap < self._loop // 2:  # a larger "gap" is a repeat or reordering
                        self.missing += gap
                self._last_counter = stamp.counter
        except MediaStreamError:
            pass

    async def _rtp(self) -> tuple[int, int]:
        """RTP packets received and lost so far, audio and video together."""
        received = lost = 0
        for stats in (await self.pc.getStats()).values():
            if stats.type == "inbound-rtp":
                received += stats.packetsReceived
                lost += max(0, stats.packetsLost)
        return received, lost

    async def snapshot(self) -> dict[str, Any]:
        """Everything since the previous snapshot, then start a new window."""
        received, lost = await self._rtp()
        now = time.monotonic()
        if self._last_frame_at is not None and is_freeze(now - self._last_frame_at, self._intervals):
            self._count_freeze(now)  # still frozen: the picture stopped, which is the worst freeze
            self._open_freeze_counted = True
        window = (received - self._last_rtp[0], lost - self._last_rtp[1])
        self._last_rtp = (received, lost)
        elapsed = time.monotonic() - self._since
        expected = window[0] + window[1]
        out = {
            "seconds": elapsed,
            "frames": self.frames,
            "fps": self.frames / elapsed if elapsed else 0.0,
            "unreadable": self.unreadable,
            "missing_frames": self.missing,
            "max_gap_ms": self.max_gap * 1000,
            "freezes": self.freezes,
            "frozen_s": self.frozen,
            "rtp_received": window[0],
            "rtp_loss": window[1] / expected if expected > 0 else 0.0,
            "latency_p50_ms": percentile(self.latencies, 50),
            "latency_p95_ms": percentile(self.latencies, 95),
        }
        self._reset()
        return out

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


class Probe:
    def __init__(self) -> None:
        self.legs: dict[str, Leg] = {}
        self.whep: dict[str, WhepClient] = {}

    async def watch(self, leg: str, url: str, loop_frames: int | None = None) -> dict[str, Any]:
        """Watch through a WHEP server as leg `leg`."""
        client = WhepClient(url, ice_servers=[])
        await client.start()  # the tracks arrive with the answer
        self.legs[leg] = Leg(client.pc, client.tracks, loop_frames)
        self.whep[leg] = client
        return {}

    async def direct(self, leg: str, sdp: str) -> dict[str, Any]:
        """Answer the publisher's direct offer as leg `leg`."""
        pc = RTCPeerConnection()
        tracks: dict[str, MediaStreamTrack] = {}
        pc.on("track", lambda track: tracks.__setitem__(track.kind, track))
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.legs[leg] = Leg(pc, tracks, None)
        return {"sdp": pc.localDescription.sdp}

    async def snapshot(self, leg: str) -> dict[str, Any]:
        return await self.legs[leg].snapshot()

    async def unwatch(self, leg: str) -> dict[str, Any]:
        await self.legs.pop(leg).close()
        client = self.whep.pop(leg, None)
        if client:
            await client.close()
        return {}

    async def join(self, url: str, count: int, pause: tuple[float, float], seed: int = 1) -> dict[str, Any]:
        """`count` fresh viewers one after another: seconds from the WHEP request to the
        first decoded frame; pauses are random so joins land anywhere in the GOP."""
        rng = random.Random(seed)
        times: list[float] = []
        failures: list[str] = []
        for _ in range(count):
            await asyncio.sleep(rng.uniform(*pause))
            client = WhepClient(url, ice_servers=[])
            try:
                async with asyncio.timeout(JOIN_TIMEOUT):
                    await client.start()
                    while read_stamp(await client.tracks["video"].recv()) is None:
                        pass
                assert client.posted_at is not None
                times.append(time.monotonic() - client.posted_at)
            except (ClientError, TimeoutError, MediaStreamError, KeyError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                await client.close()
        return {"join_s": times, "failures": failures}

    async def crowd(self, url: str, count: int) -> dict[str, Any]:
        """`count` viewers joining at once: seconds from each one's WHEP request to its first whole
        video keyframe, and from its connection (ICE + DTLS up) to that keyframe. Nothing is
        decoded (32 decoders would measure the probe's core, not the server); a keyframe's decode
        adds a few ms to a real viewer's join. The second figure leaves out the crowd's own
        handshakes, which queue on this one process: it is the server's keyframe policy alone."""

        async def one() -> tuple[float, float]:
            client = WhepClient(url, ice_servers=[], encoded=True, timeout=CROWD_TIMEOUT)
            connected_at: list[float] = []

            async def stamp_connection() -> None:
                await client.connected.wait()
                connected_at.append(time.monotonic())

            stamper = asyncio.create_task(stamp_connection())
            try:
                async with asyncio.timeout(CROWD_TIMEOUT):
                    await client.start()
                    await client.encoded["video"].recv()
                now = time.monotonic()
                assert client.posted_at is not None and connected_at
                return now - client.posted_at, now - connected_at[0]
            finally:
                stamper.cancel()
                await client.close()

        outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        joined = [o for o in outcomes if isinstance(o, tuple)]
        return {
            "join_s": [total for total, _ in joined],
            "after_connect_s": [after for _, after in joined],
            "failures": [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)],
        }

    async def close(self) -> None:
        for leg in list(self.legs):
            await self.unwatch(leg)


async def main() -> None:
    loopback_only()
    probe = Probe()
    await serve(
        {"watch": probe.watch, "direct": probe.direct, "snapshot": probe.snapshot,
         "unwatch": probe.unwatch, "join": probe.join, "crowd": probe.crowd},
        probe.close,
    )


if __name__ == "__main__":
    asyncio.run(main())
