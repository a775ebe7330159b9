"""Every client-caused error: the right 4xx and an RFC 9457 body that says what to fix."""

from __future__ import annotations

import aiohttp
import pytest

from relay.client import WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..conftest import RunningRelay, assert_problem, make_offer, request, start_relay


async def test_wrong_content_type_is_415(relay: RunningRelay) -> None:
    response, body = await request("POST", relay.url("/whip/a"), "v=0", **{"Content-Type": "text/plain"})
    assert_problem(response, body, 415, "application/sdp")
    assert response.headers["Accept-Post"] == "application/sdp"


@pytest.mark.parametrize("sdp", ["hello", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n", "v=0\r\nm=video x y z\r\n"])
async def test_malformed_sdp_is_400(relay: RunningRelay, sdp: str) -> None:
    for kind in ("whip", "whep"):
        response, body = await request("POST", relay.url(f"/{kind}/a"), sdp, **{"Content-Type": "application/sdp"})
        if kind == "whep" and response.status == 409:
            continue  # no publisher is checked after the body: both answers are right
        assert_problem(response, body, 400, "sdp")


async def test_body_over_limit_is_413(relay: RunningRelay) -> None:
    big = "v=0\r\n" + "a=x\r\n" * 20000
    response, body = await request("POST", relay.url("/whip/a"), big, **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 413, "bytes")


async def test_bad_stream_name_is_400(relay: RunningRelay) -> None:
    offer = await make_offer()
    response, body = await request("POST", relay.url("/whip/a.b"), offer, **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 400, "letters")


async def test_unknown_session_is_404(relay: RunningRelay) -> None:
    for method in ("PATCH", "DELETE"):
        response, body = await request(method, relay.url("/whip/a/nosuchsession"), "a=end-of-candidates",
                                       **{"Content-Type": "application/trickle-ice-sdpfrag"})
        assert_problem(response, body, 404, "session")


async def test_whep_without_publisher_is_409_with_retry_after(relay: RunningRelay) -> None:
    response, body = await request("POST", relay.url("/whep/nobody"), await make_offer("recvonly"),
                                   **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 409, "no live publisher")
    assert int(response.headers["Retry-After"]) > 0


async def test_wrong_direction_is_400(relay: RunningRelay) -> None:
    response, body = await request("POST", relay.url("/whip/a"), await make_offer("recvonly"),
                                   **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 400, "sendonly")


async def test_unsupported_codec_names_what_to_send() -> None:
    running = await start_relay({"codecs": {"video": ["H264"]}})
    try:
        response, body = await request("POST", running.url("/whip/a"), await make_offer(video_codec="video/VP8"),
                                       **{"Content-Type": "application/sdp"})
        assert_problem(response, body, 422, "H.264", "VP8")
    finally:
        await running.server.close()


async def test_session_errors_second_publisher_and_viewer_codec(relay: RunningRelay) -> None:
    async with WhipClient(relay.url("/whip/live"), [TestPatternTrack(160, 120), ToneTrack()], video_codec="VP8") as pub:
        sdp = {"Content-Type": "application/sdp"}
        response, body = await request("POST", relay.url("/whip/live"), await make_offer(), **sdp)
        assert_problem(response, body, 409, "already has a publisher")

        response, body = await request("POST", relay.url("/whep/live"),
                                       await make_offer("recvonly", video_codec="video/H264"), **sdp)
        assert_problem(response, body, 422, "VP8")

        frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
        restart = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
        response, body = await request("PATCH", pub.location, restart, **frag, **{"If-Match": "*"})
        assert_problem(response, body, 422, "restart")

        candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        response, body = await request("PATCH", pub.location, candidate, **frag, **{"If-Match": '"stale"'})
        assert_problem(response, body, 412, "ETag")
        response, _ = await request("PATCH", pub.location, candidate + "a=candidate:garbage\r\n", **frag,
                                    **{"If-Match": pub.etag})
        assert response.status == 204

        response, body = await request("PATCH", pub.location, candidate, **sdp)
        assert_problem(response, body, 415, "trickle-ice-sdpfrag")

        # the spec's trickle example repeats the session's current credentials: not a restart
        ice = [line for line in pub.pc.localDescription.sdp.splitlines() if line.startswith("a=ice-")]
        response, _ = await request("PATCH", pub.location, "\r\n".join(ice[:2]) + "\r\n" + candidate, **frag,
                                    **{"If-Match": pub.etag})
        assert response.status == 204


async def test_options_head_and_get(relay: RunningRelay) -> None:
    for kind in ("whip", "whep"):
        response, _ = await request("OPTIONS", relay.url(f"/{kind}/a"), Origin="http://example.test")
        assert response.status == 204
        assert response.headers["Accept-Post"] == "application/sdp"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in response.headers["Access-Control-Expose-Headers"]
        assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
        response, _ = await request("GET", relay.url(f"/{kind}/a"))
        assert response.status == 204
    response, _ = await request("HEAD", relay.url("/whep/a"))
    assert response.status == 200 and response.content_type == "application/sdp"


async def test_unknown_route_and_method_are_problems(relay: RunningRelay) -> None:
    response, body = await request("GET", relay.url("/nothing/here"))
    assert_problem(response, body, 404, "/nothing/here")
    response, body = await request("PUT", relay.url("/whip/a"))
    assert_problem(response, body, 405, "PUT")


async def test_inputs_that_once_gave_500_get_4xx(relay: RunningRelay) -> None:
    for method in ("GET", "HEAD"):
        async with aiohttp.ClientSession() as http:
            async with http.request(method, relay.url("/static/%00")) as response:
                assert response.status == 404
    response, body = await request("POST", relay.url("/api/streams/cam/events"), "[" * 30000 + "]" * 30000,
                                   **{"Content-Type": "application/json"})
    assert_problem(response, body, 400, "JSON array")


async def test_an_offer_without_fingerprint_is_400_before_aiortc_sees_it(relay: RunningRelay) -> None:
    offer = "\r\n".join(line for line in (await make_offer()).splitlines() if not line.startswith("a=fingerprint"))
    response, body = await request("POST", relay.url("/whip/nofp"), offer + "\r\n",
                                   **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 400, "fingerprint")
    assert len(relay.ctx.sessions) == 0 and relay.ctx.streams.get("nofp") is None


async def test_a_fault_of_relay_during_negotiation_is_a_logged_500(
    relay: RunningRelay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug in Relay")

    sdp = {"Content-Type": "application/sdp"}
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(160, 120), ToneTrack()], video_codec="VP8"):
        await relay.wait_until(lambda: len(relay.ctx.streams.get("cam").tracks) == 2)
        monkeypatch.setattr("relay.media.viewer.aiortc_patch.forward_sender", broken)
        response, body = await request("POST", relay.url("/whep/cam"), await make_offer("recvonly"), **sdp)
        assert_problem(response, body, 500, "server log")
        assert "a bug in Relay" in caplog.text  # the traceback is in the log, not in the answer
        assert "a bug in Relay" not in str(body)
        assert relay.ctx.sessions.count("whep") == 0 and not relay.ctx.streams.get("cam").viewers
    monkeypatch.setattr("relay.media.stream.Stream.add_receiver", broken)
    response, body = await request("POST", relay.url("/whip/cam2"), await make_offer(), **sdp)
    assert_problem(response, body, 500, "server log")
    assert len(relay.ctx.sessions) == 0 and not relay.ctx.streams.get("cam2").live
