"""Malformed requests cost a few WARNING lines, not a traceback each; Relay's own faults keep theirs."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from relay.server import auth
from relay.server.connections import ClientNoise

from ..conftest import start_relay

MALFORMED = [
    b"GET /whip/a\x00b HTTP/1.1\r\nHost: relay\r\n\r\n",  # NUL in the path
    b"GET / HTTP/9.9\r\nHost: relay\r\n\r\n",  # bad request line
    b"GET /  HTTP/1.1 x\r\nHost: relay\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: relay\r\nBad Header: y\r\n\r\n",  # bad header bytes
    b"GET / HTTP/1.1\r\nHost: relay\r\nX: \x01\x02\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: relay\r\n: empty\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: relay\r\nX-Huge: " + b"a" * 20000 + b"\r\n\r\n",  # huge header
    b"GET / HTTP/1.1\r\nHost: relay\r\nContent-Length: -1\r\n\r\n",
    b"POST /whip/cam HTTP/1.1\r\nHost: relay\r\nContent-Type: application/sdp\r\nTransfer-Encoding: chunked\r\n"
    b"\r\nzz\r\n",
    b"POST /whip/cam HTTP/1.1\r\nHost: relay\r\nContent-Type: application/sdp\r\nContent-Encoding: gzip\r\n"
    b"Content-Length: 5\r\n\r\nhello",  # not gzip: the body cannot be read
    b"GET / HTTP/1.1\r\nHost: relay\r\n\r\nGARBAGE / HTTP/1.1\r\n\r\n",  # a bad method on the second request
]


async def send(port: int, data: bytes, at_once: asyncio.Semaphore | None = None) -> bytes:
    if at_once:
        async with at_once:  # fewer than limits.max_connections_per_address
            return await send(port, data)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:  # closed with bytes unread (the huge header): the answer may be lost
        return b""
    finally:
        writer.close()


async def test_malformed_requests_log_a_few_warning_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    relay = await start_relay()
    try:
        requests = [random.Random(n).choice(MALFORMED) for n in range(200)]
        at_once = asyncio.Semaphore(32)
        answers = await asyncio.gather(*(send(relay.server.port, r, at_once) for r in requests))
        assert all(a.startswith((b"HTTP/1.0 400", b"HTTP/1.1 200", b"HTTP/1.1 400")) for a in answers if a), \
            {a[:40] for a in answers}
    finally:
        await relay.server.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    lines = sum(len(caplog.handler.format(r).splitlines()) for r in loud)
    assert not [r for r in loud if r.levelno >= logging.ERROR], [r.getMessage() for r in loud]
    assert not [r for r in loud if r.exc_info or r.exc_text]
    kinds = {r.getMessage().split(":")[1] for r in loud}
    assert lines == len(loud) <= 2 * len(kinds) + 2, [r.getMessage() for r in loud]  # one line each, ~1 per kind
    assert all(r.getMessage().startswith("malformed request: ") for r in loud)
    assert all("\n" not in r.getMessage() for r in loud)


async def test_a_real_fault_still_logs_its_traceback(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in Relay")

    monkeypatch.setattr(auth, "visible_streams", broken)
    caplog.set_level(logging.INFO)
    relay = await start_relay()
    try:
        answer = await send(relay.server.port, b"GET /api/streams HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500")
    finally:
        await relay.server.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "a bug in Relay" in caplog.text
    assert "Traceback (most recent call last)" in caplog.text


def test_only_client_errors_are_quieted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    noise = ClientNoise(logging.getLogger("aiohttp.server"), interval=1.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG)
    from aiohttp.http_exceptions import BadStatusLine

    for _ in range(5):
        noise.exception("Error handling request from %s", "127.0.0.9", exc_info=BadStatusLine("b'x'"))
    now[0] = 1.5
    noise.exception("Error handling request from %s", "127.0.0.9", exc_info=BadStatusLine("b'y'"))
    noise.exception("Unhandled exception", exc_info=RuntimeError("aiohttp's own fault"))
    noise.debug("debug passes through")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages[0][0] == "WARNING" and "127.0.0.9" in messages[0][1] and "BadStatusLine" in messages[0][1]
    assert messages[1][0] == "WARNING" and "(and 4 more like it in the 1.5 s before)" in messages[1][1]
    assert messages[2] == ("ERROR", "Unhandled exception") and caplog.records[2].exc_info
    assert messages[3] == ("DEBUG", "debug passes through")
    assert len(messages) == 4
