"""Reading clients' SDP: offers (RFC 8866) and trickle fragments (RFC 8840).

Offers are checked before any peer connection exists, so a bad offer costs
nothing and the client learns exactly what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.sdp import SessionDescription, parse_h264_profile_level_id

# HTTP content types of offers/answers (RFC 9725) and trickle fragments (RFC 8840).
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"

CODEC_MIME = {"VP8": "video/VP8", "VP9": "video/VP9", "AV1": "video/AV1", "H264": "video/H264", "opus": "audio/opus"}
# The same codecs as FFmpeg (and so PyAV) names them (AV1 is read with libdav1d).
FFMPEG_CODECS = {"vp8": "VP8", "vp9": "VP9", "av1": "AV1", "libdav1d": "AV1", "h264": "H264", "opus": "opus"}
# Codecs Relay forwards and records but aiortc cannot encode, decode or packetize:
# Relay's own aiortc clients neither offer nor send them.
FORWARD_ONLY = {"video/vp9", "video/av1"}
# The fmtp parameter that names the profile of a forward-only codec; Relay takes profile 0 (8-bit 4:2:0).
PROFILE_PARAMETERS = {"video/vp9": "profile-id", "video/av1": "profile"}
CLOCK_RATES = {"audio": 48000, "video": 90000}  # RTP clock of each kind (RFC 7741, 9628, 6184, 7587)
CODEC_HINT = {
    "video/vp8": "VP8",
    "video/vp9": "VP9 (profile-id=0)",
    "video/av1": "AV1 (profile=0)",
    "video/h264": "H.264 (any profile) with packetization-mode=1",
    "audio/opus": "Opus",
}
H264_DEFAULT_PROFILE = "42e01f"  # what an H.264 offer without profile-level-id means (as aiortc reads it)


class SdpError(ValueError):
    """The SDP cannot be used; the message says what to fix."""


@dataclass
class Media:
    kind: str
    direction: str
    codecs: list[RTCRtpCodecParameters]
    mid: str = ""
    rid: str | None = None  # the one simulcast layer (RFC 8853) Relay forwards, when several are offered
    simulcast_answer: list[str] = field(default_factory=list)  # the answer's a=rid and a=simulcast lines
    rid_extmaps: list[str] = field(default_factory=list)  # the offer's a=extmap lines of RID_EXTENSIONS
    passive: bool = False  # a=setup:passive: the offerer will be the DTLS server


@dataclass
class Offer:
    """A client's offer, as Relay answers it.

    `sdp` is what aiortc is given: only the audio and video m= sections Relay
    answers (bundle-only ones included, RFC 8843), without simulcast lines.
    aiortc has no notion of a rejected section or of simulcast, so `complete()`
    puts both back into its answer: every m= section of the client's offer is
    answered in its place, the rejected ones with port 0.
    """

    sdp: str
    media: list[Media]
    rejected: dict[int, list[str]] = field(default_factory=dict)  # m= index -> the answer's section
    data: set[int] = field(default_factory=set)  # m= indexes of the data channel (SCTP) section

    def kinds(self) -> list[str]:
        return [m.kind for m in self.media]

    def complete(self, answer: str) -> str:
        session, sections = _split(answer)
        answered = iter(sections)
        taken = ((section, media) for section, media in zip(answered, self.media, strict=False))
        out = list(session)
        for index in range(len(sections) + len(self.rejected)):
            if index in self.rejected:
                out += self.rejected[index]
                continue
            if index in self.data:  # aiortc answered the data channel section itself
                out += next(answered)
                continue
            section, media = next(taken)
            out += section
            if media.simulcast_answer:  # the header extensions that name layers, if aiortc left them out
                known = {line.split()[-1] for line in section if line.startswith("a=extmap:")}
                out += [line for line in media.rid_extmaps if line.split()[-1] not in known]
                out += media.simulcast_answer
        return "\r\n".join(out) + "\r\n"


def _split(text: str) -> tuple[list[str], list[list[str]]]:
    """An SDP's session lines and its m= sections' lines."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _attribute(lines: list[str], name: str) -> list[str]:
    """The values of every `a=name:value` (or bare `a=name`, as "") among `lines`."""
    found = []
    for line in lines:
        if line == f"a={name}":
            found.append("")
        elif line.startswith(f"a={name}:"):
            found.append(line.split(":", 1)[1].strip())
    return found


# The RTP header extensions that name simulcast layers (RFC 8852): the receiver tells layers apart by them.
RID_EXTENSIONS = ("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                  "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id")


# rids whose names say which layer is the full one: q;h;f (h is half there), l;m;h.
_TOP_LAYER_NAMES = ("f", "full", "high", "hi", "h")


def _simulcast_layer(lines: list[str]) -> tuple[str | None, list[str]]:
    """The rid of the layer to forward from a simulcast offer (RFC 8853), and the answer lines that accept it.

    Every offered layer is accepted (OBS refuses an answer that drops one) and
    the receiver forwards one: the one with the largest declared restriction
    (max-width x max-height, max-fs, max-br), else the one whose name says
    "full"/"high" (q;h;f, l;m;h), else the lowest number (OBS: 0 is full size),
    else the first listed, the offerer's most preferred.
    """
    simulcast = _attribute(lines, "simulcast")
    words = simulcast[0].split() if simulcast else []
    if "send" not in words or words.index("send") + 1 >= len(words):
        return None, []
    streams = words[words.index("send") + 1]
    listed = [alt.lstrip("~") for group in streams.split(";") for alt in group.split(",")]
    listed = [rid for rid in listed if rid]
    if not listed:
        return None, []
    sizes: dict[str, float] = {}
    for value in _attribute(lines, "rid"):
        rid, _, rest = value.partition(" ")
        params = dict(p.split("=", 1) for p in rest.partition(" ")[2].split(";") if "=" in p)
        try:
            sizes[rid] = (float(params.get("max-width", 0)) * float(params.get("max-height", 0))
                          or float(params.get("max-fs", 0)) or float(params.get("max-br", 0)))
        except ValueError:
            continue
    named = [rid for name in _TOP_LAYER_NAMES for rid in listed if rid.lower() == name]
    if any(sizes.get(rid) for rid in listed):
        chosen = max(listed, key=lambda rid: sizes.get(rid, 0.0))
    elif named:
        chosen = named[0]
    elif all(rid.isdigit() for rid in listed):
        chosen = min(listed, key=int)
    else:
        chosen = listed[0]
    answer = [f"a=rid:{rid} recv" for rid in listed] + [f"a=simulcast:recv {streams}"]
    return chosen, answer


def _answered(section: list[str], bundled: set[str]) -> bool:
    """Whether an m= section is media to answer: an open port, bundle-only or in the BUNDLE group.

    With max-bundle, GStreamer and other native stacks give every section but the
    first port 0 and a=bundle-only (RFC 8843 §7.5); port 0 alone rejects a section.
    """
    port = section[0].split()[1] if len(section[0].split()) > 1 else "0"
    if port != "0":
        return True
    mids = _attribute(section, "mid")
    return bool(_attribute(section, "bundle-only")) or bool(mids and mids[0] in bundled)


def _rejection(section: list[str]) -> list[str]:
    """The answer to a rejected m= section: the same media line with port 0, and its mid (RFC 8843 §7.3.3)."""
    kind, _port, proto, *formats = section[0][2:].split()
    lines = [f"m={kind} 0 {proto} {' '.join(formats)}", "c=IN IP4 0.0.0.0"]
    lines += [f"a=mid:{mid}" for mid in _attribute(section, "mid")[:1]]
    return lines


def _for_aiortc(session: list[str], sections: list[list[str]], keep: list[int]) -> str:
    """The offer without the rejected sections (and their mids in BUNDLE) and without simulcast lines."""
    kept_mids = {mid for i in keep for mid in _attribute(sections[i], "mid")}
    out = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            line = " ".join(["a=group:BUNDLE", *(m for m in line.split()[1:] if m in kept_mids)])
        out.append(line)
    for i in keep:
        out += [line for line in sections[i] if not line.startswith(("a=simulcast:", "a=rid:"))]
    return "\r\n".join(out) + "\r\n"


def parse_offer(text: str) -> Offer:
    if not text.lstrip().startswith("v=0"):
        raise SdpError("the body is not an SDP offer: it must start with 'v=0'")
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise SdpError(f"the SDP offer could not be parsed ({type(exc).__name__}: {exc})") from None
    session, sections = _split(text)
    bundled = {str(mid) for group in description.group if group.semantic == "BUNDLE" for mid in group.items}
    media, keep, rejected, data = [], [], {}, set[int]()
    for i, (m, section) in enumerate(zip(description.media, sections, strict=True)):
        if m.kind == "application" and "SCTP" in m.profile and not data and _answered(section, bundled):
            keep.append(i)  # a data channel: aiortc answers it (see relay/media/datachannels.py)
            data.add(i)
            continue
        if m.kind not in ("audio", "video") or not _answered(section, bundled):
            rejected[i] = _rejection(section)
            continue
        if not m.direction:  # RFC 3264 would mean sendrecv, but JSEP requires one, and aiortc fails without
            raise SdpError(f"the {m.kind} m= section has no direction (a=sendonly, a=recvonly or a=sendrecv)")
        if not m.rtp.muxId:  # aiortc would answer every section as the first one
            raise SdpError(f"the {m.kind} m= section has no a=mid: WHIP and WHEP bundle media, and BUNDLE "
                           "names each m= section by its a=mid (RFC 8843, RFC 9725 §4.4.1)")
        keep.append(i)
        rid, simulcast_answer = _simulcast_layer(section)
        extmaps = [line for line in section if line.startswith("a=extmap:") and line.split()[-1] in RID_EXTENSIONS]
        media.append(Media(m.kind, m.direction, _preference_order(m.rtp.codecs, m.fmt), m.rtp.muxId, rid,
                           simulcast_answer, extmaps,
                           passive=bool(m.dtls and m.dtls.role == "server")))
    if not media:
        raise SdpError("the SDP offer has no audio or video m= section")
    kinds = [m.kind for m in media]
    if kinds.count("audio") > 1 or kinds.count("video") > 1:
        raise SdpError("offer at most one audio and one video track (one MediaStream)")
    for offered in media:
        if not offered.codecs:
            raise SdpError(f"the {offered.kind} m= section lists no codec (a=rtpmap)")
    for i in keep:
        m = description.media[i]
        if not (m.dtls and m.dtls.fingerprints):
            # aiortc would accept the offer and fail later, inside its connect task
            raise SdpError(f"the {m.kind} m= section has no a=fingerprint and a=setup: DTLS-SRTP needs "
                           "the certificate's fingerprint (RFC 8122)")
    _check_bundle(description, {description.media[i].rtp.muxId for i in keep})
    return Offer(_for_aiortc(session, sections, keep), media, rejected, data)


def _preference_order(codecs: list[RTCRtpCodecParameters], formats: list[Any]) -> list[RTCRtpCodecParameters]:
    """The codecs in the m= line's order, the offerer's preference (RFC 8866 §5.14); aiortc keeps a=rtpmap order."""
    rank = {str(f): i for i, f in enumerate(formats)}
    return sorted(codecs, key=lambda c: rank.get(str(c.payloadType), len(rank)))


def _check_bundle(description: SessionDescription, answered: set[str]) -> None:
    """aiortc leaves media without a transport (and crashes on close) when BUNDLE names unknown mids."""
    mids = {m.rtp.muxId for m in description.media}
    for group in description.group:
        if group.semantic != "BUNDLE":
            continue
        unknown = [mid for mid in group.items if mid not in mids]
        first = next((mid for mid in group.items if mid in answered), None)
        if unknown or not group.items or first is None:
            raise SdpError(f"a=group:BUNDLE {' '.join(map(str, group.items))} must list the a=mid of the offer's "
                           "m= sections, one of them an audio or video section")


def capabilities(mime: str, profile: str | None = None) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for one codec, with RTX so retransmission stays on.

    With `profile` (an H.264 profile-level-id), only the entry of that profile.
    """
    kind = mime.split("/")[0]
    found = RTCRtpReceiver.getCapabilities(kind)
    assert found is not None  # annotated Optional, but aiortc raises ValueError for a kind it lacks
    return [
        c
        for c in found.codecs
        if c.mimeType.lower() == f"{kind}/rtx" or (
            c.mimeType.lower() == mime.lower()
            and (profile is None or same_h264_profile(str(c.parameters.get("profile-level-id")), profile)))
    ]


def client_capabilities(kind: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for `kind` without the forward-only codecs: what an aiortc client can send and decode."""
    found = RTCRtpReceiver.getCapabilities(kind)
    assert found is not None
    return [c for c in found.codecs if c.mimeType.lower() not in FORWARD_ONLY]


def same_h264_profile(a: str, b: str) -> bool:
    """Whether two profile-level-ids name the same H.264 profile (levels may differ)."""
    try:
        return parse_h264_profile_level_id(a)[0] == parse_h264_profile_level_id(b)[0]
    except ValueError:
        return False


def _level(profile_level_id: str) -> int:
    try:
        return int(parse_h264_profile_level_id(profile_level_id)[1])
    except ValueError:
        return 0


def negotiated(media: Media, mime: str, profile: str | None = None) -> RTCRtpCodecParameters | None:
    """The offered codec aiortc would take for `mime` (offer order), or None."""
    local = [
        RTCRtpCodecParameters(
            mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels,
            parameters=dict(c.parameters), payloadType=96 + i,
        )
        for i, c in enumerate(capabilities(mime, profile))
        if not c.mimeType.lower().endswith("/rtx")
    ]
    common = [c for c in find_common_codecs(local, media.codecs) if not c.mimeType.lower().endswith("/rtx")]
    if not common:
        return None
    return next(c for c in media.codecs if c.payloadType == common[0].payloadType)


def accepts(media: Media, mime: str, profile: str | None = None) -> bool:
    """Whether the offered m= section can carry `mime` (for H.264: of `profile`) as aiortc would negotiate it.

    A viewer that offers the profile at a lower level takes the stream only if it
    allows level asymmetry (RFC 6184 §8.1: it then decodes any level).
    """
    codec = negotiated(media, mime, profile)
    if codec is None or profile is None:
        return codec is not None
    theirs = str(codec.parameters.get("profile-level-id", H264_DEFAULT_PROFILE))
    return _level(theirs) >= _level(profile) or str(codec.parameters.get("level-asymmetry-allowed")) == "1"


def choose_codec(media: Media, allowed: list[str]) -> str | None:
    """The publisher's most preferred offered codec (offer order) that Relay allows."""
    mimes = {CODEC_MIME[name].lower(): CODEC_MIME[name] for name in allowed}
    for codec in media.codecs:
        mime = mimes.get(codec.mimeType.lower())
        if mime and accepts(media, mime):
            return mime
    return None


def h264_profile(media: Media, mime: str) -> str | None:
    """The profile-level-id of the H.264 a publisher offers first, as it will send it; None for other codecs."""
    if mime.lower() != "video/h264":
        return None
    codec = negotiated(media, mime)
    return str(codec.parameters.get("profile-level-id", H264_DEFAULT_PROFILE)) if codec else None


def offered_names(media: Media) -> str:
    names = []
    for c in media.codecs:
        name = c.mimeType.split("/")[1]
        if name.lower() in ("rtx", "red", "ulpfec", "flexfec-03", "cn", "telephone-event"):
            continue
        if name.lower() == "h264":
            name += f" ({c.parameters.get('profile-level-id', '?')}, " \
                    f"packetization-mode={c.parameters.get('packetization-mode', 0)})"
        elif (profile := PROFILE_PARAMETERS.get(c.mimeType.lower())) is not None:
            name += f" ({profile}={c.parameters.get(profile, 0)})"
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
