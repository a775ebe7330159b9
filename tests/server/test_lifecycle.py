"""Sessions end on DELETE, on abrupt close and on ICE timeout, and leave nothing behind."""

from __future__ import annotations

import asyncio

import aiohttp
from aiortc import RTCPeerConnection

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, latency_ms, wall_ms

from ..conftest import (
    RunningRelay,
    assert_nothing_left,
    first_stamp,
    live_relay_tasks,
    relay_with,
    start_relay,
    wait_ended,
)


def publisher(relay: RunningRelay, name: str = "s", video: TestPatternTrack | None = None) -> WhipClient:
    return WhipClient(relay.url(f"/whip/{name}"), [video or TestPatternTrack(160, 120), ToneTrack()])


async def test_delete_publisher_ends_viewers_and_frees_the_name() -> None:
    """Without a reconnect grace the viewers end with the publisher (test_packets: with one, they stay)."""
    async with relay_with({"forwarding": {"reconnect_grace": 0}}) as relay:
        await delete_publisher_ends_viewers(relay)


async def delete_publisher_ends_viewers(relay: RunningRelay) -> None:
    pub = publisher(relay)
    await pub.start()
    viewer = WhepClient(relay.url("/whep/s"))
    await viewer.start()
    await first_stamp(viewer)
    assert relay.ctx.streams.get("s").describe()["viewers"] == 1
    assert live_relay_tasks(), "the check below would not see the server's tasks"
    await pub.close()  # DELETE
    async with asyncio.timeout(10):
        await wait_ended(viewer)  # the viewer learnt that the stream ended
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
    await viewer.close()

    video, restarted = TestPatternTrack(160, 120), wall_ms()
    async with publisher(relay, video=video):  # the name is free again
        async with WhepClient(relay.url("/whep/s")) as again:
            stamp = await first_stamp(again)
            # a frame of the new publisher (sent since it started), not one left over from the old
            assert stamp.counter < video.frames_sent and latency_ms(stamp, restarted) <= 0, stamp
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
    await assert_nothing_left(relay)


async def test_abrupt_close_without_delete(relay: RunningRelay) -> None:
    async with publisher(relay) as pub:
        viewer = WhepClient(relay.url("/whep/s"))
        await viewer.start()
        await first_stamp(viewer)
        await viewer.pc.close()  # gone without DELETE
        await relay.wait_until(lambda: relay.ctx.sessions.count("whep") == 0)
        viewer.location = None
        await viewer.close()
        await pub.pc.close()  # the publisher vanishes too
        await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
        assert not relay.ctx.streams.get("s") or not relay.ctx.streams.get("s").live
        async with aiohttp.ClientSession() as http:  # its late DELETE still gets a 200
            async with http.delete(pub.location) as response:
                assert response.status == 200
    await assert_nothing_left(relay)


async def test_session_whose_ice_never_connects_is_dropped() -> None:
    relay = await start_relay({"ice": {"connect_timeout": 1.0}})
    try:
        pc = RTCPeerConnection()
        pc.addTransceiver(TestPatternTrack(160, 120), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(relay.url("/whip/t"), data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as response:
                assert response.status == 201  # the client never applies the answer
        assert len(relay.ctx.sessions) == 1
        await relay.wait_until(lambda: len(relay.ctx.sessions) == 0, timeout=5)
        assert not relay.ctx.streams.get("t").live
        await pc.close()
        await assert_nothing_left(relay)
    finally:
        await relay.server.close()
