"""Edge mode with real processes over loopback: an origin, an edge pulling from it, viewers on the edge."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import (
    RelayProcess,
    assert_problem,
    first_stamp,
    make_offer,
    poll_until,
    request,
    spawn_relay,
    wait_ended,
)


def streams(server: RelayProcess) -> dict[str, dict[str, Any]]:
    """/api/streams by name (read with a blocking call: it is quick, and keeps polls simple)."""
    with urllib.request.urlopen(server.url("/api/streams"), timeout=5) as response:
        return {s["name"]: s for s in json.load(response)["streams"]}


def viewers(server: RelayProcess, name: str) -> int | None:
    stream = streams(server).get(name)
    return stream["viewers"] if stream and stream["live"] else None


def start_edge(tmp_path: Path, origin: RelayProcess, settings: dict[str, Any] | None = None) -> RelayProcess:
    (tmp_path / "edge").mkdir(exist_ok=True)
    return spawn_relay(tmp_path / "edge", {"origin": {"url": origin.url(""), **(settings or {})}})


def start_origin(tmp_path: Path, settings: dict[str, Any] | None = None, port: int | None = None) -> RelayProcess:
    (tmp_path / "origin").mkdir(exist_ok=True)
    return spawn_relay(tmp_path / "origin", {**(settings or {}), **({"server": {"port": port}} if port else {})})


async def test_three_viewers_on_an_edge_see_the_pattern_and_the_origin_sees_one(tmp_path: Path) -> None:
    origin = start_origin(tmp_path)
    edge = start_edge(tmp_path, origin, {"linger": 3.0})
    video = TestPatternTrack(320, 240)
    viewers_: list[WhepClient] = []
    try:
        async with WhipClient(origin.url("/whip/cam"), [video, ToneTrack()], video_codec="H264"):
            viewers_ = [WhepClient(edge.url("/whep/cam")) for _ in range(3)]
            await asyncio.gather(*(v.start() for v in viewers_))
            stamps = await asyncio.gather(*(first_stamp(v) for v in viewers_))  # a joiner may start at frame 0
            later = await asyncio.gather(*(first_stamp(v) for v in viewers_))
            assert all(b.counter > a.counter for a, b in zip(stamps, later, strict=True)), (stamps, later)
            await poll_until(lambda: viewers(edge, "cam") == 3, timeout=10, interval=0.2)
            assert viewers(origin, "cam") == 1, "the origin serves the edge's one pull, whatever its viewers"
            assert streams(edge)["cam"]["video"]["codec"] == "H264", "the edge carries the publisher's codec"
            assert all(v.codecs["video"] == "H264" for v in viewers_)

            # A late joiner on the edge gets a picture and reaches the live one: a fresh keyframe (its PLI
            # reached the publisher) or, if the edge judged the origin slow to answer, the GOP fast-forwarded.
            await asyncio.sleep(3)
            async with WhepClient(edge.url("/whep/cam"), kinds=("video",)) as late:
                async with asyncio.timeout(10):
                    while (await first_stamp(late)).counter < video.frames_sent - 15:
                        pass

            await asyncio.gather(*(v.close() for v in viewers_))
            assert viewers(origin, "cam") == 1, "the pull lingers after the last viewer left"
            await poll_until(lambda: viewers(origin, "cam") == 0, timeout=15, interval=0.2)
            await poll_until(lambda: viewers(edge, "cam") is None, timeout=5, interval=0.2)
    finally:
        await asyncio.gather(*(v.close() for v in viewers_))
        assert edge.stop() == 0 and origin.stop() == 0


async def test_origin_restart_tells_the_edge_viewers_and_a_new_join_pulls_again(tmp_path: Path) -> None:
    origin = start_origin(tmp_path)
    edge = start_edge(tmp_path, origin, {"linger": 0.0})
    spawned = [edge, origin]
    try:
        async with WhipClient(origin.url("/whip/cam"), [TestPatternTrack(320, 240)]) as publisher:
            async with WhepClient(edge.url("/whep/cam"), kinds=("video",)) as viewer:
                await first_stamp(viewer)
                origin.stop(signal.SIGKILL)  # no goodbye: the edge notices when ICE consent fails
                async with asyncio.timeout(25):
                    await wait_ended(viewer)
            await publisher.close()
        origin = start_origin(tmp_path, port=origin.port)
        spawned.append(origin)
        async with WhipClient(origin.url("/whip/cam"), [TestPatternTrack(320, 240)]):
            await poll_until(lambda: viewers(origin, "cam") == 0, timeout=10, interval=0.2)
            async with WhepClient(edge.url("/whep/cam"), kinds=("video",)) as viewer:
                await first_stamp(viewer)
                assert viewers(origin, "cam") == 1
                origin.stop()  # a clean shutdown closes the pull at once
                async with asyncio.timeout(5):
                    await wait_ended(viewer)
    finally:
        for server in spawned:
            server.stop(signal.SIGKILL)


async def test_edge_presents_its_token_and_passes_the_origin_refusals_on(tmp_path: Path) -> None:
    origin = start_origin(tmp_path, {"auth": {"view_token": "seeing"}})
    good = start_edge(tmp_path, origin, {"token": "seeing", "linger": 0.0})
    (tmp_path / "bad").mkdir()
    bad = spawn_relay(tmp_path / "bad", {"origin": {"url": origin.url("/whep/{stream}"), "token": "wrong"}})
    try:
        offer = await make_offer("recvonly")
        response, body = await request("POST", good.url("/whep/cam"), offer, **{"Content-Type": "application/sdp"})
        assert_problem(response, body, 409, "no live publisher", "origin")
        assert response.headers["Retry-After"]
        async with WhipClient(origin.url("/whip/cam"), [TestPatternTrack(320, 240)]):
            response, body = await request("POST", bad.url("/whep/cam"), offer, **{"Content-Type": "application/sdp"})
            assert_problem(response, body, 502, "refused", "origin.token")
            async with WhepClient(good.url("/whep/cam"), kinds=("video",)) as viewer:
                await first_stamp(viewer)
    finally:
        for server in (good, bad, origin):
            server.stop()
