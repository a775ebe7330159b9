"""A stream's view token guards its metadata too: /api/streams, /api/events, /metrics; and downloads follow no symlink.

Streams: "public" (no view token) and "secret" (view token PEEK). The
operator's `auth.metrics_token` (OPS, configured as its hash) shows everything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack
from relay.config import ConfigError, ForwardConfig, load_config
from relay.media.stream import Streams
from relay.names import hash_token
from relay.server.events import EventHub

from ..conftest import RunningRelay, start_relay

PEEK, OPS = "peek-secret", "ops-secret"
SETTINGS = {"auth": {"metrics_token": hash_token(OPS), "streams": {"secret": {"view_token": PEEK}}}}
ANON: dict[str, str] = {}
VIEWER = {"Authorization": f"Bearer {PEEK}"}
OPERATOR = {"Authorization": f"Bearer {OPS}"}
WRONG = {"Authorization": "Bearer nope"}


@pytest.fixture
async def locked() -> AsyncIterator[RunningRelay]:
    relay = await start_relay(SETTINGS)
    try:
        yield relay
    finally:
        await relay.server.close()


async def get(relay: RunningRelay, path: str, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http, http.get(relay.url(path), headers=headers) as response:
        body = await response.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body
        return response.status, parsed, response.headers


async def names(relay: RunningRelay, path: str, headers: dict[str, str]) -> list[str]:
    status, body, _ = await get(relay, path, headers)
    assert status == 200, body
    return [s["name"] for s in body["streams"]]


async def first_event(relay: RunningRelay, path: str, headers: dict[str, str]) -> list[str]:
    """The stream names of the first `streams` event of /api/events."""
    async with aiohttp.ClientSession() as http, http.get(relay.url(path), headers=headers) as response:
        assert response.status == 200
        async with asyncio.timeout(5):
            async for raw in response.content:
                line = raw.decode()
                if line.startswith("data: "):
                    return [s["name"] for s in json.loads(line[6:])["streams"]]
    raise AssertionError("no event")


async def scrape(relay: RunningRelay, path: str, headers: dict[str, str]) -> tuple[str, dict[tuple[str, str], float]]:
    status, body, _ = await get(relay, path, headers)
    assert status == 200
    text = body.decode()
    per_stream = {(s.name, s.labels["stream"]): s.value for family in text_string_to_metric_families(text)
                  for s in family.samples if "stream" in s.labels}
    return text, per_stream


async def publish_both(relay: RunningRelay) -> tuple[WhipClient, WhipClient]:
    public = WhipClient(relay.url("/whip/public"), [TestPatternTrack(160, 120)])
    secret = WhipClient(relay.url("/whip/secret"), [TestPatternTrack(160, 120)])
    await public.start()
    await secret.start()
    await relay.wait_until(lambda: all(s.live for s in relay.ctx.streams) and len(list(relay.ctx.streams)) == 2)
    return public, secret


async def test_stream_list_and_lookup_need_the_view_token(locked: RunningRelay) -> None:
    public, secret = await publish_both(locked)
    try:
        assert await names(locked, "/api/streams", ANON) == ["public"]
        assert await names(locked, "/api/streams", WRONG) == ["public"]
        assert await names(locked, "/api/streams", VIEWER) == ["public", "secret"]
        assert await names(locked, f"/api/streams?token={PEEK}", ANON) == ["public", "secret"]
        assert await names(locked, "/api/streams", OPERATOR) == ["public", "secret"]
        assert await names(locked, f"/api/streams?token={OPS}", ANON) == ["public", "secret"]

        status, body, headers = await get(locked, "/api/streams/secret", ANON)
        assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="relay"', body
        assert body["type"] == "urn:relay:problem:unauthorized" and "token" in body["detail"]
        assert "live" not in body and "viewers" not in body
        status, body, headers = await get(locked, "/api/streams/secret", WRONG)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        status, body, _ = await get(locked, "/api/streams/secret", {"Authorization": f"Bearer {hash_token(OPS)}"})
        assert status == 401, "the configured hash is not the token"
        for headers in (VIEWER, OPERATOR):
            status, body, _ = await get(locked, "/api/streams/secret", headers)
            assert status == 200 and body["name"] == "secret" and body["live"] is True
        status, body, _ = await get(locked, "/api/streams/public", ANON)
        assert status == 200 and body["name"] == "public"
        assert "recording_error" in body and body["recording_error"] is None
    finally:
        await public.close()
        await secret.close()


async def test_a_refusal_says_nothing_about_whether_the_stream_exists() -> None:
    relay = await start_relay({"auth": {"view_token": PEEK}})  # every stream has a view token
    try:
        async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(160, 120)]):
            await relay.wait_until(lambda: (s := relay.ctx.streams.get("cam")) is not None and s.live)
            live = await get(relay, "/api/streams/cam", ANON)
            ghost = await get(relay, "/api/streams/ghost", ANON)
            assert live[0] == ghost[0] == 401
            assert live[1]["type"] == ghost[1]["type"] and live[2]["WWW-Authenticate"] == ghost[2]["WWW-Authenticate"]
            assert await names(relay, "/api/streams", ANON) == []
            assert await names(relay, "/api/streams", VIEWER) == ["cam"]
            assert (await get(relay, "/api/streams/ghost", VIEWER))[0] == 404
            assert await first_event(relay, "/api/events", ANON) == []
            assert await first_event(relay, f"/api/events?token={PEEK}", ANON) == ["cam"]
    finally:
        await relay.server.close()


async def test_events_carry_only_the_streams_the_subscriber_may_view(locked: RunningRelay) -> None:
    public, secret = await publish_both(locked)
    try:
        assert await first_event(locked, "/api/events", ANON) == ["public"]
        assert await first_event(locked, "/api/events", WRONG) == ["public"]
        assert await first_event(locked, "/api/events", VIEWER) == ["public", "secret"]
        assert await first_event(locked, f"/api/events?token={PEEK}", ANON) == ["public", "secret"]
        assert await first_event(locked, f"/api/events?token={OPS}", ANON) == ["public", "secret"]

        # An anonymous subscriber never hears of the secret stream, even while it changes.
        seen: list[str] = []
        async with aiohttp.ClientSession() as http, http.get(locked.url("/api/events")) as response:
            async def read() -> None:
                async for raw in response.content:
                    seen.append(raw.decode())

            reader = asyncio.create_task(read())
            async with WhepClient(locked.url("/whep/secret"), kinds=("video",), token=PEEK):
                await locked.wait_until(lambda: locked.ctx.streams.get("secret").viewers)
                await asyncio.sleep(2.5)  # a heartbeat at least
            reader.cancel()
        data = [json.loads(line[6:]) for line in seen if line.startswith("data: ")]
        assert len(data) >= 2 and all([s["name"] for s in d["streams"]] == ["public"] for d in data)
        assert "secret" not in "".join(seen)
    finally:
        await public.close()
        await secret.close()


async def test_a_hidden_stream_does_not_wake_the_subscriber() -> None:
    """Its changes would otherwise show as the timing of events."""
    streams = Streams(ForwardConfig())
    hub = EventHub(streams)
    changes = hub.changes(None, lambda name: name == "open").__aiter__()
    await anext(changes)  # the first comes at once
    woken = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.05)
    streams.get_or_create("hidden").set_recording(True)
    await asyncio.sleep(0.3)
    assert not woken.done()
    streams.get_or_create("open").set_recording(True)
    async with asyncio.timeout(1):
        await woken
    hub.close()
    with pytest.raises(StopAsyncIteration):
        await anext(changes)


async def test_metrics_name_protected_streams_only_for_the_metrics_token(locked: RunningRelay) -> None:
    public, secret = await publish_both(locked)
    try:
        for headers, path in ((ANON, "/metrics"), (WRONG, "/metrics"), (VIEWER, "/metrics"),
                              (ANON, f"/metrics?token={PEEK}")):
            text, per_stream = await scrape(locked, path, headers)
            assert per_stream == {("relay_stream_viewers", "public"): 0}, (headers, path)
            assert "secret" not in text
            assert "relay_streams_live 2.0" in text  # totals name no stream
        for headers, path in ((OPERATOR, "/metrics"), (ANON, f"/metrics?token={OPS}")):
            _, per_stream = await scrape(locked, path, headers)
            assert per_stream == {("relay_stream_viewers", "public"): 0, ("relay_stream_viewers", "secret"): 0}
    finally:
        await public.close()
        await secret.close()


async def test_open_streams_need_no_token_anywhere(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(160, 120)]):
        await relay.wait_until(lambda: (s := relay.ctx.streams.get("cam")) is not None and s.live)
        assert await names(relay, "/api/streams", ANON) == ["cam"]
        assert (await get(relay, "/api/streams/cam", ANON))[0] == 200
        assert await first_event(relay, "/api/events", ANON) == ["cam"]
        _, per_stream = await scrape(relay, "/metrics", ANON)
        assert per_stream == {("relay_stream_viewers", "cam"): 0}
        # Any token is simply ignored where none is needed.
        assert await names(relay, "/api/streams", WRONG) == ["cam"]
    for page in ("/", "/static/ui.js", "/static/dashboard.js"):
        assert (await get(relay, page, ANON))[0] == 200


@pytest.mark.parametrize("token,words", [("", "non-empty"), ("two words", "spaces"), ("sha256:abc", "64")])
def test_the_metrics_token_is_checked_like_the_others(token: str, words: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.metrics_token: .*" + words):
        load_config(data={"auth": {"metrics_token": token}})
    assert load_config(data={"auth": {"metrics_token": hash_token(OPS)}}).auth.metrics_token == hash_token(OPS)
    assert load_config().auth.metrics_token is None


# --- Recording downloads follow no symlink ----------------------------------------------------------

SECRET_FILE = "20250102T030405.678Z.webm"
PUBLIC_FILE = "20250102T030406.000Z.webm"
LINK_FILE = "20250102T030407.000Z.webm"
OUTSIDE_FILE = "20250102T030408.000Z.webm"
SECRET_BYTES = b"secret recording bytes " * 64
PUBLIC_BYTES = b"public recording bytes " * 64


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[RunningRelay, Path]]:
    """rec/secret/<file>; rec/public/<file> real, and <link> -> ../secret/<file>; rec/alias -> secret."""
    root = tmp_path / "rec"
    (root / "secret").mkdir(parents=True)
    (root / "public").mkdir()
    (root / "secret" / SECRET_FILE).write_bytes(SECRET_BYTES)
    (root / "public" / PUBLIC_FILE).write_bytes(PUBLIC_BYTES)
    (root / "public" / LINK_FILE).symlink_to(Path("..") / "secret" / SECRET_FILE)
    (tmp_path / "outside.webm").write_bytes(SECRET_BYTES)
    (root / "public" / OUTSIDE_FILE).symlink_to(tmp_path / "outside.webm")
    (root / "alias").symlink_to("secret", target_is_directory=True)
    relay = await start_relay(SETTINGS | {"recording": {"dir": str(root)}})
    try:
        yield relay, root
    finally:
        await relay.server.close()


async def test_recording_downloads_follow_no_symlink(linked: tuple[RunningRelay, Path]) -> None:
    relay, root = linked
    for path in (f"/api/recordings/public/{LINK_FILE}", f"/api/recordings/public/{OUTSIDE_FILE}",
                 f"/api/recordings/alias/{SECRET_FILE}"):
        for headers in (ANON, VIEWER, OPERATOR):
            status, body, _ = await get(relay, path, headers)
            assert status == 404 and body["type"] == "urn:relay:problem:unknown-recording", (path, body)
        async with aiohttp.ClientSession() as http, http.head(relay.url(path)) as response:
            assert response.status == 404
    # The real files still download, each with its own stream's token.
    status, body, _ = await get(relay, f"/api/recordings/public/{PUBLIC_FILE}", ANON)
    assert status == 200 and body == PUBLIC_BYTES
    assert (await get(relay, f"/api/recordings/secret/{SECRET_FILE}", ANON))[0] == 401
    status, body, _ = await get(relay, f"/api/recordings/secret/{SECRET_FILE}", VIEWER)
    assert status == 200 and body == SECRET_BYTES
    # Nor can a link be deleted through the API (or its target with it).
    async with aiohttp.ClientSession() as http, http.delete(relay.url(f"/api/recordings/public/{LINK_FILE}")) as r:
        assert r.status == 404
    assert (root / "secret" / SECRET_FILE).read_bytes() == SECRET_BYTES


async def test_the_catalogue_lists_no_symlink(linked: tuple[RunningRelay, Path]) -> None:
    relay, _ = linked

    async def listed(headers: dict[str, str]) -> list[tuple[str, str]]:
        status, body, _ = await get(relay, "/api/recordings", headers)
        assert status == 200
        return sorted((r["stream"], r["file"]) for r in body["recordings"])

    assert await listed(ANON) == [("public", PUBLIC_FILE)]
    assert await listed(VIEWER) == [("public", PUBLIC_FILE), ("secret", SECRET_FILE)]
    status, body, _ = await get(relay, "/api/recordings?stream=alias", ANON)
    assert status == 200 and body["recordings"] == []
    entry = (await get(relay, "/api/recordings?stream=public", ANON))[1]["recordings"][0]
    assert entry["error"] is None and entry["recording"] is False
