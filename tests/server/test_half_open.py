"""Sessions that POST and never connect hold no seat, no stream name and no 'live'."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import first_stamp, make_offer, relay_with

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 27)]  # 25 flooding addresses; real peers use 127.0.0.1
SDP = {"Content-Type": "application/sdp"}


async def flood(url: str, offer: str, per_address: int, names: list[str] | None = None) -> Counter[int]:
    """POST `per_address` offers from each flooding address; their peers never start ICE."""

    async def one(address: str, n: int) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            target = url + names[n % len(names)] if names else url
            async with http.post(target, data=offer, headers=SDP) as response:
                return response.status

    posts = [address for address in ADDRESSES for _ in range(per_address)]
    statuses = await asyncio.gather(*(one(address, n) for n, address in enumerate(posts)))
    return Counter(statuses)


async def test_half_open_viewers_take_no_seat_and_are_released() -> None:
    settings = {"ice": {"connect_timeout": 3.0}, "limits": {"max_viewers_per_stream": 150}}
    async with relay_with(settings) as running:
        async with WhipClient(running.url("/whip/s"), [TestPatternTrack(160, 120), ToneTrack()],
                              video_codec="VP8"):
            statuses = await flood(running.url("/whep/s"), await make_offer("recvonly"), per_address=12)
            # 8 pending per address are taken, the rest refused: 200 half-open sessions in all
            assert statuses == {201: 25 * 8, 503: 25 * 4}, statuses
            stream = running.ctx.streams.get("s")
            assert stream is not None and stream.watching == 0 and len(stream.viewers) == 200
            assert running.ctx.sessions.pending_total == 200

            # 200 pending > 150 seats, yet a real viewer gets in and is counted
            async with WhepClient(running.url("/whep/s")) as viewer:
                await first_stamp(viewer)  # decodes the pattern
                await running.wait_until(lambda: stream.watching == 1)
                info = stream.describe()
                assert info["viewers"] == 1
                # the half-open ones end after ice.connect_timeout and give everything back
                await running.wait_until(lambda: running.ctx.sessions.pending_total == 0, timeout=10)
                assert running.ctx.sessions.count("whep") == 1 and len(stream.viewers) == 1


async def test_half_open_publishers_squat_no_name() -> None:
    settings = {"ice": {"connect_timeout": 3.0}, "limits": {"max_streams": 20}}
    async with relay_with(settings) as running:
        names = [f"squat{i}" for i in range(10)]
        statuses = await flood(running.url("/whip/"), await make_offer(), per_address=1, names=names)
        assert statuses[201] == 10 and statuses[409] == 15, statuses  # one claim per name; none replaced yet
        # claimed, but not live: viewers are told it is offline, and the slots stay free
        for name in names:
            assert not running.ctx.streams.get(name).live
        async with aiohttp.ClientSession() as http:
            async with http.get(running.url("/api/streams/squat0")) as response:
                assert (await response.json())["live"] is False
            async with http.post(running.url("/whep/squat0"), data=await make_offer("recvonly"),
                                 headers=SDP) as response:
                assert response.status == 409
        # a real publisher gets a free name at once, and a squatted one once the squatter stays silent
        async with WhipClient(running.url("/whip/real"), [ToneTrack()]):
            assert running.ctx.streams.get("real").live
        async with WhipClient(running.url("/whip/squat1"), [ToneTrack()]) as taker:
            assert running.ctx.streams.get("squat1").live
            assert taker.location is not None
        await running.wait_until(lambda: running.ctx.sessions.pending_total == 0, timeout=10)
        assert not any(stream.live for stream in running.ctx.streams)
