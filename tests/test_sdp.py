"""Offer checks and codec choice, on offers made by a real aiortc peer."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

import relay.media.aiortc_patch  # noqa: F401  (registers VP9 and the other codecs Relay forwards)
from relay.sdp import (
    FORWARD_ONLY,
    SdpError,
    accepts,
    capabilities,
    choose_codec,
    client_capabilities,
    h264_profile,
    negotiated,
    offered_names,
    parse_fragment,
    parse_offer,
)
from relay.server.problems import Problem
from relay.server.whep import check_codecs


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


CHROMIUM_OFFER = Path(__file__).parent / "offers" / "chromium-156-publish.sdp"


def chromium_offer(first: list[str]) -> str:
    """Chromium's publish offer (VP8, H.264..., AV1, VP9 profile 0, then 2), the payload types `first` listed first.

    Only the m= line changes, as the a=rtpmap lines need not follow it.
    """
    sdp = CHROMIUM_OFFER.read_bytes().decode()
    line = re.search(r"^m=video .*$", sdp, flags=re.M)
    assert line is not None
    head, formats = line.group(0).split()[:3], line.group(0).split()[3:]
    formats = first + [f for f in formats if f not in first]
    return sdp.replace(line.group(0), " ".join(head + formats))


@pytest.mark.parametrize("first,expected", [
    ([], "video/VP8"),  # Chromium's own order: VP9 is listed after VP8 and H.264
    (["98"], "video/VP9"),
    (["100", "98"], "video/VP9"),  # profile 2 listed first: the profile-0 entry is taken
    (["45"], "video/AV1"),
])
def test_vp9_and_av1_are_taken_when_the_publisher_lists_them_first(first: list[str], expected: str) -> None:
    media = next(m for m in parse_offer(chromium_offer(first)).media if m.kind == "video")
    assert choose_codec(media, ["VP8", "H264", "VP9", "AV1"]) == expected
    codec = negotiated(media, "video/VP9")
    assert codec is not None and codec.payloadType == 98 and str(codec.parameters["profile-id"]) == "0"
    assert accepts(media, "video/AV1")


def test_vp9_of_profile_2_only_is_not_taken() -> None:
    sdp = chromium_offer(["100"])
    sdp = re.sub(r"^a=(rtpmap|fmtp|rtcp-fb):98 .*\r\n", "", sdp, flags=re.M).replace(" 98 ", " ", 1)
    media = next(m for m in parse_offer(sdp).media if m.kind == "video")
    assert not accepts(media, "video/VP9")
    assert choose_codec(media, ["VP9"]) is None
    assert "VP9 (profile-id=2)" in offered_names(media)


async def test_aiortc_clients_never_offer_what_aiortc_cannot_send_or_decode() -> None:
    assert all(c.mimeType.lower() not in FORWARD_ONLY for c in client_capabilities("video"))
    assert any(c.mimeType.lower() == "video/vp9" for c in capabilities("video/VP9"))
    assert any(c.mimeType.lower() == "video/av1" for c in capabilities("video/AV1"))
    media = parse_offer(await offer_with([c.mimeType.lower() for c in client_capabilities("video")
                                          if not c.mimeType.lower().endswith("/rtx")])).media[0]
    assert not accepts(media, "video/VP9") and not accepts(media, "video/AV1")


async def test_a_viewer_without_vp9_gets_a_422_naming_it() -> None:
    stream = SimpleNamespace(name="cam", tracks={"video": SimpleNamespace(codec="VP9", profile=None)})
    viewer = parse_offer(await offer_with(["video/vp8"]))
    with pytest.raises(Problem) as raised:
        check_codecs(viewer, stream)  # type: ignore[arg-type]
    assert raised.value.status_code == 422
    assert "carries video as VP9 (profile-id=0)" in raised.value.text and "the offer has VP8" in raised.value.text
    check_codecs(parse_offer(await offer_with(["video/vp9"])), stream)  # type: ignore[arg-type]
