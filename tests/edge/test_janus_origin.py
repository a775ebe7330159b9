"""An edge pulling from a WHEP server that is not Relay: Janus's VideoRoom behind the bench's WHEP facade.

Janus answers a WHEP POST with its own offer (a 406 counter-offer, as VideoRoom
subscribers are always offered to), so the edge's pull takes the other WHEP
branch than it does against Relay. libnice (Janus's ICE) ignores loopback: the
media goes over the bench's veth pair (192.0.2.x) inside the test namespace.
Fails instead of skipping without Janus when RELAY_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from bench.janus import facade, janus_binary, janus_process
from bench.netns import VETH_PEER_ADDRESS
from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack
from relay.media.aiortc_patch import restrict_host_addresses

from ..conftest import LOOPBACK, first_stamp, free_port, poll_until, spawn_relay
from .test_edge import streams


@pytest.fixture
def janus_installed() -> None:
    if janus_binary() is None or not shutil.which("ip"):
        reason = "Janus (apt-get install janus) and iproute2 are needed"
        if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (RELAY_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def veth_candidates() -> object:
    """This process's aiortc peers offer the veth address too (Janus can reach only that one)."""
    addresses = [VETH_PEER_ADDRESS, *LOOPBACK["ice"]["host_addresses"]]
    restrict_host_addresses(addresses)
    yield addresses
    restrict_host_addresses(LOOPBACK["ice"]["host_addresses"])


async def test_an_edge_serves_a_stream_pulled_from_janus(
        tmp_path: Path, janus_installed: None, veth_candidates: list[str]) -> None:
    janus_port, front_port = free_port(), free_port()
    async with janus_process(janus_port, 1, None, tmp_path / "janus.log"), facade(janus_port, front_port):
        origin = f"http://127.0.0.1:{front_port}"
        edge = spawn_relay(tmp_path, {"origin": {"url": origin, "linger": 1.0},
                                      "ice": {"host_addresses": veth_candidates}})
        try:
            async with WhipClient(f"{origin}/whip/far", [TestPatternTrack(320, 240), ToneTrack()]):
                async with WhepClient(edge.url("/whep/far")) as viewer:
                    first = await first_stamp(viewer)
                    await asyncio.sleep(1.0)
                    later = await first_stamp(viewer)
                    assert later.counter > first.counter, "the picture from Janus does not move"
                    assert "audio" in viewer.tracks
                    stream = streams(edge)["far"]
                    assert stream["live"] and stream["viewers"] == 1
                    assert stream["video"]["codec"].lower() == "vp8", stream
            await poll_until(lambda: "far" not in streams(edge) or not streams(edge)["far"]["live"], timeout=15,
                             interval=0.2)
        finally:
            assert edge.stop() == 0
