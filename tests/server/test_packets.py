"""The packet path end to end, with real aiortc peers: NACK repair, sender reports, flash crowds, reconnects."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtcpSrPacket

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, latency_ms, wall_ms
from relay.media.forwarder import Output
from relay.media.stream import Stream

from ..conftest import RunningRelay, first_stamp, relay_with
from .test_events import next_event
from .test_forwarding import HEIGHT, WIDTH, collect_counters, wait_track

ROOT = Path(__file__).resolve().parents[2]


def drop_rtp(pc: RTCPeerConnection, drop: Callable[[bytes], bool]) -> list[int]:
    """Drop the plain RTP packets `drop` picks, as if the network had lost them; returns the dropped seqs.

    Test-only: wraps the peer connection's (bundled) DTLS transport after SRTP unprotect.
    """
    dtls = pc.getTransceivers()[0].receiver.transport
    receive = dtls._handle_rtp_data
    dropped: list[int] = []

    async def filtered(data: bytes, arrival_time_ms: int) -> None:
        if drop(data):
            dropped.append(int.from_bytes(data[2:4], "big"))
            return
        await receive(data, arrival_time_ms=arrival_time_ms)

    dtls._handle_rtp_data = filtered
    return dropped


def every(n: int, ssrc: Callable[[], int | None], limit: int = 10) -> Callable[[bytes], bool]:
    """Drop every `n`th packet of SSRC `ssrc()` (not its retransmissions), `limit` times."""
    count = [0, 0]

    def drop(data: bytes) -> bool:
        if count[1] >= limit or int.from_bytes(data[8:12], "big") != ssrc():
            return False
        count[0] += 1
        if count[0] % n:
            return False
        count[1] += 1
        return True

    return drop


def and_first_retransmission(drop: Callable[[bytes], bool], rtx_ssrc: Callable[[], int]) -> Callable[[bytes], bool]:
    """`drop`, and also the first RTX retransmission of each media packet it dropped."""
    dropped: set[int] = set()

    def drop_both(data: bytes) -> bool:
        seq = int.from_bytes(data[2:4], "big")
        if int.from_bytes(data[8:12], "big") != rtx_ssrc():
            if drop(data):
                dropped.add(seq)
                return True
            return False
        start = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:
            start += 4 + 4 * int.from_bytes(data[start + 2:start + 4], "big")
        original = int.from_bytes(data[start:start + 2], "big")  # RTX carries the original's seq first
        if original in dropped:
            dropped.discard(original)
            return True
        return False

    return drop_both


def output(stream: Stream, kind: str = "video") -> list[Output]:
    return list(stream.forwarders[kind].outputs)


@pytest.mark.parametrize("leg", ["viewer", "viewer-twice", "publisher", "publisher-twice"])
async def test_lost_packets_are_repaired_without_a_keyframe(leg: str) -> None:
    """Loss toward one viewer is answered from the packet cache; loss from the publisher by Relay's NACK.

    "-twice" loses each retransmission too: only a NACK retry brings the last one (aiortc
    alone asks again only at the next gap, and after the last drop there is none); Relay
    retries toward its publisher, Relay's WhepClient toward Relay. Either way the picture
    goes on with every frame and nobody asks for a keyframe. (The frame assembler's
    hole_wait is long here so a busy test machine's slow NACK round trip is not taken for
    a loss.)
    """
    async with relay_with({"forwarding": {"hole_wait": 1.5}}) as relay:
        await repaired_without_a_keyframe(relay, leg)


async def repaired_without_a_keyframe(relay: RunningRelay, leg: str) -> None:
    video = TestPatternTrack(WIDTH, HEIGHT)
    async with WhipClient(relay.url("/whip/loss"), [video], video_codec="VP8", keyframe_interval=30) as publisher:
        async with WhepClient(relay.url("/whep/loss"), kinds=("video",)) as viewer:
            await wait_track(viewer, "video")
            await collect_counters(viewer, 5)
            stream = relay.ctx.streams.get("loss")
            assert stream is not None and stream.publisher is not None
            await asyncio.sleep(max(0.0, 2.0 - video.frames_sent / 30))  # past the "does it answer?" check
            before = dict(stream.keyframe_reasons)
            if leg.startswith("viewer"):
                (out,) = output(stream)
                media = every(15, lambda: out.ssrc)
                if leg == "viewer-twice":
                    media = and_first_retransmission(media, lambda: out.rtx_ssrc)
                dropped = drop_rtp(viewer.pc, media)
            else:
                tap = stream.tracks["video"]
                media = every(15, lambda: tap.ssrc)
                if leg == "publisher-twice":
                    (sender,) = [s for s in publisher.pc.getSenders() if s.track is video]
                    media = and_first_retransmission(media, lambda: sender._rtx_ssrc)
                dropped = drop_rtp(stream.publisher.pc, media)  # type: ignore[attr-defined]
            counters = await collect_counters(viewer, 120)
            assert len(dropped) >= 5, "the filter dropped nothing"
            assert max(b - a for a, b in zip(counters, counters[1:])) == 1, f"frames lost: {counters}"
            assert stream.keyframe_reasons == before, "a keyframe was requested though the loss was repaired"
            # The newest drop may not be noticed yet: a gap shows when the next packet comes.
            if leg.startswith("viewer"):
                await relay.wait_until(lambda: out.retransmits >= len(dropped), timeout=5)
                assert stream.nacks_received >= len(dropped)
            else:
                await relay.wait_until(lambda: stream.nacks_sent >= len(dropped), timeout=5)


async def test_sender_reports_carry_the_publishers_clock_mapping(relay: RunningRelay) -> None:
    """Each viewer SR is a publisher SR's (NTP, RTP) pair in the viewer's timestamps: A/V sync survives."""
    published: dict[int, list[tuple[int, int]]] = {}
    async with WhipClient(relay.url("/whip/sync"), [TestPatternTrack(WIDTH, HEIGHT), ToneTrack()]) as pub:
        for sender in pub.pc.getSenders():
            send_rtcp = sender._send_rtcp

            async def recorded(packets: list[Any], send_rtcp: Any = send_rtcp) -> None:
                for packet in packets:
                    if isinstance(packet, RtcpSrPacket):
                        info = packet.sender_info
                        published.setdefault(packet.ssrc, []).append((info.ntp_timestamp, info.rtp_timestamp))
                await send_rtcp(packets)

            sender._send_rtcp = recorded
        async with WhepClient(relay.url("/whep/sync")) as viewer:
            await wait_track(viewer, "video")
            received: dict[int, list[tuple[int, int, int, int]]] = {}
            for receiver in viewer.pc.getReceivers():
                handle = receiver._handle_rtcp_packet

                async def capture(packet: Any, handle: Any = handle) -> None:
                    if isinstance(packet, RtcpSrPacket):
                        info = packet.sender_info
                        received.setdefault(packet.ssrc, []).append(
                            (info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count))
                    await handle(packet)

                receiver._handle_rtcp_packet = capture
            await asyncio.sleep(1)
            stream = relay.ctx.streams.get("sync")
            assert stream is not None
            outs = {out.ssrc: out for kind in ("video", "audio") for out in output(stream, kind)}
            pub_ssrc = {kind: stream.tracks[kind].ssrc for kind in ("video", "audio")}
            async with asyncio.timeout(10):
                while len(received) < 2 or min(len(r) for r in received.values()) < 4:
                    await asyncio.sleep(0.1)
            for ssrc, reports in received.items():
                out = outs[ssrc]
                mapping = dict(published[pub_ssrc[out.forwarder.kind]])
                # Only SRs sent before the publisher's first one may carry Relay's own estimate.
                start = next(i for i, r in enumerate(reports) if r[0] in mapping)
                assert len(reports) - start >= 2
                for ntp, rtp, packets, octets in reports[start:]:
                    assert ntp in mapping, "the SR's NTP time is not one the publisher reported"
                    assert rtp == (mapping[ntp] + out.ts_off) & 0xFFFFFFFF, "its RTP time is not the publisher's"
                    assert packets > 0 and octets > packets
                counts = [r[2] for r in reports]
                assert counts == sorted(counts) and counts[-1] > counts[0], "packet counts do not grow"


async def test_a_flash_crowd_is_served_by_one_keyframe(relay: RunningRelay) -> None:
    """Eight viewers at once: one keyframe request at most starts them all (the rest start from the cache)."""
    video = TestPatternTrack(WIDTH, HEIGHT)
    async with WhipClient(relay.url("/whip/crowd"), [video], keyframe_interval=60):
        await asyncio.sleep(2.5)  # past the "does the publisher answer?" check, and its keyframe's recent window
        stream = relay.ctx.streams.get("crowd")
        assert stream is not None and stream.answers_keyframe_requests
        sent = stream.keyframe_requests
        viewers = [WhepClient(relay.url("/whep/crowd"), kinds=("video",)) for _ in range(8)]
        try:
            await asyncio.gather(*(v.start() for v in viewers))
            stamps = await asyncio.gather(*(first_stamp(v) for v in viewers))
            assert all(latency_ms(s) < 5000 for s in stamps)
            assert stream.keyframe_requests - sent <= 2, stream.keyframe_reasons  # one, plus maybe a retry
        finally:
            await asyncio.gather(*(v.close() for v in viewers))


async def spawn_publisher(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "publish", url, "--test-pattern", "--size", f"{WIDTH}x{HEIGHT}",
        "--gop", "1", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=None,
        env={**os.environ, "RELAY_ICE_HOST_ADDRESSES": "127.0.0.1"},
    )


async def test_viewers_stay_across_a_publishers_kill_and_restart() -> None:
    """SIGKILL the publisher, start another on the same name: three viewers decode it without a new POST.

    Meanwhile their event stream says the stream went inactive, then active again.
    """
    async with relay_with({"ice": {"consent_timeout": 2.0}}) as relay:
        url = relay.url("/whip/phoenix")
        first = await spawn_publisher(url)
        second = None
        viewers: list[WhepClient] = []
        http = aiohttp.ClientSession()
        try:
            await relay.wait_until(lambda: (s := relay.ctx.streams.get("phoenix")) is not None and s.live, timeout=20)
            viewers = [WhepClient(relay.url("/whep/phoenix"), kinds=("video",)) for _ in range(3)]
            await asyncio.gather(*(v.start() for v in viewers))
            await asyncio.gather(*(first_stamp(v) for v in viewers))
            stream = relay.ctx.streams.get("phoenix")
            assert stream is not None
            outputs = set(output(stream))
            async with http.post(relay.url("/api/streams/phoenix/events"), json=["active", "inactive"]) as response:
                assert response.status == 201
                events = await http.get(relay.url(response.headers["Location"]))
            assert await next_event(events) == ("active", {})
            first.send_signal(signal.SIGKILL)  # no DELETE, no BYE: ICE consent finds it gone
            await first.wait()
            assert await next_event(events) == ("inactive", {})
            assert stream.watching == 3, "the viewers were dropped with their publisher"
            restarted = wall_ms()
            second = await spawn_publisher(url)
            assert await next_event(events) == ("active", {})
            events.close()
            after = []
            for v in viewers:  # a frame the new publisher sent
                async with asyncio.timeout(20):
                    while True:
                        stamp = await first_stamp(v)
                        if latency_ms(stamp, restarted) <= 0:
                            after.append(stamp)
                            break
            assert len(after) == 3
            assert all(v.pc.connectionState == "connected" for v in viewers)
            assert stream.watching == 3 and set(output(stream)) == outputs, "the viewers' sessions were kept"
        finally:
            for proc in (first, second):
                if proc is not None and proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
            await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
            await http.close()


async def test_a_publisher_back_with_another_codec_ends_the_viewers(relay: RunningRelay) -> None:
    """Nothing is transcoded: viewers that negotiated VP8 cannot take the H.264 of the next publisher."""
    async with WhipClient(relay.url("/whip/swap"), [TestPatternTrack(WIDTH, HEIGHT)], video_codec="VP8"):
        viewer = WhepClient(relay.url("/whep/swap"), kinds=("video",))
        await viewer.start()
        await first_stamp(viewer)
    stream = relay.ctx.streams.get("swap")
    assert stream is not None and not stream.live and len(stream.viewers) == 1, "the viewer waits for a publisher"
    try:
        async with WhipClient(relay.url("/whip/swap"), [TestPatternTrack(WIDTH, HEIGHT)], video_codec="H264"):
            async with asyncio.timeout(10):
                await viewer.ended.wait()
            assert not stream.viewers
    finally:
        await viewer.close()
