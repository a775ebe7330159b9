"""Data channels through Relay with real aiortc peers: the publisher's data to every viewer, over HTTP too."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack

from ..conftest import (
    RunningRelay,
    assert_nothing_left,
    assert_problem,
    make_offer,
    read_events,
    relay_with,
    request,
)


async def test_publisher_telemetry_reaches_three_viewers_complete_and_in_order() -> None:
    # Five peers share this process's one event loop: on a loaded machine consent replies queue
    # behind a thousand messages' datagrams, so ICE consent gets more time than the default 10 s.
    async with relay_with({"ice": {"consent_timeout": 60}}) as relay:
        await _telemetry(relay)
    await assert_nothing_left(relay)


async def _telemetry(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/bot"), [TestPatternTrack(160, 120, fps=15)],
                          data_channels=["telemetry"]) as publisher:
        # Encoded viewers: nothing decodes, so the one event loop the five peers share keeps up.
        viewers = [WhepClient(relay.url("/whep/bot"), data_channels=["telemetry"], encoded=True) for _ in range(3)]
        try:
            for viewer in viewers:
                await viewer.start()
                await viewer.wait_connected()
            for n in range(1000):  # at a telemetry rate: aiortc sends each message as a datagram of its own
                publisher.send("telemetry", json.dumps({"n": n}))
                if n % 10 == 9:
                    await asyncio.sleep(0.05)
            publisher.send("telemetry", b"\x00\x01binary")
            for viewer in viewers:
                got = [json.loads(await viewer.recv("telemetry"))["n"] for _ in range(1000)]
                assert got == list(range(1000))
                assert await viewer.recv("telemetry") == b"\x00\x01binary"
            frame = await viewers[0].encoded["video"].recv()  # the media went on alongside
            assert frame.data
            data = relay.ctx.streams.get("bot").data
            assert (data.messages_in, data.messages_out, data.dropped) == (1001, 3003, 0)
        finally:
            for viewer in viewers:
                await viewer.close()


async def test_offer_without_data_is_answered_without_it(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/plain"), [TestPatternTrack(160, 120)]):
        response, answer = await request("POST", relay.url("/whep/plain"),
                                          await make_offer("recvonly", kinds=("video",)),
                                          **{"Content-Type": "application/sdp"})
        assert response.status == 201
        assert "m=application" not in answer and "sctp" not in answer
        await request("DELETE", relay.url(response.headers["Location"]))
        async with WhepClient(relay.url("/whep/plain"), data_channels=["x"]) as viewer:
            assert viewer.pc is not None
            assert "m=application" in viewer.pc.remoteDescription.sdp


async def test_http_data_post_reaches_channels_and_event_streams() -> None:
    tokens = {"auth": {"publish_token": "pub", "view_token": "see"}}
    async with relay_with(tokens) as relay:
        async with WhipClient(relay.url("/whip/s"), [TestPatternTrack(160, 120)], token="pub"), \
                WhepClient(relay.url("/whep/s"), token="see", data_channels=["score"]) as viewer:
            await viewer.wait_connected()
            url = relay.url("/api/streams/s/data/score")
            response, body = await request("GET", url)
            assert_problem(response, body, 401, "view token")
            response, body = await request("POST", url, "1:0", **{"Content-Type": "text/plain"})
            assert_problem(response, body, 401, "publish token")
            async with aiohttp.ClientSession() as http:
                async with http.get(url, headers={"Authorization": "Bearer see"}) as events:
                    assert events.headers["Content-Type"] == "text/event-stream"
                    await asyncio.sleep(0.2)  # the reader is registered once its response started
                    for body, kind in (("1:0", "text/plain"), ('{"home": 2}', "application/json"),
                                       (b"\xff\x00", "application/octet-stream"), ("a\nb", "text/plain")):
                        response, text = await request("POST", url, body, Authorization="Bearer pub",
                                                       **{"Content-Type": kind})
                        assert response.status == 204, text
                    assert await read_events(events, 4) == [
                        ("message", "1:0"), ("message", '{"home": 2}'),
                        ("binary", base64.b64encode(b"\xff\x00").decode()), ("message", "a\nb")]
            assert [await viewer.recv("score") for _ in range(4)] == ["1:0", '{"home": 2}', b"\xff\x00", "a\nb"]
            response, body = await request("POST", url, "x", Authorization="Bearer pub",
                                           **{"Content-Type": "image/png"})
            assert_problem(response, body, 415, "octet-stream")
            response, body = await request("POST", url, "x" * 70_000, Authorization="Bearer pub",
                                           **{"Content-Type": "text/plain"})
            assert_problem(response, body, 413, "65536 bytes")
            response, body = await request("POST", relay.url("/api/streams/s/data/chat"), "x",
                                           Authorization="Bearer pub", **{"Content-Type": "text/plain"})
            assert_problem(response, body, 400, "/chat")
