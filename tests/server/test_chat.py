"""The chat beside a broadcast, with real aiortc peers and over HTTP: stamping, history, limits, tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from relay.client import WhepClient, WhipClient
from relay.client.channels import chat_join, chat_text
from relay.client.testpattern import TestPatternTrack

from ..conftest import assert_nothing_left, assert_problem, first_stamp, read_events, relay_with, request

CHAT = {"chat": {"messages_per_second": 1.0, "burst": 3}}


async def next_chat(client: WhipClient | WhepClient, kind: str = "message") -> dict[str, Any]:
    """The next chat message of `kind` (message, error, joined, cleared) the client receives."""
    async with asyncio.timeout(10):
        while True:
            body = json.loads(await client.recv("chat"))
            if body["type"] == kind:
                return body


async def joined(client: WhipClient | WhepClient, name: str) -> None:
    client.send("chat", chat_join(name))
    assert (await next_chat(client, "joined"))["name"] == name


async def test_viewers_and_publisher_chat_with_server_stamps_and_history() -> None:
    async with relay_with(CHAT) as relay:
        async with WhipClient(relay.url("/whip/live"), [TestPatternTrack(160, 120)],
                              data_channels=["chat"]) as host, \
                WhepClient(relay.url("/whep/live"), data_channels=["chat"]) as alice, \
                WhepClient(relay.url("/whep/live"), data_channels=["chat"]) as bob:
            for client, name in ((host, "Host"), (alice, "Alice"), (bob, "Bob")):
                await client.wait_connected()
                await joined(client, name)
            alice.send("chat", json.dumps({"text": "  hello  ", "from": "Host", "time": "forged"}))
            for client in (host, alice, bob):
                message = await next_chat(client)
                assert (message["from"], message["role"], message["text"]) == ("Alice", "viewer", "hello")
                assert message["time"].endswith("Z") and message["time"] != "forged"
            host.send("chat", chat_text("welcome"))
            assert (await next_chat(bob))["role"] == "publisher"
            response, body = await request("GET", relay.url("/api/streams/live"))
            assert json.loads(body)["chat"]["participants"] == ["Alice", "Bob", "Host"]

            async with WhepClient(relay.url("/whep/live"), data_channels=["chat"]) as late:
                await late.wait_connected()
                history = [await next_chat(late) for _ in range(2)]
                assert [(m["from"], m["text"]) for m in history] == [("Alice", "hello"), ("Host", "welcome")]
                await first_stamp(late)

            bob.send("chat", json.dumps({"clear": True}))
            assert "publisher" in (await next_chat(bob, "error"))["detail"]
            host.send("chat", json.dumps({"clear": True}))
            await next_chat(alice, "cleared")
            assert not relay.ctx.streams.get("live").chat.history
        await assert_nothing_left(relay)


async def test_bad_chat_input_gets_errors_on_the_channel_and_the_media_goes_on() -> None:
    async with relay_with(CHAT) as relay:
        async with WhipClient(relay.url("/whip/live"), [TestPatternTrack(160, 120)]), \
                WhepClient(relay.url("/whep/live"), data_channels=["chat"]) as viewer, \
                WhepClient(relay.url("/whep/live"), data_channels=["chat"]) as other:
            await viewer.wait_connected()
            await other.wait_connected()

            async def error_for(message: str | bytes) -> str:
                viewer.send("chat", message)
                return str((await next_chat(viewer, "error"))["detail"])

            assert "choose a display name" in await error_for(chat_text("hi"))
            assert "not allowed" in await error_for(chat_join("<script>"))
            assert "not allowed" in await error_for(chat_join("x" * 40))
            await joined(other, "Carol")
            assert "already in this chat" in await error_for(chat_join("carol"))
            await joined(viewer, "Dave")
            assert "chosen once" in await error_for(chat_join("Eve"))
            assert "JSON" in await error_for("hello")
            assert "binary" in await error_for(b"\x00\x01")
            assert "at most 500" in await error_for(chat_text("x" * 501))
            assert "at most 500" in await error_for("x" * 5000)
            assert "some text" in await error_for(chat_text("   "))
            for n in range(10):  # a flood: the burst passes, the rest is refused
                viewer.send("chat", chat_text(f"flood {n}"))
            got = [json.loads(await viewer.recv("chat")) for _ in range(10)]
            assert [m["type"] for m in got].count("message") == 3
            assert all("wait" in m["detail"] for m in got if m["type"] == "error")
            assert viewer.pc is not None and viewer.pc.connectionState == "connected"
            await first_stamp(viewer)  # the media is unaffected


async def test_http_chat_both_ways_with_the_view_token() -> None:
    settings = {**CHAT, "auth": {"publish_token": "pub", "view_token": "see"}}
    async with relay_with(settings) as relay:
        async with WhipClient(relay.url("/whip/s"), [TestPatternTrack(160, 120)], token="pub"), \
                WhepClient(relay.url("/whep/s"), token="see", data_channels=["chat"]) as viewer:
            await viewer.wait_connected()
            url = relay.url("/api/streams/s/chat")
            response, body = await request("GET", url)
            assert_problem(response, body, 401, "view token")
            response, body = await request("POST", url, json.dumps({"name": "bot", "text": "x"}),
                                           **{"Content-Type": "application/json"})
            assert_problem(response, body, 401, "view token")
            async with aiohttp.ClientSession() as http:
                async with http.get(url, headers={"Authorization": "Bearer see"}) as events:
                    await asyncio.sleep(0.2)
                    await joined(viewer, "Alice")
                    viewer.send("chat", chat_text("from a channel"))
                    assert (await next_chat(viewer))["text"] == "from a channel"  # everyone gets it, the sender too
                    (_, data), = await read_events(events, 1)
                    assert (json.loads(data)["from"], json.loads(data)["text"]) == ("Alice", "from a channel")
                    response, body = await request("POST", url, json.dumps({"name": "bot", "text": "from HTTP"}),
                                                   Authorization="Bearer see", **{"Content-Type": "application/json"})
                    assert response.status == 200 and json.loads(body)["role"] == "http"
                    message = await next_chat(viewer)
                    assert (message["from"], message["text"]) == ("bot", "from HTTP")
                    (_, data), = await read_events(events, 1)
                    assert json.loads(data)["text"] == "from HTTP"

            async def post(body: str, kind: str = "application/json") -> tuple[Any, Any]:
                return await request("POST", url, body, Authorization="Bearer see", **{"Content-Type": kind})

            assert_problem(*await post("{"), 400, "JSON object")
            assert_problem(*await post("hi", "text/plain"), 415, "application/json")
            assert_problem(*await post(json.dumps({"name": "alice", "text": "x"})), 409, "already in this chat")
            assert_problem(*await post(json.dumps({"name": "bot", "text": "x" * 501})), 400, "at most 500")
            statuses = [(await post(json.dumps({"name": "bot", "text": "again"})))[0] for _ in range(4)]
            assert 429 in [r.status for r in statuses] and "Retry-After" in statuses[-1].headers
            response, body = await request("DELETE", url, Authorization="Bearer see")
            assert_problem(response, body, 401, "not valid to publish")
            response, body = await request("DELETE", url, Authorization="Bearer pub")
            assert response.status == 204 and not relay.ctx.streams.get("s").chat.history
            response, body = await request("GET", relay.url("/metrics"))
            assert "relay_data_messages_in_total" in body and "relay_data_messages_dropped_total" in body


async def test_chat_can_be_turned_off_per_stream() -> None:
    async with relay_with({"chat": {"streams": {"quiet": {"enabled": False}}}}) as relay:
        async with WhipClient(relay.url("/whip/quiet"), [TestPatternTrack(160, 120)]), \
                WhepClient(relay.url("/whep/quiet"), data_channels=["chat"]) as viewer:
            await viewer.wait_connected()
            assert "turned off" in (await next_chat(viewer, "error"))["detail"]
            viewer.send("chat", chat_join("Alice"))
            assert "turned off" in (await next_chat(viewer, "error"))["detail"]
            response, body = await request("POST", relay.url("/api/streams/quiet/chat"),
                                           json.dumps({"name": "bot", "text": "x"}),
                                           **{"Content-Type": "application/json"})
            assert_problem(response, body, 403, "turned off")


async def test_a_viewer_whose_buffer_is_full_is_skipped_and_counted() -> None:
    """A viewer's channel holding viewer_buffer_bytes unsent misses messages, in order, and never blocks."""
    async with relay_with({"data": {"viewer_buffer_bytes": 20_000}}) as small:
        async with WhipClient(small.url("/whip/s"), [TestPatternTrack(160, 120)]), \
                WhepClient(small.url("/whep/s"), data_channels=["t"]) as viewer:
            await viewer.wait_connected()
            data = small.ctx.streams.get("s").data
            for n in range(100):  # one burst, faster than any SCTP window drains
                data.send("t", f"{n:04d}" + "x" * 996)
            assert data.dropped > 0 and data.messages_out + data.dropped == 100
            got = [int(str(await viewer.recv("t"))[:4]) for _ in range(data.messages_out)]
            assert got == sorted(got) and got[0] == 0
            data.send("t", "after")  # the buffer drained: delivered again
            while await viewer.recv("t") != "after":
                pass
