"""Cheap load viewers: real WHEP, ICE and DTLS, then counting SRTP without decrypting.

A stock aiortc receiver costs about 100 us per packet, more than Relay's
send path, so viewers built on it would measure themselves. Once connected,
a load viewer takes its ICE socket from aiortc (`bench.media_socket.take_media_socket`)
and a poller drains every socket of the process every few milliseconds. RTP
headers are in the clear in SRTP, so it counts packets, bytes, video frames
(marker bits) and sequence gaps per payload type; it decrypts one packet in
`SAMPLE_EVERY` to prove the stream is authentic SRTP, and hands STUN (consent),
DTLS and RTCP back to aiortc. It sends no RTCP feedback (no NACK, PLI, REMB),
so the server's cost is its send path alone.
Run by `bench.measure` as `python -m bench.loadgen`; requests on stdin.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import pylibsrtp
from aiortc.sdp import SessionDescription

from relay.client import WhepClient

from .media_socket import MediaSocket, take_media_socket
from .peers import loopback_only
from .proc import serve

SAMPLE_EVERY = 64
POLL_SECONDS = 0.02
CONNECT_TIMEOUT = 30.0
MAX_DATAGRAM = 2048


@dataclass
class Counts:
    video_packets: int = 0
    audio_packets: int = 0
    bytes: int = 0
    video_frames: int = 0  # RTP marker bits on video: one per frame
    lost: int = 0  # sequence-number gaps
    sampled: int = 0
    authentic: int = 0  # sampled packets that SRTP-decrypted and authenticated

    def add(self, other: Counts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def payload_kinds(sdp: str) -> dict[int, str]:
    """Payload type -> "audio"/"video", from the server's answer."""
    return {
        codec.payloadType: media.kind
        for media in SessionDescription.parse(sdp).media
        for codec in media.rtp.codecs
    }


class LoadViewer:
    def __init__(self, url: str) -> None:
        self.client = WhepClient(url, ice_servers=[], timeout=CONNECT_TIMEOUT)
        self.counts = Counts()
        self.media: MediaSocket | None = None
        self._kinds: dict[int, str] = {}
        self._last_seq: dict[int, int] = {}
        self._until_sample = SAMPLE_EVERY
        self._buf = bytearray(MAX_DATAGRAM)

    async def start(self) -> None:
        await self.client.start()
        await self.client.wait_connected()
        assert self.client.pc is not None
        self._kinds = payload_kinds(self.client.pc.remoteDescription.sdp)
        self.media = take_media_socket(self.client.pc)

    def drain(self) -> None:
        """Count every datagram waiting on the socket; the hot loop of the load generator."""
        media = self.media
        if media is None:
            return
        recv, buf = media.sock.recvfrom_into, self._buf
        counts, kinds, last_seq = self.counts, self._kinds, self._last_seq
        while True:
            try:
                size, addr = recv(buf)
            except (BlockingIOError, OSError):
                return
            first, second = buf[0], buf[1]
            if not 127 < first < 192 or 191 < second < 224:  # STUN, DTLS or RTCP
                media.deliver(bytes(buf[:size]), addr)
                continue
            pt = second & 0x7F
            seq = buf[2] << 8 | buf[3]
            last = last_seq.get(pt)
            gap = 0 if last is None else (seq - last - 1) & 0xFFFF
            if gap < 0x8000:  # otherwise a late or repeated packet
                counts.lost += gap
                last_seq[pt] = seq
            counts.bytes += size
            if kinds.get(pt) == "video":
                counts.video_packets += 1
                counts.video_frames += second >> 7
            else:
                counts.audio_packets += 1
            self._until_sample -= 1
            if not self._until_sample:
                self._until_sample = SAMPLE_EVERY
                counts.sampled += 1
                try:
                    media.unprotect(bytes(buf[:size]))
                    counts.authentic += 1
                except pylibsrtp.Error:
                    pass

    async def close(self) -> None:
        self.drain()
        await self.client.close()
        if self.media:
            self.media.sock.close()


class LoadGen:
    """The load viewers of one process, all drained by one poller task."""

    def __init__(self) -> None:
        self.viewers: list[LoadViewer] = []
        self._retired = Counts()
        self._last_video: dict[int, int] = {}
        self._poller: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            for viewer in self.viewers:
                viewer.drain()
            await asyncio.sleep(POLL_SECONDS)

    async def set(self, url: str, viewers: int, concurrency: int = 8) -> dict[str, Any]:
        """Connect or close viewers of `url` until there are `viewers`."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        while len(self.viewers) > viewers:
            await self._retire(self.viewers.pop())
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def join() -> None:
            viewer = LoadViewer(url)
            async with gate:
                try:
                    await viewer.start()
                except Exception as exc:  # counted and reported: a saturated server refuses or times out
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await viewer.client.close()
                    return
            self.viewers.append(viewer)

        await asyncio.gather(*(join() for _ in range(viewers - len(self.viewers))))
        return {"viewers": len(self.viewers), "failed": len(errors), "errors": errors[:3]}

    async def _retire(self, viewer: LoadViewer) -> None:
        await viewer.close()
        self._retired.add(viewer.counts)
        self._last_video.pop(id(viewer), None)

    async def stats(self) -> dict[str, Any]:
        """Totals since start (closed viewers included), and how many viewers got no
        video since the previous call."""
        total = Counts()
        total.add(self._retired)
        silent = 0
        for viewer in self.viewers:
            viewer.drain()
            total.add(viewer.counts)
            silent += self._last_video.get(id(viewer), -1) == viewer.counts.video_packets
            self._last_video[id(viewer)] = viewer.counts.video_packets
        return {"viewers": len(self.viewers), "silent": silent, **dataclasses.asdict(total)}

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
        await asyncio.gather(*(self._retire(v) for v in self.viewers), return_exceptions=True)
        self.viewers.clear()


async def main() -> None:
    loopback_only()
    load = LoadGen()
    await serve({"set": load.set, "stats": load.stats}, load.close)


if __name__ == "__main__":
    asyncio.run(main())
