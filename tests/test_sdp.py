"""Offer checks and codec choice, on offers made by a real aiortc peer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

from relay.sdp import SdpError, accepts, choose_codec, h264_profile, parse_fragment, parse_offer


async def offer_with(video_mimes: list[str]) -> str:
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for mime in video_mimes for c in caps if c.mimeType.lower() == mime] +
            [c for c in caps if c.mimeType.lower() == "video/rtx"]
        )
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.parametrize("order,expected", [
    (["video/h264", "video/vp8"], "video/H264"),
    (["video/vp8", "video/h264"], "video/VP8"),
])
async def test_the_publishers_order_decides_among_allowed_codecs(order: list[str], expected: str) -> None:
    media = parse_offer(await offer_with(order)).media[0]
    assert choose_codec(media, ["VP8", "H264"]) == expected
    assert choose_codec(media, ["VP8"]) == "video/VP8"


async def test_h264_of_any_profile_is_taken_as_offered() -> None:
    sdp = await offer_with(["video/h264"])
    high = re.sub(r"profile-level-id=[0-9a-f]{6}", "profile-level-id=640c1f", sdp)
    media = parse_offer(high).media[0]
    assert choose_codec(media, ["VP8", "H264"]) == "video/H264"
    assert h264_profile(media, "video/H264") == "640c1f"
    assert accepts(media, "video/H264", "640c1f") and accepts(media, "video/H264", "640c0d")
    assert not accepts(media, "video/H264", "42e01f")


async def test_a_viewer_below_the_level_takes_it_only_with_level_asymmetry() -> None:
    sdp = re.sub(r"profile-level-id=[0-9a-f]{6}", "profile-level-id=640c1f", await offer_with(["video/h264"]))
    assert accepts(parse_offer(sdp).media[0], "video/H264", "640c28")
    strict = sdp.replace("level-asymmetry-allowed=1;", "")
    assert "level-asymmetry-allowed" not in strict
    assert not accepts(parse_offer(strict).media[0], "video/H264", "640c28")


def test_garbage_is_refused_with_a_reason() -> None:
    with pytest.raises(SdpError, match="v=0"):
        parse_offer("hello")
    with pytest.raises(SdpError, match="no audio or video"):
        parse_offer("v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n")


def test_fragment_candidates_and_restart_credentials() -> None:
    fragment = parse_fragment(
        "a=ice-ufrag:u\r\na=ice-pwd:p\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n")
    assert (fragment.ufrag, fragment.pwd, fragment.end_of_candidates) == ("u", "p", True)
    assert fragment.candidates == ["candidate:1 1 udp 1 127.0.0.1 5000 typ host"]
    with pytest.raises(SdpError):
        parse_fragment("not sdp")


CHROMIUM_SIMULCAST = (Path(__file__).parent / "offers" / "chromium-156-simulcast-publish.sdp").read_bytes().decode()


@pytest.mark.parametrize("rids,simulcast,chosen", [
    (["q send", "h send", "f send"], "q;h;f", "f"),  # Chromium's own sample names, low to high
    (["l send", "m send", "h send"], "l;m;h", "h"),
    (["0 send", "1 send", "2 send"], "0;1;2", "0"),  # OBS 32: layer 0 is full size
    (["a send max-width=320;max-height=180", "b send max-width=1280;max-height=720", "c send max-width=640"],
     "a;b;c", "b"),
    (["x send", "y send"], "y;~x", "y"),  # nothing to go by: the first listed, paused or not
])
def test_the_full_simulcast_layer_is_chosen(rids: list[str], simulcast: str, chosen: str) -> None:
    sdp = re.sub(r"(a=rid:.*\r\n)+a=simulcast:.*\r\n",
                 "".join(f"a=rid:{rid}\r\n" for rid in rids) + f"a=simulcast:send {simulcast}\r\n",
                 CHROMIUM_SIMULCAST)
    assert f"a=simulcast:send {simulcast}" in sdp
    offer = parse_offer(sdp)
    video = offer.media[0]
    assert video.rid == chosen
    assert video.simulcast_answer[-1] == f"a=simulcast:recv {simulcast}"
    assert "a=simulcast" not in offer.sdp and "a=rid" not in offer.sdp  # aiortc never sees them
