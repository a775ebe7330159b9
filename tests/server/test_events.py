"""Server-sent events: the dashboard's stream list and WHEP's per-stream events."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack

from ..conftest import RunningRelay, make_offer, start_relay


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, dict]:
    name, data = "", ""
    async with asyncio.timeout(10):
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                return name, json.loads(data)


async def test_dashboard_events_follow_the_stream(relay: RunningRelay) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.url("/api/events")) as events:
            assert events.content_type == "text/event-stream"
            assert await next_event(events) == ("streams", {"streams": []})
            async with WhipClient(relay.url("/whip/ev"), [TestPatternTrack(160, 120)]):
                while True:
                    name, data = await next_event(events)
                    if data["streams"] and data["streams"][0]["live"]:
                        break
                assert data["streams"][0]["name"] == "ev" and data["streams"][0]["video"]["codec"] == "VP8"
            while True:
                name, data = await next_event(events)
                if not data["streams"][0]["live"]:
                    break


async def test_whep_event_stream_tells_active_viewercount_inactive(relay: RunningRelay) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(relay.url("/whep/sse"), data=await make_offer("recvonly"),
                             headers={"Content-Type": "application/sdp"}) as response:
            assert response.status == 409
            link = response.headers["Link"]
        assert 'rel="urn:ietf:params:whep:ext:core:server-sent-events"' in link
        url = relay.url(link[1:link.index(">")])
        async with http.post(url, json=["active", "inactive", "viewercount"]) as response:
            assert response.status == 201
            location = relay.url(response.headers["Location"])
        async with http.post(url, data="nope") as response:
            assert response.status == 400
        async with http.get(location) as events:
            assert await next_event(events) == ("inactive", {})
            assert await next_event(events) == ("viewercount", {"viewercount": 0})
            async with WhipClient(relay.url("/whip/sse"), [TestPatternTrack(160, 120)]):
                assert await next_event(events) == ("active", {})
                async with WhepClient(relay.url("/whep/sse"), kinds=("video",)):
                    assert await next_event(events) == ("viewercount", {"viewercount": 1})
            seen = [await next_event(events), await next_event(events)]
            assert ("inactive", {}) in seen and ("viewercount", {"viewercount": 0}) in seen


async def test_pages_are_served(relay: RunningRelay) -> None:
    async with aiohttp.ClientSession() as http:
        for path, marker in (("/", "dashboard.js"), ("/publish/cam", "publish.js"), ("/watch/cam", "watch.js"),
                             ("/static/relay-client.js", "WhipSession")):
            async with http.get(relay.url(path)) as response:
                assert response.status == 200 and marker in await response.text()
        async with http.get(relay.url("/watch/..%2Fx")) as response:
            assert response.status in (400, 404)


async def test_missing_asset_is_a_problem_and_events_need_the_view_token() -> None:
    relay = await start_relay({"auth": {"view_token": "seen"}})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(relay.url("/static/nope.js")) as response:
                assert response.status == 404 and response.content_type == "application/problem+json"
            async with http.get(relay.url("/static/..%2Fpyproject.toml")) as response:
                assert response.status == 404
            url = relay.url("/api/streams/x/events")
            async with http.post(url, json=["active"]) as response:
                assert response.status == 401
            async with http.post(url + "?token=seen", json=["active"]) as response:
                assert response.status == 201
    finally:
        await relay.server.close()
