"""Every limit in `limits:` (and the body size): the refusal, its status, and that it lifts."""

from __future__ import annotations

import asyncio

import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import ToneTrack
from relay.server.limits import RateLimiter

from ..conftest import assert_problem, make_offer, relay_with, request

SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, tracked_clients=10, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0, "another address has its own bucket"
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 60
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0], "a refilled bucket holds only the burst"


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, tracked_clients=100, clock=clock)
    for i in range(5000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    assert limiter.take("10.0.0.0") == 0.0, "evicted long ago: a fresh, full bucket"
    assert limiter.take("10.0.19.135") > 0, "the most recent client is still remembered"


async def test_post_and_patch_over_the_rate_get_429_with_retry_after() -> None:
    async with relay_with({"limits": {"requests_per_second": 2, "request_burst": 3}}) as running:
        url = running.url("/whip/a")
        for _ in range(2):
            response, body = await request("POST", url, "v=0\r\n", **SDP)
            assert_problem(response, body, 400, "sdp")
        response, body = await request("PATCH", url + "/nosession", "a=end-of-candidates\r\n", **FRAG)
        assert_problem(response, body, 404, "session")
        for _ in range(5):  # GET and DELETE are not rate-limited
            response, _ = await request("GET", running.url("/api/streams"))
            assert response.status == 200
        response, body = await request("POST", url, "v=0\r\n", **SDP)
        assert_problem(response, body, 429, "Retry-After")
        assert response.headers["Retry-After"] == "1"
        response, body = await request("PATCH", url + "/nosession", "", **FRAG)
        assert_problem(response, body, 429, "127.0.0.1")
        await asyncio.sleep(0.55)  # one request's worth of tokens back
        response, body = await request("POST", url, "v=0\r\n", **SDP)
        assert_problem(response, body, 400, "sdp")


async def test_rate_limit_off() -> None:
    async with relay_with({"limits": {"requests_per_second": 0, "request_burst": 1}}) as running:
        statuses = set()
        for _ in range(50):
            response, _ = await request("POST", running.url("/whip/a"), "v=0\r\n", **SDP)
            statuses.add(response.status)
        assert statuses == {400}


async def test_max_streams() -> None:
    async with relay_with({"limits": {"max_streams": 1}}) as running:
        async with WhipClient(running.url("/whip/one"), [ToneTrack()]):
            response, body = await request("POST", running.url("/whip/two"), await make_offer(kinds=("audio",)), **SDP)
            assert_problem(response, body, 503, "at most 1 live stream")
            assert int(response.headers["Retry-After"]) > 0
            assert running.ctx.streams.get("two") is None, "a refused publisher leaves no stream behind"
        await running.wait_until(lambda: len(running.ctx.sessions) == 0)
        async with WhipClient(running.url("/whip/two"), [ToneTrack()]):  # the slot is free again
            assert running.ctx.streams.get("two").live


async def test_max_viewers_per_stream_holds_under_concurrent_joins() -> None:
    async with relay_with({"limits": {"max_viewers_per_stream": 2}}) as running:
        async with WhipClient(running.url("/whip/s"), [ToneTrack()]):
            stream = running.ctx.streams.get("s")
            assert stream is not None
            viewers = [WhepClient(running.url("/whep/s"), kinds=("audio",)) for _ in range(4)]
            try:
                # Seats are taken when ICE connects, not at the POST: all four are answered,
                # and the two that connect after the seats are gone are closed by the server.
                results = await asyncio.gather(*(v.start() for v in viewers), return_exceptions=True)
                assert results == [None] * 4, results
                await running.wait_until(lambda: sum(v.ended.is_set() for v in viewers) == 2, timeout=15)
                assert stream.watching == 2 and running.ctx.sessions.count("whep") == 2
                response, body = await request("POST", running.url("/whep/s"),
                                               await make_offer("recvonly", kinds=("audio",)), **SDP)
                assert_problem(response, body, 503, "maximum of 2 viewers")
                assert int(response.headers["Retry-After"]) > 0
                joined = [v for v in viewers if not v.ended.is_set()]
                await joined[0].close()
                await running.wait_until(lambda: running.ctx.sessions.count("whep") == 1)
                again = WhepClient(running.url("/whep/s"), kinds=("audio",))
                await again.start()  # a seat was freed
                await again.wait_connected()
                await running.wait_until(lambda: stream.watching == 2)
                await again.close()
            finally:
                await asyncio.gather(*(v.close() for v in viewers))


async def test_max_candidates_per_patch() -> None:
    async with relay_with({"limits": {"max_candidates_per_patch": 2}}) as running:
        async with WhipClient(running.url("/whip/c"), [ToneTrack()]) as pub:
            line = "a=candidate:{0} 1 udp 2130706431 127.0.0.1 {0} typ host\r\n"
            two = line.format(9) + line.format(10)
            response, _ = await request("PATCH", pub.location, two, **FRAG)
            assert response.status == 204
            response, body = await request("PATCH", pub.location, two + line.format(11), **FRAG)
            assert_problem(response, body, 400, "at most 2 per PATCH")
            assert len(running.ctx.sessions) == 1


async def test_max_body_bytes_is_configurable() -> None:
    offer = await make_offer()
    async with relay_with({"server": {"max_body_bytes": len(offer) - 1}}) as running:
        response, body = await request("POST", running.url("/whip/b"), offer, **SDP)
        assert_problem(response, body, 413, f"{len(offer) - 1} bytes")
        response, body = await request("POST", running.url("/whep/b"), offer, **SDP)
        assert_problem(response, body, 413, "smaller")
