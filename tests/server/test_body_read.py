"""Request bodies as real networks deliver them: in segments, chunked, or short."""

from __future__ import annotations

import asyncio

from ..conftest import RunningRelay, make_offer, start_relay


async def send_raw(port: int, head: str, pieces: list[bytes], pause: float = 0.01) -> tuple[int, bytes]:
    """Write the request head, then each piece after a pause; return the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        await writer.drain()
        for piece in pieces:
            await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 15)
        response = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    return int(status_line.split()[1]), response


def segments(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def chunked(body: bytes, parts: int) -> list[bytes]:
    step = -(-len(body) // parts)
    out = [b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)]
    return out + [b"0\r\n\r\n"]


def head(path: str, extra: str) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/sdp\r\nConnection: close\r\n{extra}\r\n"


async def test_offer_split_into_segments_or_chunks_is_read_whole(relay: RunningRelay) -> None:
    offer = (await make_offer()).encode()
    assert len(offer) > 2000  # big enough to need two 1,400-byte segments
    port = relay.server.port
    assert port is not None

    status, body = await send_raw(port, head("/whip/seg", f"Content-Length: {len(offer)}\r\n"),
                                  segments(offer, 1400))
    assert status == 201, body
    assert b"a=group:BUNDLE" in body
    await relay.ctx.sessions.close_all("next case")
    await relay.wait_until(lambda: not any(s.live for s in relay.ctx.streams))

    status, body = await send_raw(port, head("/whip/chunk", "Transfer-Encoding: chunked\r\n"), chunked(offer, 3))
    assert status == 201, body
    assert b"a=group:BUNDLE" in body
    await relay.ctx.sessions.close_all("done")


async def test_short_body_times_out_instead_of_being_parsed() -> None:
    running = await start_relay({"server": {"body_timeout": 1.0}})
    try:
        offer = (await make_offer()).encode()
        port = running.server.port
        assert port is not None
        status, body = await send_raw(port, head("/whip/short", f"Content-Length: {len(offer) + 100}\r\n"),
                                      [offer])
        assert status == 408, body
        assert b"body-timeout" in body
        assert len(running.ctx.sessions) == 0
    finally:
        await running.server.close()


async def test_body_that_is_not_gzip_is_400(relay: RunningRelay) -> None:
    port = relay.server.port
    assert port is not None
    junk = b"v=0 this is not gzip" * 10
    status, body = await send_raw(
        port, head("/whep/gz", f"Content-Length: {len(junk)}\r\nContent-Encoding: gzip\r\n"), [junk])
    assert status == 400, body
    assert b"bad-body" in body
