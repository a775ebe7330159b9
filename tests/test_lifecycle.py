"""Sessions end on DELETE, on abrupt close and on ICE timeout, and leave nothing behind."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack, read_stamp

from .conftest import RunningRelay, start_relay


def publisher(relay: RunningRelay, name: str = "s") -> WhipClient:
    return WhipClient(relay.url(f"/whip/{name}"), [TestPatternTrack(160, 120), ToneTrack()])


async def first_stamp(viewer: WhepClient) -> int:
    async with asyncio.timeout(10):
        while "video" not in viewer.tracks:
            await asyncio.sleep(0.02)
        while True:
            stamp = read_stamp(await viewer.tracks["video"].recv())
            if stamp:
                return stamp.counter


def live_relay_tasks() -> list[asyncio.Task]:
    """Tasks running code of the relay package (the server's own tasks)."""
    code = lambda t: getattr(t.get_coro(), "cr_code", None)  # noqa: E731
    return [t for t in asyncio.all_tasks() if code(t) and "/relay/" in code(t).co_filename]


def assert_nothing_left(relay: RunningRelay) -> None:
    assert len(relay.ctx.sessions) == 0
    for stream in relay.ctx.streams:  # offline streams stay listed a while, holding nothing
        assert not stream.live and not stream.viewers and not stream.tracks
        assert all(not fanout.sinks for fanout in stream.fanouts.values())
    gc.collect()
    open_pcs = [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"]
    assert open_pcs == []
    assert live_relay_tasks() == []


async def test_delete_publisher_ends_viewers_and_frees_the_name(relay: RunningRelay) -> None:
    pub = publisher(relay)
    await pub.start()
    viewer = WhepClient(relay.url("/whep/s"))
    await viewer.start()
    await first_stamp(viewer)
    assert relay.ctx.streams.get("s").describe()["viewers"] == 1
    assert live_relay_tasks(), "the check below would not see the server's tasks"
    await pub.close()  # DELETE
    async with asyncio.timeout(10):
        try:
            while True:
                await viewer.tracks["video"].recv()
        except MediaStreamError:
            pass  # the viewer learnt that the stream ended
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
    await viewer.close()

    async with publisher(relay):  # the name is free again
        async with WhepClient(relay.url("/whep/s")) as again:
            assert await first_stamp(again) >= 0
    await relay.wait_until(lambda: len(relay.ctx.sessions) == 0)
    await asyncio.sleep(0.1)
    assert_nothing_left(relay)


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
    await asyncio.sleep(0.1)
    assert_nothing_left(relay)


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
        await asyncio.sleep(0.1)
        assert_nothing_left(relay)
    finally:
        await relay.server.close()
