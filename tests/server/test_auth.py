"""Publish and view tokens: every accepted form, hashed tokens, overrides, and what a refusal says."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from relay.client import SessionError, WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack
from relay.config import ConfigError, load_config
from relay.names import hash_token
from relay.server.auth import RedactingAccessLogger, required_token

from ..conftest import RunningRelay, assert_problem, finished, free_port, merge, recordings, relay_with, request

PUBLISH, VIEW, STUDIO = "pub-secret", "view-secret", "studio-secret"
SETTINGS = {"auth": {
    "open_publish": False,
    "publish_token": hash_token(PUBLISH),  # the file holds only the hash
    "view_token": VIEW,
    "streams": {"studio": {"publish_token": STUDIO}},
}}
SDP = {"Content-Type": "application/sdp"}
NOT_AN_OFFER = "v=0\r\n"  # passes auth, then fails as SDP: a 400 proves the token was taken


@pytest.fixture
async def locked() -> AsyncIterator[RunningRelay]:
    async with relay_with(SETTINGS) as running:
        yield running


def assert_unauthorized(response: aiohttp.ClientResponse, body: object, error: str | None) -> None:
    assert_problem(response, body, 401, "token")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="relay"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


@pytest.mark.parametrize("kind,token", [("whip", PUBLISH), ("whep", VIEW)])
async def test_each_token_form_is_accepted(locked: RunningRelay, kind: str, token: str) -> None:
    url = locked.url(f"/{kind}/cam")
    for headers, query in [({"Authorization": f"Bearer {token}"}, ""),
                           ({"Authorization": f"bearer  {token}"}, ""),
                           ({"Authorization": token}, ""),
                           ({}, f"?token={token}")]:
        response, body = await request("POST", url + query, NOT_AN_OFFER, **SDP, **headers)
        assert_problem(response, body, 400, "sdp")


@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_missing_and_wrong_tokens_are_401(locked: RunningRelay, kind: str) -> None:
    url = locked.url(f"/{kind}/cam")
    response, body = await request("POST", url, NOT_AN_OFFER, **SDP)
    assert_unauthorized(response, body, None)
    wrong = [{"Authorization": "Bearer nope"}, {"Authorization": "Basic " + PUBLISH},
             {"Authorization": f"Bearer {hash_token(PUBLISH)}"}]  # the hash is not the token
    for headers in wrong:
        response, body = await request("POST", url, NOT_AN_OFFER, **SDP, **headers)
        assert_unauthorized(response, body, "invalid_token")
    response, body = await request("POST", url + "?token=nope", NOT_AN_OFFER, **SDP)
    assert_unauthorized(response, body, "invalid_token")
    other = VIEW if kind == "whip" else PUBLISH  # one role's token is no good for the other
    response, body = await request("POST", url, NOT_AN_OFFER, **SDP, Authorization=f"Bearer {other}")
    assert_unauthorized(response, body, "invalid_token")


async def test_per_stream_override_replaces_the_default(locked: RunningRelay) -> None:
    url = locked.url("/whip/studio")
    response, body = await request("POST", url, NOT_AN_OFFER, **SDP, Authorization=f"Bearer {PUBLISH}")
    assert_unauthorized(response, body, "invalid_token")
    response, body = await request("POST", url, NOT_AN_OFFER, **SDP, Authorization=f"Bearer {STUDIO}")
    assert_problem(response, body, 400, "sdp")
    config = load_config(data=SETTINGS).auth
    assert required_token(config, "studio", "view") == VIEW  # not overridden: the default holds


async def test_session_patch_and_delete_need_the_token(locked: RunningRelay) -> None:
    async with WhipClient(locked.url("/whip/cam"), [TestPatternTrack(160, 120)], token=PUBLISH) as pub:
        async with WhepClient(locked.url("/whep/cam"), kinds=("video",), token=VIEW) as viewer:
            frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
            for location, token in ((pub.location, PUBLISH), (viewer.location, VIEW)):
                response, body = await request("PATCH", location, "a=end-of-candidates\r\n", **frag)
                assert_unauthorized(response, body, None)
                response, body = await request("DELETE", location, Authorization="Bearer wrong")
                assert_unauthorized(response, body, "invalid_token")
                response, body = await request("GET", location)
                assert_unauthorized(response, body, None)
                response, _ = await request("PATCH", location, "a=end-of-candidates\r\n", **frag,
                                            Authorization=token)
                assert response.status == 204
            assert len(locked.ctx.sessions) == 2, "a refused DELETE must not end the session"
            response, _ = await request("DELETE", viewer.location + f"?token={VIEW}")
            assert response.status == 200
            await locked.wait_until(lambda: locked.ctx.sessions.count("whep") == 0)
    await locked.wait_until(lambda: len(locked.ctx.sessions) == 0)


async def test_client_without_token_gets_the_problem(locked: RunningRelay) -> None:
    client = WhipClient(locked.url("/whip/cam"), [TestPatternTrack(160, 120)])
    with pytest.raises(SessionError) as caught:
        await client.start()
    assert caught.value.status == 401 and "token" in caught.value.detail
    assert len(locked.ctx.sessions) == 0


async def test_closed_publishing_is_403_and_open_viewing_needs_nothing() -> None:
    async with relay_with({"auth": {"open_publish": False, "streams": {"s": {"view_token": VIEW}}}}) as running:
        response, body = await request("POST", running.url("/whip/any"), NOT_AN_OFFER, **SDP,
                                       Authorization="Bearer guess")
        assert_problem(response, body, 403, "publish_token")
        response, body = await request("POST", running.url("/whep/any"), NOT_AN_OFFER, **SDP)
        assert_problem(response, body, 400, "sdp")  # no view token for "any": open
        response, body = await request("POST", running.url("/whep/s"), NOT_AN_OFFER, **SDP)
        assert_unauthorized(response, body, None)


async def test_default_config_is_open(relay: RunningRelay) -> None:
    for kind in ("whip", "whep"):
        response, body = await request("POST", relay.url(f"/{kind}/x"), NOT_AN_OFFER, **SDP)
        assert_problem(response, body, 400, "sdp")


async def test_preflight_needs_no_token(locked: RunningRelay) -> None:
    response, _ = await request("OPTIONS", locked.url("/whip/cam"), Origin="http://example.test")
    assert response.status == 204
    response, _ = await request("OPTIONS", locked.url("/whip/cam/some-session"), Origin="http://example.test")
    assert response.status == 204


@pytest.mark.parametrize("token,words", [
    ("sha256:abc", "64 lowercase hex"),
    ("sha256:" + "A" * 64, "64 lowercase hex"),
    ("", "non-empty"),
    ("two words", "no spaces"),
])
def test_bad_configured_tokens_name_the_key(token: str, words: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.streams\.cam\.view_token: .*" + words):
        load_config(data={"auth": {"streams": {"cam": {"view_token": token}}}})
    with pytest.raises(ConfigError, match="auth.publish_token"):
        load_config(data={"auth": {"publish_token": token}})


def test_access_log_hides_query_tokens() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test-access")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    access = RedactingAccessLogger(logger, '%a "%r" %s "%{Referer}i"')
    req = make_mocked_request("POST", "/whep/cam?a=1&token=topsecret",
                              headers={"Referer": "http://x/watch/cam?token=topsecret"})
    access.log(req, aiohttp.web.Response(status=201), 0.01)
    assert records and "topsecret" not in records[0]
    assert "/whep/cam?a=1&token=***" in records[0] and "watch/cam?token=***" in records[0]


def test_hash_token_command() -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "hash-token"], input="test\n",
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert hash_token("test") == result.stdout.strip()


def serve_output(tmp_path: Path, host: str, settings: str = "") -> str:
    """Start `relay serve` until it says it serves; return what it logged."""
    config = tmp_path / "relay.yaml"
    config.write_text(settings)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--config", str(config),
                                    "--host", host, "--port", str(free_port()), "--workers", "1"],
                                   stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 20
            while "serving on" not in log.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(10)
    return log.read_text()


def test_serve_warns_when_publishing_is_open_beyond_loopback(tmp_path: Path) -> None:
    assert "anyone who can reach 0.0.0.0 may publish" in serve_output(tmp_path, "0.0.0.0")
    assert "may publish" not in serve_output(tmp_path, "127.0.0.1")
    assert "may publish" not in serve_output(tmp_path, "0.0.0.0", f"auth:\n  publish_token: {PUBLISH}\n")


async def test_recording_api_takes_the_stream_tokens(tmp_path: Path) -> None:
    async with relay_with(merge(SETTINGS, {"recording": {"dir": str(tmp_path)}})) as running:
        switch = running.url("/api/streams/cam/recording")
        response, body = await request("POST", switch)
        assert_unauthorized(response, body, None)
        response, body = await request("POST", switch, Authorization=f"Bearer {VIEW}")
        assert_unauthorized(response, body, "invalid_token")
        response, _ = await request("POST", switch, Authorization=f"Bearer {PUBLISH}")
        assert response.status == 200
        async with WhipClient(running.url("/whip/cam"), [ToneTrack()], token=PUBLISH):
            await running.wait_until(lambda: any(tmp_path.glob("cam/*.webm")))
            recorder = recordings(running).recorder("cam")
            await running.wait_until(lambda: recorder is not None and recorder.bytes_written > 1000)  # some audio
        await finished(running, "cam")
        response, body = await request("GET", running.url("/api/recordings?stream=cam"))
        assert_unauthorized(response, body, None)
        response, body = await request("GET", running.url("/api/recordings"))
        assert response.status == 200 and json.loads(body)["recordings"] == [], "listed without the view token"
        response, body = await request("GET", running.url(f"/api/recordings?token={VIEW}"))
        (listed,) = json.loads(body)["recordings"]
        response, body = await request("GET", running.url(listed["url"]))
        assert_unauthorized(response, body, None)
        async with aiohttp.ClientSession() as http:
            async with http.get(running.url(listed["url"]), headers={"Authorization": VIEW}) as download:
                assert download.status == 200 and len(await download.read()) == listed["size"]
        response, body = await request("DELETE", running.url(listed["url"]), Authorization=f"Bearer {VIEW}")
        assert_unauthorized(response, body, "invalid_token")
        response, _ = await request("DELETE", running.url(listed["url"]), Authorization=f"Bearer {PUBLISH}")
        assert response.status == 204 and not any(tmp_path.glob("cam/*.webm"))
        response, _ = await request("DELETE", switch, Authorization=f"Bearer {PUBLISH}")
        assert response.status == 200
