"""Connections that hold a file descriptor without finishing a request are closed in time.

Raw sockets, since an HTTP client always sends whole requests: headers that
never end, a body shorter than its Content-Length, an idle keep-alive
connection, and more connections from one address than
`limits.max_connections_per_address` (another address still gets in).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from pathlib import Path
from typing import Any

from relay.server.connections import GUARD

from ..conftest import RunningRelay, spawn_relay, start_relay

TIMEOUT = 1.0  # header_timeout, body_timeout, keepalive_timeout below
SLACK = 0.5


async def connect(relay: RunningRelay, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", relay.server.port, local_addr=(source, 0))


async def closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Read until the server closes; how long that took, and what it sent."""
    start = time.monotonic()
    data = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            data += chunk
    return time.monotonic() - start, data


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


async def test_slow_headers_are_closed_at_the_header_timeout() -> None:
    relay = await start_relay({"server": {"header_timeout": TIMEOUT}})
    try:
        silent = await connect(relay)  # connects, sends nothing
        dripping = await connect(relay)  # sends a byte every 0.2 s, never ends its headers
        head = b"GET /api/streams HTTP/1.1\r\nHost: relay\r\nX-Slow: " + b"a" * 100

        async def drip() -> None:
            for byte in head:
                dripping[1].write(bytes([byte]))
                await asyncio.sleep(0.2)

        dripper = asyncio.create_task(drip())
        (took_silent, answer_silent), (took_drip, answer_drip) = await asyncio.gather(
            closed_after(silent[0], TIMEOUT + SLACK + 1), closed_after(dripping[0], TIMEOUT + SLACK + 1))
        dripper.cancel()
        silent[1].close()
        dripping[1].close()
        for took, answer in ((took_silent, answer_silent), (took_drip, answer_drip)):
            assert TIMEOUT - 0.1 < took < TIMEOUT + SLACK
            assert status(answer) == 408 and b"application/problem+json" in answer
        await relay.wait_until(lambda: not relay.server.app[GUARD].open, 2)
    finally:
        await relay.server.close()


async def test_whole_headers_in_time_are_served() -> None:
    relay = await start_relay({"server": {"header_timeout": TIMEOUT}})
    try:
        reader, writer = await connect(relay)
        for part in (b"GET /api/streams HTTP/1.1\r\n", b"Host: relay\r\n", b"Connection: close\r\n\r\n"):
            writer.write(part)
            await asyncio.sleep(0.3)  # 0.9 s in all: in time
        _, answer = await closed_after(reader, 5)
        assert status(answer) == 200
        writer.close()
    finally:
        await relay.server.close()


async def test_slow_bodies_get_408_and_are_closed() -> None:
    relay = await start_relay({"server": {"body_timeout": TIMEOUT}})
    try:
        short = [  # a Content-Length larger than what is sent, then silence
            b"POST /whip/cam HTTP/1.1\r\nHost: relay\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 3000\r\n\r\nv=0\r\n",
            b"POST /api/streams/cam/events HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n[",
            b"POST /whep/cam HTTP/1.1\r\nHost: relay\r\nContent-Type: application/sdp\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nv=0\r\n\r\n",  # chunked, never a last chunk
        ]
        connections = [await connect(relay) for _ in short]
        for (_, writer), request in zip(connections, short):
            writer.write(request)
        results = await asyncio.gather(*(closed_after(reader, 2 * TIMEOUT + SLACK + 1) for reader, _ in connections))
        for _, writer in connections:
            writer.close()
        for (took, answer), request in zip(results, short):
            assert status(answer) == 408, (request, answer)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert json.loads(body)["type"] == "urn:relay:problem:body-timeout"
            # the 408 at body_timeout; then aiohttp drains the unread rest for at most as long (lingering_time)
            assert TIMEOUT - 0.1 < took < 2 * TIMEOUT + SLACK, (request, took)
        await relay.wait_until(lambda: not relay.server.app[GUARD].open, 2)
    finally:
        await relay.server.close()


async def test_unread_slow_body_is_drained_for_body_timeout_at_most() -> None:
    relay = await start_relay({"server": {"body_timeout": TIMEOUT}})
    try:
        reader, writer = await connect(relay)  # a route that reads no body answers at once
        writer.write(b"POST /nothing HTTP/1.1\r\nHost: relay\r\nContent-Length: 100000\r\n\r\nabc")
        took, answer = await closed_after(reader, TIMEOUT + SLACK + 1)
        assert status(answer) == 404
        assert took < TIMEOUT + SLACK
        writer.close()
    finally:
        await relay.server.close()


async def test_idle_keepalive_connection_is_closed() -> None:
    relay = await start_relay({"server": {"keepalive_timeout": TIMEOUT}})
    try:
        reader, writer = await connect(relay)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        took, answer = await closed_after(reader, TIMEOUT + SLACK + 1)
        assert status(answer) == 200
        assert TIMEOUT - 0.1 < took < TIMEOUT + SLACK
        writer.close()
    finally:
        await relay.server.close()


async def test_connections_per_address_are_capped() -> None:
    cap = 5
    relay = await start_relay({"limits": {"max_connections_per_address": cap}})
    guard = relay.server.app[GUARD]
    loop = asyncio.get_running_loop()
    faults: list[dict[str, Any]] = []  # what aiohttp's tasks leave to the loop (a refusal once crashed start())
    loop.set_exception_handler(lambda _, context: faults.append(context))
    try:
        held = [await connect(relay) for _ in range(cap)]
        await relay.wait_until(lambda: guard.open["127.0.0.1"] == cap, 2)

        reader, writer = await connect(relay)  # one too many: 503 at once, closed, nothing read
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        took, answer = await closed_after(reader, 2)
        assert status(answer) == 503 and b"Retry-After: " in answer, answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["type"] == "urn:relay:problem:too-many-connections"
        assert took < 0.5
        assert guard.open["127.0.0.1"] == cap
        writer.close()
        await asyncio.sleep(0.1)
        gc.collect()  # a task that ended in an exception nobody retrieved reports it when collected
        assert not faults, faults

        other = await connect(relay, "127.0.0.2")  # another address is not affected
        other[1].write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        assert status((await closed_after(other[0], 2))[1]) == 200
        other[1].close()

        held.pop()[1].close()  # one closed: room for one more
        await relay.wait_until(lambda: guard.open["127.0.0.1"] == cap - 1, 2)
        again = await connect(relay)
        again[1].write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        assert status((await closed_after(again[0], 2))[1]) == 200
        again[1].close()

        for _, held_writer in held:
            held_writer.close()
        await relay.wait_until(lambda: not guard.open, 2)
    finally:
        loop.set_exception_handler(None)
        await relay.server.close()


async def test_no_cap_when_zero() -> None:
    relay = await start_relay({"limits": {"max_connections_per_address": 0}})
    try:
        socks = []
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", relay.server.port))
            sock.setblocking(False)
            socks.append(sock)
        await relay.wait_until(lambda: relay.server.app[GUARD].open["127.0.0.1"] == 100, 5)
        for sock in socks:
            sock.close()
    finally:
        await relay.server.close()


def test_relay_serve_has_them_too(tmp_path: Path) -> None:
    """`relay serve` (web.run_app) builds its server the same way as the tests' TestServer."""
    log = tmp_path / "relay.log"
    relay = spawn_relay(tmp_path, {"server": {"header_timeout": TIMEOUT}, "limits": {"max_connections_per_address": 2}},
                        log=log)
    try:
        held = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(2)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", relay.port)) as third:
            third.settimeout(2)
            assert status(third.recv(4096)) == 503
        for sock in held:
            sock.settimeout(TIMEOUT + SLACK + 1)
            start = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert status(answer) == 408 and time.monotonic() - start < TIMEOUT + SLACK
            sock.close()
    finally:
        assert relay.stop() == 0
    assert "Traceback" not in log.read_text(), "a refused connection must not crash aiohttp's handler"
