"""Reading clients' SDP: offers (RFC 8866) and trickle fragments (RFC 8840).

Offers are checked before any peer connection exists, so a bad offer costs
nothing and the client learns exactly what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.sdp import SessionDescription

# HTTP content types of offers/answers (RFC 9725) and trickle fragments (RFC 8840).
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"

CODEC_MIME = {"VP8": "video/VP8", "H264": "video/H264", "opus": "audio/opus"}
# The same codecs as FFmpeg (and so PyAV) names them.
FFMPEG_CODECS = {"vp8": "VP8", "h264": "H264", "opus": "opus"}
CLOCK_RATES = {"audio": 48000, "video": 90000}  # RTP clock of each kind (RFC 7741, 6184, 7587)
CODEC_HINT = {
    "video/vp8": "VP8",
    "video/h264": "H.264 constrained baseline (profile-level-id 42e01f or 42001f) "
    "with packetization-mode=1",
    "audio/opus": "Opus",
}


class SdpError(ValueError):
    """The SDP cannot be used; the message says what to fix."""


@dataclass
class Media:
    kind: str
    direction: str
    codecs: list[RTCRtpCodecParameters]


@dataclass
class Offer:
    sdp: str
    media: list[Media]

    def kinds(self) -> list[str]:
        return [m.kind for m in self.media]


def parse_offer(text: str) -> Offer:
    if not text.lstrip().startswith("v=0"):
        raise SdpError("the body is not an SDP offer: it must start with 'v=0'")
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise SdpError(f"the SDP offer could not be parsed ({type(exc).__name__}: {exc})") from None
    media = []
    for m in description.media:
        if m.kind not in ("audio", "video"):
            continue
        if m.port == 0:
            continue
        if not m.direction:  # RFC 3264 would mean sendrecv, but JSEP requires one, and aiortc fails without
            raise SdpError(f"the {m.kind} m= section has no direction (a=sendonly, a=recvonly or a=sendrecv)")
        media.append(Media(m.kind, m.direction, list(m.rtp.codecs)))
    if not media:
        raise SdpError("the SDP offer has no audio or video m= section")
    kinds = [m.kind for m in media]
    if kinds.count("audio") > 1 or kinds.count("video") > 1:
        raise SdpError("offer at most one audio and one video track (one MediaStream)")
    for offered in media:
        if not offered.codecs:
            raise SdpError(f"the {offered.kind} m= section lists no codec (a=rtpmap)")
    for m in description.media:
        if m.kind in ("audio", "video") and m.port and not (m.dtls and m.dtls.fingerprints):
            # aiortc would accept the offer and fail later, inside its connect task
            raise SdpError(f"the {m.kind} m= section has no a=fingerprint and a=setup: DTLS-SRTP needs "
                           "the certificate's fingerprint (RFC 8122)")
    _check_bundle(description)
    return Offer(text, media)


def _check_bundle(description: SessionDescription) -> None:
    """aiortc leaves media without a transport (and crashes on close) when BUNDLE names unknown mids."""
    mids = {m.rtp.muxId for m in description.media}
    media_mids = {m.rtp.muxId for m in description.media if m.kind in ("audio", "video") and m.port}
    for group in description.group:
        if group.semantic != "BUNDLE":
            continue
        unknown = [mid for mid in group.items if mid not in mids]
        if unknown or not group.items or group.items[0] not in media_mids:
            raise SdpError(f"a=group:BUNDLE {' '.join(map(str, group.items))} must list the a=mid of the offer's "
                           "m= sections, the first one an audio or video section")


def capabilities(mime: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for one codec, with RTX so retransmission stays on."""
    kind = mime.split("/")[0]
    found = RTCRtpReceiver.getCapabilities(kind)
    assert found is not None  # annotated Optional, but aiortc raises ValueError for a kind it lacks
    return [
        c
        for c in found.codecs
        if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")
    ]


def accepts(media: Media, mime: str) -> bool:
    """Whether the offered m= section can carry `mime` as aiortc would negotiate it."""
    local = [
        RTCRtpCodecParameters(
            mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels,
            parameters=dict(c.parameters), payloadType=96 + i,
        )
        for i, c in enumerate(capabilities(mime))
        if not c.mimeType.lower().endswith("/rtx")
    ]
    return bool(find_common_codecs(local, media.codecs))


def choose_codec(media: Media, allowed: list[str]) -> str | None:
    """The publisher's most preferred offered codec (offer order) that Relay allows."""
    mimes = {CODEC_MIME[name].lower(): CODEC_MIME[name] for name in allowed}
    for codec in media.codecs:
        mime = mimes.get(codec.mimeType.lower())
        if mime and accepts(media, mime):
            return mime
    return None


def offered_names(media: Media) -> str:
    names = []
    for c in media.codecs:
        name = c.mimeType.split("/")[1]
        if name.lower() in ("rtx", "red", "ulpfec", "flexfec-03", "cn", "telephone-event"):
            continue
        if name.lower() == "h264":
            name += f" ({c.parameters.get('profile-level-id', '?')}, " \
                    f"packetization-mode={c.parameters.get('packetization-mode', 0)})"
        if name not in names:
            names.append(name)
    return ", ".join(names) or "none"


@dataclass
class Fragment:
    """A trickle-ice-sdpfrag body: candidates and, for an ICE restart, new credentials."""

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[str] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_fragment(text: str) -> Fragment:
    fragment = Fragment()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"not an SDP line: {line[:80]!r}")
        if line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            fragment.candidates.append(line[2:])
        elif line == "a=end-of-candidates":
            fragment.end_of_candidates = True
    return fragment
