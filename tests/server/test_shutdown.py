"""Graceful shutdown: new sessions refused with 503, every peer told, recordings finalised, exit within 5 s."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import (
    analyse,
    assert_nothing_left,
    assert_problem,
    files,
    first_stamp,
    make_offer,
    relay_with,
    request,
    spawn_relay,
    wait_ended,
)

EXIT_WITHIN = 5.0


async def test_sigterm_with_live_sessions_exits_in_time_and_tells_everyone(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    server = spawn_relay(tmp_path, {"recording": {"enabled": True, "dir": str(root)}})
    viewers: list[WhepClient] = []
    publisher = WhipClient(server.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()])
    try:
        await publisher.start()
        viewers = [WhepClient(server.url("/whep/cam"), kinds=("video",)) for _ in range(3)]
        for viewer in viewers:
            await viewer.start()
        for viewer in viewers:
            await first_stamp(viewer)
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url("/api/events")) as dashboard:  # a long-lived response must not hold the exit
                await dashboard.content.readline()
                await asyncio.sleep(2)  # pacing: two seconds of media to record
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(server.process.wait, EXIT_WITHIN + 5)
                took = time.monotonic() - signalled
        print(f"SIGTERM to exit with 1 publisher, 3 viewers, 1 recording, 1 event stream: {took:.2f} s")
        assert code == 0
        assert took <= EXIT_WITHIN
        async with asyncio.timeout(2):  # the viewers were told (their tracks ended), not left to time out
            await asyncio.gather(*(wait_ended(v) for v in viewers))
        assert publisher.pc.connectionState == "closed"
        (path,) = files(root, "cam")
        recorded = analyse(path)
        assert recorded.header_duration is not None, "the recording was not finalised"
        assert recorded.duration >= 2 and recorded.first_is_keyframe
        recorded.assert_continuous()
    finally:
        server.stop(signal.SIGKILL)
        for client in [publisher, *viewers]:
            await client.close()


async def test_while_shutting_down_new_sessions_get_503_and_readyz_says_so() -> None:
    async with relay_with() as relay:
        response, body = await request("GET", relay.url("/readyz"))
        assert response.status == 200 and '"ready"' in body
        async with WhipClient(relay.url("/whip/s"), [ToneTrack()]) as pub:
            await relay.wait_until(lambda: pub.pc.connectionState == "connected")
            shutting_down = asyncio.create_task(relay.server.app.shutdown())  # what SIGTERM runs first
            await relay.wait_until(lambda: not relay.ctx.accepting)
            response, body = await request("GET", relay.url("/readyz"))
            assert_problem(response, body, 503, "shutting down")
            assert int(response.headers["Retry-After"]) > 0
            for kind, direction in (("whip", "sendonly"), ("whep", "recvonly")):
                response, body = await request("POST", relay.url(f"/{kind}/s"), await make_offer(direction),
                                               **{"Content-Type": "application/sdp"})
                assert_problem(response, body, 503, "shutting down")
                assert int(response.headers["Retry-After"]) > 0
            response, _ = await request("GET", relay.url("/healthz"))
            assert response.status == 200, "still alive while draining"
            await shutting_down
            await relay.wait_until(lambda: pub.pc.connectionState == "closed", timeout=5)
        await assert_nothing_left(relay)


async def test_a_request_stuck_in_flight_does_not_hold_the_exit(tmp_path: Path) -> None:
    server = spawn_relay(tmp_path, {"server": {"shutdown_grace": 2.0}})
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /whip/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                     b"Content-Length: 5000\r\n\r\nv=0\r\n")  # the rest of the body never comes
        await writer.drain()
        # answered after it, on another connection: by then the server has taken the stuck request in
        response, _ = await request("GET", server.url("/healthz"))
        assert response.status == 200
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, 10)
        took = time.monotonic() - signalled
        print(f"SIGTERM to exit with a request stuck reading its body: {took:.2f} s")
        assert code == 0 and took <= 2.0
        writer.close()
    finally:
        server.stop(signal.SIGKILL)
