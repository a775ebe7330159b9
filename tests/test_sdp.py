"""Offer checks and codec choice, on offers made by a real aiortc peer."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

from relay.sdp import SdpError, choose_codec, parse_fragment, parse_offer


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


async def test_h264_high_profile_only_is_refused() -> None:
    sdp = await offer_with(["video/h264"])
    high = sdp.replace("profile-level-id=42001f", "profile-level-id=640c1f").replace(
        "profile-level-id=42e01f", "profile-level-id=640c1f")
    assert choose_codec(parse_offer(high).media[0], ["VP8", "H264"]) is None


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
