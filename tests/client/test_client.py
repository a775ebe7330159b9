"""WhipClient and WhepClient against Relay and against small fake servers that check the protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import av
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.client import ClientError, SessionError, WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, latency_ms, psnr, read_stamp

from ..conftest import RunningRelay, poll_until

WIDTH, HEIGHT = 320, 240


@dataclass
class Fake:
    """A scripted WHIP/WHEP server that records what it was sent."""

    server: TestServer
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    peers: list[RTCPeerConnection] = field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.requests]

    async def answer(self, offer: str) -> str:
        pc = RTCPeerConnection()
        self.peers.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp


Handler = Callable[[web.Request, Fake], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[Fake]]]:
    fakes: list[Fake] = []

    async def start(handlers: dict[str, Handler]) -> Fake:
        """`handlers` by "METHOD /path"; every request is recorded first."""
        app = web.Application()
        fake = Fake(TestServer(app, host="127.0.0.1"))

        async def dispatch(request: web.Request) -> web.StreamResponse:
            fake.requests.append((request.method, request.path, dict(request.headers)))
            handler = handlers.get(f"{request.method} {request.path}")
            return await handler(request, fake) if handler else web.Response(status=200)

        app.router.add_route("*", "/{tail:.*}", dispatch)
        await fake.server.start_server()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        for pc in fake.peers:
            await pc.close()
        await fake.server.close()


async def test_pattern_arrives_decoded_and_encoded_with_its_stamps(relay: RunningRelay) -> None:
    video = TestPatternTrack(WIDTH, HEIGHT, fps=30)
    async with WhipClient(relay.url("/whip/s"), [video, ToneTrack()], video_bitrate=300_000,
                          keyframe_interval=0.25) as publisher:
        assert publisher.codecs == {"video": "VP8", "audio": "opus"}
        async with WhepClient(relay.url("/whep/s")) as decoded, \
                WhepClient(relay.url("/whep/s"), encoded=True) as encoded:
            track = await decoded.wait_track("video")
            counters, latencies = [], []
            async with asyncio.timeout(10):
                while len(counters) < 30:
                    frame = await track.recv()
                    stamp = read_stamp(frame)
                    assert stamp is not None and psnr(frame, stamp.counter) > 25
                    counters.append(stamp.counter)
                    latencies.append(latency_ms(stamp))
            assert counters == sorted(counters) and counters[-1] - counters[0] <= 32
            assert 0 <= min(latencies) and max(latencies) < 500

            assert encoded.codecs == {"video": "VP8", "audio": "opus"}
            frames, tones = [], []
            loop = asyncio.get_running_loop()
            until = loop.time() + 3
            async with asyncio.timeout(10):
                while loop.time() < until:
                    frames.append(await encoded.encoded["video"].recv())
                while len(tones) < 50:
                    tones.append(await encoded.encoded["audio"].recv())

    assert frames[0].keyframe, "an encoded viewer must start on a keyframe"
    decoder = av.CodecContext.create("vp8", "r")
    stamps = [read_stamp(p) for f in frames for p in decoder.decode(av.Packet(f.data))]
    assert len(stamps) == len(frames) and None not in stamps
    steps = [b.counter - a.counter for a, b in zip(stamps, stamps[1:])]
    assert steps == [1] * len(steps), "encoded frames were skipped or reordered"
    keyframes = [f.timestamp for f in frames if f.keyframe]
    spacing = [(b - a) / 90000 for a, b in zip(keyframes, keyframes[1:])]
    assert len(spacing) >= 8 and max(spacing) <= 0.3, f"keyframe_interval=0.25 not honoured: {spacing}"
    seconds = (frames[-1].timestamp - frames[0].timestamp) / 90000
    kbps = sum(len(f.data) for f in frames) * 8 / seconds / 1000
    assert kbps < 360, f"video_bitrate=300k not honoured: {kbps:.0f} kbps"
    assert {b.timestamp - a.timestamp for a, b in zip(tones, tones[1:])} == {960}
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)


async def test_offline_stream_is_a_session_error_with_the_problem_detail(relay: RunningRelay) -> None:
    viewer = WhepClient(relay.url("/whep/nobody"))
    with pytest.raises(SessionError) as raised:
        await viewer.start()
    error = raised.value
    assert (error.status, error.retry_after) == (409, 2)
    assert "no live publisher" in error.detail and str(error).startswith("HTTP 409 Conflict: stream")
    assert viewer.location is None and len(relay.ctx.sessions) == 0


async def test_token_ice_servers_location_trickle_and_delete(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def options(request: web.Request, fake: Fake) -> web.Response:
        return web.Response(status=204, headers={"Link": '<stun:127.0.0.1:9>; rel="ice-server"'})

    async def post(request: web.Request, fake: Fake) -> web.Response:
        answer = await fake.answer(await request.text())
        headers = {"Location": "sessions/1", "ETag": '"v1"', "Accept-Patch": "application/trickle-ice-sdpfrag",
                   "Link": '<turn:127.0.0.1:9?transport=udp>; rel="ice-server"; username="u"; credential="c"'}
        return web.Response(status=201, text=answer, content_type="application/sdp", headers=headers)

    fake = await fake_server({"OPTIONS /whip/x": options, "POST /whip/x": post})
    client = WhipClient(fake.url("/whip/x"), [TestPatternTrack(WIDTH, HEIGHT)], token="s3cret")
    await client.start()
    assert [s.urls for s in client.ice_servers_used] == ["stun:127.0.0.1:9"]
    assert [(s.urls, s.username, s.credential) for s in client.ice_servers] == [
        ("turn:127.0.0.1:9?transport=udp", "u", "c")]
    assert client.location == fake.url("/whip/sessions/1")
    assert await client.trickle(["candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"])
    await client.close()
    assert [(m, p) for m, p, _ in fake.requests] == [
        ("OPTIONS", "/whip/x"), ("POST", "/whip/x"), ("PATCH", "/whip/sessions/1"), ("DELETE", "/whip/sessions/1")]
    assert {h.get("Authorization") for _, _, h in fake.requests} == {"Bearer s3cret"}
    patch = fake.requests[2][2]
    assert patch["If-Match"] == '"v1"' and patch["Content-Type"] == "application/trickle-ice-sdpfrag"


async def test_cancelled_start_still_deletes_the_session(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def slow_post(request: web.Request, fake: Fake) -> web.Response:
        await asyncio.sleep(0.5)  # a slow server: the session exists before the client hears of it
        return web.Response(status=201, text="v=0\r\n", content_type="application/sdp",
                            headers={"Location": "/whip/x/abc"})

    fake = await fake_server({"POST /whip/x": slow_post})
    client = WhipClient(fake.url("/whip/x"), [TestPatternTrack(WIDTH, HEIGHT)], ice_servers=[])
    task = asyncio.create_task(client.start())
    await poll_until(lambda: fake.methods() == ["POST"], timeout=5)  # cancelled while the server holds the POST
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.methods() == ["POST", "DELETE"] and fake.requests[1][1] == "/whip/x/abc"
    assert client.pc is not None and client.pc.connectionState == "closed"


async def test_unusable_answer_raises_and_deletes(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def post(request: web.Request, fake: Fake) -> web.Response:
        return web.Response(status=201, text="v=0\r\nnot an answer\r\n", content_type="application/sdp",
                            headers={"Location": "/whep/x/1"})

    fake = await fake_server({"POST /whep/x": post})
    with pytest.raises(ClientError, match="cannot be used"):
        async with WhepClient(fake.url("/whep/x"), ice_servers=[]):
            pass
    assert fake.methods() == ["POST", "DELETE"]


async def test_307_is_followed_and_location_resolved_against_the_target(
    relay: RunningRelay, fake_server  # type: ignore[no-untyped-def]
) -> None:
    async def moved(request: web.Request, fake: Fake) -> web.Response:
        return web.Response(status=307, headers={"Location": relay.url("/whip/moved")})

    fake = await fake_server({"POST /whip/moved": moved})
    async with WhipClient(fake.url("/whip/moved"), [TestPatternTrack(WIDTH, HEIGHT)], ice_servers=[]) as client:
        assert client.location is not None and client.location.startswith(relay.url("/whip/moved/"))
        await client.wait_connected()
        assert relay.ctx.streams.get("moved").live
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)


async def test_whep_counter_offer_is_answered_by_patch(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def counter_offer(request: web.Request, fake: Fake) -> web.Response:
        pc = RTCPeerConnection()
        fake.peers.append(pc)
        pc.addTransceiver(TestPatternTrack(WIDTH, HEIGHT), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return web.Response(status=406, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": "/whep/x/1"})

    async def patch(request: web.Request, fake: Fake) -> web.Response:
        assert request.content_type == "application/sdp"
        await fake.peers[0].setRemoteDescription(RTCSessionDescription(await request.text(), "answer"))
        return web.Response(status=204)

    fake = await fake_server({"POST /whep/x": counter_offer, "PATCH /whep/x/1": patch})
    async with WhepClient(fake.url("/whep/x"), ice_servers=[]) as viewer:
        assert viewer.codecs["video"] == "VP8"
        track = await viewer.wait_track("video")
        async with asyncio.timeout(10):
            stamp = read_stamp(await track.recv())
        assert stamp is not None
        assert not await viewer.trickle(["candidate:1 1 udp 1 127.0.0.1 9 typ host"]), \
            "the server did not advertise trickle ICE"
    assert fake.methods() == ["POST", "PATCH", "DELETE"]


def test_packets_need_a_named_codec() -> None:
    with pytest.raises(ValueError, match="name the codec"):
        WhipClient("http://127.0.0.1:9/whip/x", [], packets=("video",))
    with pytest.raises(ValueError, match="cannot send video as AV1"):
        WhipClient("http://127.0.0.1:9/whip/x", [], video_codec="AV1")

