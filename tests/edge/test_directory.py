"""Several origins with a Redis directory: an edge finds each stream's origin there."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack

from ..conftest import assert_problem, first_stamp, free_port, make_offer, poll_until, request, spawn_relay
from .test_edge import viewers


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server (Debian's package), started and stopped here."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(10)


async def test_an_edge_pulls_each_stream_from_the_origin_that_registered_it(tmp_path: Path, redis_url: str) -> None:
    origins = []
    for name in ("one", "two"):
        port = free_port()
        (tmp_path / name).mkdir()
        origins.append(spawn_relay(tmp_path / name, {"server": {"port": port}, "directory": {
            "redis_url": redis_url, "advertise": f"http://127.0.0.1:{port}", "ttl": 3.0}}))
    (tmp_path / "edge").mkdir()
    edge = spawn_relay(tmp_path / "edge", {"directory": {"redis_url": redis_url}, "origin": {"linger": 0.0}})
    directory = redis.Redis.from_url(redis_url)
    try:
        async with WhipClient(origins[0].url("/whip/a"), [TestPatternTrack(320, 240)]), \
                   WhipClient(origins[1].url("/whip/b"), [TestPatternTrack(320, 240)]) as second:
            await poll_until(lambda: directory.get("relay:stream:b") is not None, timeout=10, interval=0.1)
            assert directory.get("relay:stream:a") == origins[0].url("").encode()
            assert directory.get("relay:stream:b") == origins[1].url("").encode()
            async with WhepClient(edge.url("/whep/a"), kinds=("video",)) as a, \
                       WhepClient(edge.url("/whep/b"), kinds=("video",)) as b:
                await asyncio.gather(first_stamp(a), first_stamp(b))
                assert (viewers(origins[0], "a"), viewers(origins[1], "b")) == (1, 1)
                assert viewers(origins[0], "b") is None and viewers(origins[1], "a") is None
                await asyncio.sleep(4)  # past the TTL: the registration is renewed while the stream is live
                assert directory.get("relay:stream:b") is not None
            await second.close()
            await poll_until(lambda: directory.get("relay:stream:b") is None, timeout=5, interval=0.1)
            offer = await make_offer("recvonly")
            response, body = await request("POST", edge.url("/whep/b"), offer, **{"Content-Type": "application/sdp"})
            assert_problem(response, body, 409, "no live publisher")
    finally:
        directory.close()
        for server in (edge, *origins):
            server.stop()
