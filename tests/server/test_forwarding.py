"""Publisher -> Relay -> viewers with real aiortc peers over loopback."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, psnr, read_stamp
from relay.media import aiortc_patch

from ..conftest import RunningRelay, start_relay

WIDTH, HEIGHT = 320, 240


async def collect_counters(viewer: WhepClient, count: int, timeout: float = 15.0) -> list[int]:
    """Decode `count` frames; check every one is the pattern frame its stamp names."""
    counters = []
    async with asyncio.timeout(timeout):
        while len(counters) < count:
            frame = await viewer.tracks["video"].recv()
            stamp = read_stamp(frame)
            assert stamp is not None, "a decoded frame carries no readable stamp"
            assert (frame.width, frame.height) == (WIDTH, HEIGHT)
            assert psnr(frame, stamp.counter) > 25, "decoded pixels differ from what was sent"
            counters.append(stamp.counter)
    return counters


async def wait_track(viewer: WhepClient, kind: str) -> None:
    async with asyncio.timeout(10):
        while kind not in viewer.tracks:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_three_viewers_and_a_late_joiner_see_the_pattern(relay: RunningRelay, codec: str) -> None:
    video = TestPatternTrack(WIDTH, HEIGHT, fps=30)
    async with WhipClient(relay.url("/whip/cam"), [video, ToneTrack()], video_codec=codec):
        viewers = [WhepClient(relay.url("/whep/cam")) for _ in range(3)]
        for viewer in viewers:
            await viewer.start()
        try:
            for viewer in viewers:
                await wait_track(viewer, "video")
            results = await asyncio.gather(*(collect_counters(v, 30) for v in viewers))
            for counters in results:
                assert counters == sorted(counters), "frames arrived out of order"
                assert counters[-1] - counters[0] >= 29, "the counter did not advance"
                gaps = [b - a for a, b in zip(counters, counters[1:])]
                assert max(gaps) <= 3, f"frames skipped: {gaps}"
            assert relay.ctx.streams.get("cam").tracks["video"].codec == codec

            seen = max(counters[-1] for counters in results)
            await relay.wait_until(lambda: video.frames_sent >= seen + 90)  # three seconds later
            async with WhepClient(relay.url("/whep/cam")) as late:
                loop = asyncio.get_running_loop()
                joined = loop.time()
                await wait_track(late, "video")
                counters = await collect_counters(late, 5, timeout=5)
                assert counters[0] >= 90, "the late joiner got old frames (this publisher answers PLI)"
                assert loop.time() - joined < 3
        finally:
            for viewer in viewers:
                await viewer.close()
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)


async def test_opus_audio_arrives(relay: RunningRelay) -> None:
    tone = ToneTrack()
    async with WhipClient(relay.url("/whip/mic"), [tone]):
        async with WhepClient(relay.url("/whep/mic"), kinds=("audio",)) as viewer:
            await wait_track(viewer, "audio")
            async with asyncio.timeout(10):
                frames = [await viewer.tracks["audio"].recv() for _ in range(50)]
            assert all(f.sample_rate == 48000 for f in frames)
            samples = [abs(int(f.to_ndarray().astype("int32").max())) for f in frames[-20:]]
            assert max(samples) > 1000, "the tone arrived as silence"
            assert relay.ctx.streams.get("mic").tracks["audio"].codec == "opus"


async def test_viewer_pli_reaches_the_publisher_rate_limited(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/k"), [TestPatternTrack(WIDTH, HEIGHT)]):
        async with WhepClient(relay.url("/whep/k"), kinds=("video",)) as viewer:
            await wait_track(viewer, "video")
            await collect_counters(viewer, 3)
            stream = relay.ctx.streams.get("k")
            receiver = viewer.pc.getReceivers()[0]
            ssrc = receiver.getSynchronizationSources()[0].source
            sent_before = stream.keyframe_requests
            for _ in range(5):  # a burst of PLIs becomes at most two requests upstream
                await aiortc_patch.send_pli(receiver, ssrc)
            # the first request goes up at once, or at most the 500 ms spacing late
            await relay.wait_until(lambda: stream.keyframe_reasons.get("viewer PLI/FIR") == 5
                                   and stream.keyframe_requests > sent_before, timeout=0.6)
            await asyncio.sleep(1.2)  # absence: no third request over two more 500 ms spacings
            assert stream.keyframe_reasons.get("viewer PLI/FIR") == 5
            assert 1 <= stream.keyframe_requests - sent_before <= 2


async def test_ice_servers_are_advertised_in_link_headers() -> None:
    relay = await start_relay({"ice": {"servers": [
        {"urls": ["stun:stun.example.test:3478"]},
        {"urls": ["turn:turn.example.test:3478?transport=udp"], "username": "u", "credential": "p"},
    ]}})
    try:
        # the server's own peers would try these servers: publish nothing, just read the headers
        async with WhipClient(relay.url("/whip/l"), [ToneTrack()]) as pub:
            assert "a=setup:passive" in pub.pc.remoteDescription.sdp  # Relay is the DTLS server
            links = pub.links
            servers = pub.ice_servers
        assert '<stun:stun.example.test:3478>; rel="ice-server"' in links
        async with aiohttp.ClientSession() as http:  # a plain OPTIONS tells them before the offer
            async with http.options(relay.url("/whip/l")) as response:
                assert response.headers.getall("Link") == links
            preflight = {"Access-Control-Request-Method": "POST"}
            async with http.options(relay.url("/whip/l"), headers=preflight) as response:
                assert "Link" not in response.headers  # never on a CORS preflight
        assert [(s.urls, s.username, s.credential) for s in servers] == [
            ("stun:stun.example.test:3478", None, None),
            ("turn:turn.example.test:3478?transport=udp", "u", "p"),
        ]
    finally:
        await relay.server.close()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_a_viewer_starts_from_the_gop_when_the_publisher_ignores_keyframe_requests(
    relay: RunningRelay, codec: str
) -> None:
    video = TestPatternTrack(WIDTH, HEIGHT)
    async with WhipClient(relay.url("/whip/gop"), [video, ToneTrack()], video_codec=codec,
                          keyframe_interval=4.0) as pub:
        for sender in pub.pc.getSenders():  # like an encoder with a fixed keyframe interval
            aiortc_patch.on_keyframe_request(sender, lambda: None)
        await asyncio.sleep(3.5)  # late in the GOP: the next keyframe is 0.5 s away, 100+ frames replay
        loop = asyncio.get_running_loop()
        async with WhepClient(relay.url("/whep/gop"), kinds=("video",)) as viewer:
            joined = loop.time()
            await wait_track(viewer, "video")
            counters = await collect_counters(viewer, 1)
            assert loop.time() - joined < 0.45, "the viewer waited for the publisher's next keyframe"
            assert counters[0] < 10, "the first picture is the GOP's keyframe"
            counters += await collect_counters(viewer, video.frames_sent - counters[-1] + 10)
            assert max(b - a for a, b in zip(counters, counters[1:])) <= 3, "the replay lost frames"
            assert video.frames_sent - counters[-1] < 15, "the viewer stayed behind live after the replay"
            assert "viewer joined" not in relay.ctx.streams.get("gop").keyframe_reasons
