"""Offers as native stacks and browsers write them (tests/offers/): each gets a complete answer.

Every m= section of an offer is answered in its place: bundle-only sections as
media (RFC 8843), rejected ones with port 0 (never left to aiortc); H.264 of any
profile; simulcast with one layer forwarded. Media flow for GStreamer is in tests/native/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.client import WhepClient, WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack
from relay.sdp import capabilities

from ..conftest import RunningRelay, assert_problem, first_stamp, make_offer, request
from ..test_sdp import chromium_offer

OFFERS = Path(__file__).resolve().parents[1] / "offers"


def offer(name: str) -> str:
    """An offer as its stack wrote it (CRLF line ends kept)."""
    return (OFFERS / name).read_bytes().decode()


def sections(sdp: str) -> list[str]:
    """The m= sections of an SDP, each as one string."""
    return ["m=" + part for part in re.split(r"^m=", sdp.replace("\r\n", "\n"), flags=re.M)[1:]]


def attribute(section: str, name: str) -> list[str]:
    return re.findall(rf"^a={name}(?::(.*))?$", section, flags=re.M)


async def post(relay: RunningRelay, path: str, sdp: str) -> tuple[int, str | dict]:
    response, body = await request("POST", relay.url(path), sdp, **{"Content-Type": "application/sdp"})
    if response.status == 201:
        await request("DELETE", relay.url(response.headers["Location"]))
    return response.status, body


async def answer_to(relay: RunningRelay, path: str, sdp: str) -> list[str]:
    status, body = await post(relay, path, sdp)
    assert status == 201, body
    assert isinstance(body, str)
    return sections(body)


def with_section(sdp: str, section: str, bundle: bool = False) -> str:
    """`sdp` with one more m= section at its end (and its mid in BUNDLE if `bundle`)."""
    if bundle:
        mid = attribute(section, "mid")[0]
        sdp = re.sub(r"^(a=group:BUNDLE .*)$", rf"\1 {mid}", sdp, count=1, flags=re.M)
    return sdp + section.replace("\n", "\r\n")


async def test_gstreamer_bundle_only_audio_is_published(relay: RunningRelay) -> None:
    """webrtcbin max-bundle: m=audio 0 + a=bundle-only was a 400 ('audio' KeyError)."""
    video, audio = await answer_to(relay, "/whip/gst", offer("gstreamer-1.22-publish.sdp"))
    assert video.startswith("m=video ") and attribute(video, "mid") == ["video0"]
    assert audio.startswith("m=audio ") and attribute(audio, "mid") == ["audio1"]
    assert attribute(audio, "recvonly") == [""] and attribute(audio, "rtpmap") == ["111 opus/48000/2"]


async def test_gstreamer_viewer_gets_audio(relay: RunningRelay) -> None:
    """The bundle-only audio of a WHEP viewer was answered a=inactive."""
    async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]):
        video, audio = await answer_to(relay, "/whep/cam", offer("gstreamer-1.22-view.sdp"))
    assert attribute(video, "sendonly") == [""] and attribute(audio, "sendonly") == [""]
    assert attribute(audio, "rtpmap") == ["111 opus/48000/2"] and attribute(audio, "msid")


# The transport lines of the Chromium fixture, for sections added to it.
TRANSPORT = """c=IN IP4 0.0.0.0
a=ice-ufrag:HaZ9
a=ice-pwd:Dh0z7B8hesP8M1wIvc/mvcZ2
a=fingerprint:sha-256 4E:F2:C1:04:E0:C4:F4:5C:7C:29:DD:78:C9:DD:3A:9D:57:DA:E2:E4:BF:E4:E2:66:07:50:30:C5:F5:5C:D4:48
a=setup:actpass
"""

DATA_CHANNEL = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\n" + TRANSPORT + """a=mid:2
a=sctp-port:5000
"""

DISABLED_VIDEO = "m=video 0 UDP/TLS/RTP/SAVPF 96\n" + TRANSPORT + """a=mid:3
a=sendonly
a=rtcp-mux
a=rtpmap:96 VP8/90000
"""


REJECTED_DATA_CHANNEL = DATA_CHANNEL.replace("m=application 9", "m=application 0")


@pytest.mark.parametrize("extra", [REJECTED_DATA_CHANNEL, DISABLED_VIDEO], ids=["port-0-datachannel", "port-0-video"])
async def test_sections_relay_does_not_take_are_answered_rejected(relay: RunningRelay, extra: str) -> None:
    """A port-0 section outside BUNDLE (not bundle-only) is rejected: port 0 in its place, its mid kept."""
    answer = await answer_to(relay, "/whip/cam", with_section(offer("chromium-156-publish.sdp"), extra))
    assert len(answer) == 3
    video, audio, rejected = answer
    assert video.split()[1] != "0" and attribute(audio, "recvonly") == [""]
    assert rejected.split()[:3] == [*extra.split()[:1], "0", extra.split()[2]]
    assert attribute(rejected, "mid") == attribute(extra, "mid")


async def test_the_answer_bundles_only_the_answered_sections(relay: RunningRelay) -> None:
    status, body = await post(relay, "/whip/cam", with_section(offer("chromium-156-publish.sdp"), DISABLED_VIDEO,
                                                               True).replace("a=mid:3", "a=mid:3\r\na=bundle-only"))
    assert status == 400 and "one video" in str(body)  # a second video is media to answer, and one too many
    status, body = await post(relay, "/whip/cam", with_section(offer("chromium-156-publish.sdp"), DISABLED_VIDEO))
    assert status == 201 and isinstance(body, str)
    assert re.search(r"^a=group:BUNDLE 0 1\r?$", body, flags=re.M), body


@pytest.mark.parametrize("bundle", [True, False], ids=["bundled", "own-transport"])
async def test_a_data_channel_section_is_answered(relay: RunningRelay, bundle: bool) -> None:
    """m=application (SCTP) is answered in its place, for Relay's data channels (docs/datachannels.md)."""
    video, audio, data = await answer_to(relay, "/whip/cam", with_section(offer("chromium-156-publish.sdp"),
                                                                         DATA_CHANNEL, bundle))
    assert video.startswith("m=video ") and audio.startswith("m=audio ")
    assert data.startswith("m=application ") and data.split()[1] != "0", data
    assert attribute(data, "mid") == ["2"] and attribute(data, "sctp-port")


async def test_obs_offer_audio_first_h264_high(relay: RunningRelay) -> None:
    """libdatachannel's shape: audio first, session-level ICE/DTLS, High profile, IPv6 and mDNS candidates."""
    audio, video = await answer_to(relay, "/whip/obs", offer("obs-libdatachannel-publish.sdp"))
    assert audio.startswith("m=audio ") and video.startswith("m=video ")
    fmtp = attribute(video, "fmtp")
    assert len(fmtp) == 1 and "profile-level-id=640c1f" in fmtp[0] and "packetization-mode=1" in fmtp[0], fmtp
    assert relay.ctx.streams.get("obs") is None or not relay.ctx.streams.get("obs").live


@pytest.mark.parametrize("profile", ["640c1f", "64001f", "640028", "4d001f", "42001f", "42e01f"])
async def test_h264_of_any_profile_is_answered_with_that_profile(relay: RunningRelay, profile: str) -> None:
    sdp = offer("obs-libdatachannel-publish.sdp").replace("profile-level-id=640c1f", f"profile-level-id={profile}")
    _audio, video = await answer_to(relay, "/whip/obs", sdp)
    assert f"profile-level-id={profile}" in attribute(video, "fmtp")[0]


async def test_h264_without_packetization_mode_1_is_refused_clearly(relay: RunningRelay) -> None:
    sdp = offer("obs-libdatachannel-publish.sdp").replace("packetization-mode=1", "packetization-mode=0")
    response, body = await request("POST", relay.url("/whip/obs"), sdp, **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 422, "packetization-mode=1", "packetization-mode=0")


@pytest.mark.parametrize("first,answered,fmtp", [
    ([], "96 VP8/90000", None),
    (["100", "98"], "98 VP9/90000", "98 profile-id=0"),
    (["45"], "45 AV1/90000", "45 profile=0"),
])
async def test_chromium_publishes_vp8_by_default_and_vp9_or_av1_profile_0_when_it_lists_them_first(
        relay: RunningRelay, first: list[str], answered: str, fmtp: str | None) -> None:
    """Chromium lists VP8, H.264, AV1, then VP9 profiles 0 and 2; the m= line's order is its preference."""
    video = next(s for s in await answer_to(relay, "/whip/chrome", chromium_offer(first)) if s.startswith("m=video"))
    assert [line for line in attribute(video, "rtpmap") if "rtx" not in line] == [answered]
    if fmtp:
        assert attribute(video, "fmtp")[0] == fmtp


async def test_chromium_simulcast_is_accepted_with_every_layer(relay: RunningRelay) -> None:
    video, audio = await answer_to(relay, "/whip/sim", offer("chromium-156-simulcast-publish.sdp"))
    assert attribute(video, "simulcast") == ["recv q;h;f"]
    assert attribute(video, "rid") == ["q recv", "h recv", "f recv"]
    extensions = {line.split()[-1] for line in attribute(video, "extmap")}
    assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in extensions
    assert attribute(audio, "recvonly") == [""]


@pytest.mark.parametrize("setup,answered", [("actpass", "passive"), ("active", "passive"), ("passive", "active")])
async def test_setup_variants(relay: RunningRelay, setup: str, answered: str) -> None:
    sdp = offer("gstreamer-1.22-publish.sdp").replace("a=setup:actpass", f"a=setup:{setup}")
    for section in await answer_to(relay, "/whip/gst", sdp):
        assert attribute(section, "setup") == [answered]


async def test_ice_lite_offer_is_answered(relay: RunningRelay) -> None:
    sdp = offer("chromium-156-publish.sdp").replace("t=0 0\r\n", "t=0 0\r\na=ice-lite\r\n", 1)
    assert "a=ice-lite" in sdp
    assert len(await answer_to(relay, "/whip/lite", sdp)) == 2


async def test_an_offer_without_mid_is_refused_clearly(relay: RunningRelay) -> None:
    sdp = re.sub(r"^a=(mid:.*|group:BUNDLE.*)\r\n", "", offer("chromium-156-publish.sdp"), flags=re.M)
    assert "a=mid" not in sdp and "BUNDLE" not in sdp
    response, body = await request("POST", relay.url("/whip/nomid"), sdp, **{"Content-Type": "application/sdp"})
    assert_problem(response, body, 400, "a=mid")


class HighProfilePublisher(WhipClient):
    """Offers H.264 as Constrained High (640c1f) only, as OBS with x264 does; forwarding never looks inside."""

    def _prepare(self) -> None:
        super()._prepare()
        self.transceivers["video"].setCodecPreferences(capabilities("video/H264", "640c1f"))


async def test_viewers_get_the_publishers_h264_profile_or_a_clear_422(relay: RunningRelay) -> None:
    async with HighProfilePublisher(relay.url("/whip/high"), [TestPatternTrack(320, 240), ToneTrack()],
                                    video_codec="H264"):
        assert relay.ctx.streams.get("high").tracks["video"].profile == "640c1f"
        async with WhepClient(relay.url("/whep/high")) as viewer:
            assert await first_stamp(viewer)
            assert viewer.pc is not None
            answered = [line for line in viewer.pc.remoteDescription.sdp.splitlines() if line.startswith("a=fmtp:")]
            assert any("profile-level-id=640c1f" in line for line in answered), answered
        baseline = re.sub(r"profile-level-id=[0-9a-f]{6}", "profile-level-id=42e01f",
                          await make_offer("recvonly", "video/H264"))
        response, body = await request("POST", relay.url("/whep/high"), baseline,
                                       **{"Content-Type": "application/sdp"})
        assert_problem(response, body, 422, "640c1f", "42e01f")
