"""Every touch of aiortc's and aioice's private internals lives here.

Written against aiortc 1.16.0 and aioice 0.13.0. aiortc has no public hook
for encoded media (upstream #55, #449): the receiver always decodes and the
sender only forwards through ``Encoder.pack()``. We tap the receiver after
RTX unwrap and depayloading, before its jitter buffer, and give each sender a
packer that never opens a codec. The import fails with a clear message when
the installed versions do not have what this module relies on.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import threading
import time
import types
from collections.abc import Callable, Collection
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import aioice
import aioice.ice
import aioice.stun
import aioice.turn
import aiortc
import aiortc.clock
import aiortc.codecs
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtp
import pylibsrtp
from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import MIN_BITRATE, Vp8Encoder
from aiortc.mediastreams import MediaStreamTrack as _Track
from aiortc.mediastreams import convert_timebase
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtcpSrPacket, RtpPacket

from relay.sdp import PROFILE_PARAMETERS, RID_EXTENSIONS

AIORTC_VERSION = "1.16.0"
AIOICE_VERSION = "0.13.0"


class DepayloadedPacket(RtpPacket):
    """An RtpPacket as `tap_receiver` hands it on, with the ``_data`` aiortc's receiver sets.

    ``_data`` is the payload without its RTP payload descriptor (rtcrtpreceiver.py:543);
    aiortc adds it undeclared, so this class is only a type: no instance is ever made.
    """

    _data: bytes


def _getter(cls: type, name: str) -> Callable[..., Any]:
    """The getter of property `name` of `cls` (to mypy, a property with a setter has no ``fget``)."""
    prop = vars(cls)[name]
    if not isinstance(prop, property) or prop.fget is None:
        raise ImportError(f"relay.media.aiortc_patch: {cls.__qualname__}.{name} is no longer a property")
    return prop.fget


def _check() -> None:
    problems = []
    if aiortc.__version__ != AIORTC_VERSION:
        problems.append(f"aiortc {aiortc.__version__} is installed, Relay needs {AIORTC_VERSION}")
    if aioice.__version__ != AIOICE_VERSION:
        problems.append(f"aioice {aioice.__version__} is installed, Relay needs {AIOICE_VERSION}")
    needs = [
        (RTCRtpReceiver.__init__, "_RTCRtpReceiver__jitter_buffer"),
        (RTCRtpReceiver._handle_rtp_packet, "_RTCRtpReceiver__jitter_buffer"),
        (RTCRtpReceiver.receive, "Thread"),
        (RTCRtpSender.__init__, "_RTCRtpSender__encoder"),
        (RTCRtpSender._next_encoded_frame, "_RTCRtpSender__encoder"),
        (RTCRtpSender._handle_rtcp_packet, "_send_keyframe"),
        (RTCRtpSender._handle_rtcp_packet, "_retransmit"),
        (RTCRtpReceiver._handle_rtp_packet, "_send_rtcp_nack"),
        (RTCRtpReceiver._handle_rtp_packet, "_RTCRtpReceiver__nack_generator"),
        (RTCRtpReceiver._handle_rtp_packet, "_RTCRtpReceiver__remote_bitrate_estimator"),
        (_getter(Vp8Encoder, "target_bitrate"), "_Vp8Encoder__target_bitrate"),
        (_getter(H264Encoder, "target_bitrate"), "_H264Encoder__target_bitrate"),
        (aioice.ice.Connection.gather_candidates, "get_host_addresses"),
        (aioice.ice.Connection.query_consent, "CONSENT_FAILURES"),
        (RTCRtpSender._run_rtp, "current_ntp_time"),
        (aioice.ice.Connection.get_component_candidates, "UDP_SOCKET_BUFFER_SIZE"),
        (aioice.ice.Connection.get_component_candidates, "create_datagram_endpoint"),
        (aioice.ice.Connection.get_component_candidates, "get_running_loop"),
        (aioice.turn.create_turn_endpoint, "create_datagram_endpoint"),
        (aioice.turn.create_turn_endpoint, "get_running_loop"),
        (aioice.ice.Connection.gather_candidates, "_transport_policy"),
        (aioice.ice.Connection.gather_candidates, "_use_ipv4"),
    ]
    for func, name in needs:
        if name not in func.__code__.co_names:
            problems.append(f"{func.__qualname__} no longer uses {name}")
    if not hasattr(RTCDtlsTransport, "_set_role"):
        problems.append("RTCDtlsTransport._set_role is gone")
    if not isinstance(getattr(aiortc.codecs, "CODECS", None), dict) or not isinstance(
            getattr(aiortc.codecs, "HEADER_EXTENSIONS", None), dict):
        problems.append("aiortc.codecs.CODECS / HEADER_EXTENSIONS are gone")
    for name in ("is_codec_compatible", "DYNAMIC_PAYLOAD_TYPES"):
        if name not in aiortc.rtcpeerconnection.find_common_codecs.__code__.co_names:
            problems.append(f"find_common_codecs no longer uses {name}")
    if "rtp_stream_id" not in aiortc.rtp.HeaderExtensions.__dataclass_fields__:
        problems.append("aiortc.rtp.HeaderExtensions has no rtp_stream_id")
    if not hasattr(RTCRtpReceiver, "_send_rtcp_pli"):
        problems.append("RTCRtpReceiver._send_rtcp_pli is gone")
    if problems:
        raise ImportError(
            "relay.media.aiortc_patch: the installed aiortc/aioice do not match what the "
            "pass-through path was written for: " + "; ".join(problems)
            + f". Install aiortc=={AIORTC_VERSION} (pip install -e .)."
        )


_check()


class _DaemonThread(threading.Thread):
    """aiortc's receiver decoder thread, made a daemon.

    Each receiver starts one (a plain thread) and only its `stop()` ends it: a
    peer connection whose close a shutdown interrupted (an edge's pull closing
    while SIGTERM comes) left one behind, and the interpreter waited for it at
    exit until the shutdown grace killed the process. A tapped receiver's
    thread never gets work anyway; a decoding client's dies with the process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "daemon": True})


_receiver_threading = types.ModuleType("threading", "what aiortc.rtcrtpreceiver uses of threading")
vars(_receiver_threading).update(Thread=_DaemonThread, Event=threading.Event)
aiortc.rtcrtpreceiver.threading = _receiver_threading


def tap_receiver(receiver: RTCRtpReceiver, on_packet: Callable[[DepayloadedPacket], None]) -> None:
    """Send every depayloaded packet to `on_packet` instead of the decoder.

    Replaces the receiver's jitter buffer ``add`` (rtcrtpreceiver.py:551):
    returning ``(False, None)`` means nothing is ever queued for decoding, so
    the decoder thread idles and no decoder is created. ``packet.ssrc`` is the
    media SSRC (RTX is already unwrapped) and ``packet._data`` the payload
    without its RTP payload descriptor (Annex-B for H.264).
    """
    jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]

    def add(packet: DepayloadedPacket) -> tuple[bool, None]:
        on_packet(packet)
        return False, None

    jitter_buffer.add = add


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the publisher for a keyframe (RTCP PSFB PLI)."""
    await receiver._send_rtcp_pli(media_ssrc)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Route a viewer's PLI/FIR to `callback`; the stock sender only flags its encoder."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


_OPUS_CLOCK = Fraction(1, 48000)


class _OpusPacker(Encoder):
    """Opus needs no packetizing; aiortc's OpusEncoder would open a libopus context."""

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise RuntimeError("pass-through sender cannot encode")

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        return [bytes(packet)], convert_timebase(packet.pts, packet.time_base, _OPUS_CLOCK)


_PACKERS: dict[str, Callable[[], Encoder]] = {
    "video/vp8": Vp8Encoder,  # opens libvpx only in encode(), which we never call
    "video/h264": H264Encoder,
    "audio/opus": _OpusPacker,
}


def use_packer(sender: RTCRtpSender, mime_type: str) -> None:
    """Give the sender a pack-only encoder, so no codec context is ever opened."""
    sender._RTCRtpSender__encoder = _PACKERS[mime_type.lower()]()  # type: ignore[attr-defined]


class _TunedEncoder(Encoder):
    """aiortc's VP8/H.264 encoder with a bitrate ceiling and a keyframe interval.

    Stock aiortc clamps the target to 250 kbps-1.5 Mbps, forces a keyframe
    only on PLI/FIR (its VP8 GOP is 3000 frames) and restarts its encoder,
    emitting a keyframe, whenever REMB moves the target by over 10 %. With an
    interval, a new REMB target is applied at the next keyframe, so keyframes
    come on schedule.
    """

    def __init__(self, inner: Vp8Encoder | H264Encoder, bitrate: int | None, keyframe_interval: float | None) -> None:
        self._inner = inner
        self._ceiling = bitrate
        self._interval = keyframe_interval
        self._last_keyframe: float | None = None
        self._pending: int | None = None
        if bitrate:
            self._apply(bitrate)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        now = float(frame.pts * frame.time_base)
        due = self._interval is not None and (
            self._last_keyframe is None or now - self._last_keyframe >= self._interval - 1e-3
        )
        if force_keyframe or due:
            force_keyframe = True
            self._last_keyframe = now
            if self._pending is not None:
                self._apply(self._pending)
                self._pending = None
        return self._inner.encode(frame, force_keyframe)

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        return self._inner.pack(packet)

    @property
    def target_bitrate(self) -> int:
        return self._inner.target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        if self._ceiling:
            # REMB may lower the rate, never above the ceiling nor below aiortc's floor.
            bitrate = max(min(bitrate, self._ceiling), min(MIN_BITRATE, self._ceiling))
        if self._interval is not None and self._last_keyframe is not None:
            self._pending = bitrate
        else:
            self._apply(bitrate)

    def _apply(self, bitrate: int) -> None:
        if self._ceiling:
            # The mangled field bypasses the setter's clamp, which a ceiling may exceed.
            setattr(self._inner, f"_{type(self._inner).__name__}__target_bitrate", bitrate)
        else:
            self._inner.target_bitrate = bitrate


def tune_encoder(
    sender: RTCRtpSender, mime_type: str, bitrate: int | None, keyframe_interval: float | None
) -> None:
    """Encode video for `sender` at most at `bitrate` bps, with a keyframe every `keyframe_interval` s."""
    encoders: dict[str, type[Vp8Encoder | H264Encoder]] = {"video/vp8": Vp8Encoder, "video/h264": H264Encoder}
    inner = encoders[mime_type.lower()]()
    sender._RTCRtpSender__encoder = _TunedEncoder(inner, bitrate, keyframe_interval)  # type: ignore[attr-defined]


def answer_as_dtls_server(pc: RTCPeerConnection, passive: Collection[str] = ()) -> None:
    """Make the coming answer say a=setup:passive where the offer left the choice (active to a passive offer).

    aiortc answers actpass with active (DTLS client); GStreamer with an RSA
    certificate then meets aiortc's ECDSA-only client cipher list ("no shared
    cipher"). As DTLS server aiortc works with every client we know of. Call
    between setRemoteDescription and createAnswer, with the mids the offer set
    `a=setup:passive` on.
    """
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport._role == "auto":
            # An offer of a=setup:passive leaves us the client's part (aiortc would answer passive too).
            transport._set_role("client" if transceiver.mid in passive else "server")


def restrict_host_addresses(addresses: list[str]) -> None:
    """Gather host candidates only on `addresses` (process-wide in aioice).

    aioice also never offers 127.0.0.1, which a loopback-only test namespace needs.
    """
    if not addresses:
        aioice.ice.get_host_addresses = _default_host_addresses
        return
    pinned = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


_default_host_addresses = aioice.ice.get_host_addresses


RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def enlarge_receive_buffers(size: int = RECEIVE_BUFFER_BYTES) -> None:
    """Ask for `size`-byte UDP receive buffers on every ICE socket (the kernel caps it at net.core.rmem_max).

    aiortc's SCTP sends one datagram per data channel message, as many as its
    byte-counted window allows (hundreds of small ones at once): aioice's 256 KiB
    buffer overflowed while the loop was busy, and the retransmission storms that
    followed starved even ICE consent. Process-wide in aioice, like the rest.
    """
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = size  # read by aioice.ice when it gathers


def set_consent_timeout(seconds: float) -> None:
    """Detect a vanished peer within `seconds` at worst (aioice's default is about 30 s).

    aioice sends one consent check every CONSENT_INTERVAL x 0.8-1.2 s with no
    retransmission, so each failing check takes up to 1.2 x interval plus one
    STUN timeout (RETRY_RTO); the peer is dropped after CONSENT_FAILURES
    failures in a row. About eight checks per timeout tolerate the odd lost one.
    """
    interval = min(5.0, max(0.5, seconds / 8))
    aioice.ice.CONSENT_INTERVAL = interval  # type: ignore[assignment]  # aioice private: typed int, used as seconds
    aioice.ice.CONSENT_FAILURES = max(1, math.floor(seconds / (1.2 * interval + aioice.stun.RETRY_RTO)))


def on_nack_sent(receiver: RTCRtpReceiver, callback: Callable[[int], None]) -> None:
    """Tell `callback` how many packets each NACK the receiver sends asks for (runs only on loss)."""
    send = receiver._send_rtcp_nack

    async def counted(media_ssrc: int, lost: list[int]) -> None:
        callback(len(lost))
        await send(media_ssrc, lost)

    receiver._send_rtcp_nack = counted  # type: ignore[method-assign]


NACK_RETRY_INTERVAL = 0.05
"""Seconds before a packet still missing is asked for again: a few loopback or LAN round trips."""
NACK_TRIES = 4
"""How often one packet is asked for before the keyframe policy takes over (Galene and libwebrtc
give up after a few tries too)."""


def retry_nacks(receiver: RTCRtpReceiver, interval: float = NACK_RETRY_INTERVAL,
                tries: int = NACK_TRIES) -> Callable[[], None]:
    """Ask the publisher again for packets still missing; returns the function that stops it.

    aiortc NACKs only when a new gap opens (rtcrtpreceiver.py:535-538): a lost NACK or a
    lost retransmission is asked for again only at the next gap, a quarter of a second
    later at 2 % loss, and the frame waits that long. Here a packet still missing after
    `interval` is asked for again, up to `tries` times, then dropped from the NACK list.
    """
    loop = asyncio.get_running_loop()
    send = receiver._send_rtcp_nack
    asked: dict[int, int] = {}  # sequence number -> NACKs that listed it
    last_ssrc = 0
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None

    def generator() -> NackGenerator | None:
        found = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        return found if type(found) is NackGenerator else None  # not a simulcast layer's

    async def send_and_retry(media_ssrc: int, lost: list[int]) -> None:
        nonlocal last_ssrc, timer
        last_ssrc = media_ssrc
        for seq in lost:
            asked[seq] = asked.get(seq, 0) + 1
        await send(media_ssrc, lost)
        if timer is None and generator() is not None:
            timer = loop.call_later(interval, retry)

    def retry() -> None:
        nonlocal timer, task
        timer = None
        nacks = generator()
        if nacks is None:
            return
        for seq in [seq for seq in asked if seq not in nacks.missing]:
            del asked[seq]  # it came
        lost = sorted(seq for seq in nacks.missing if asked.get(seq, 0) < tries)
        for seq in nacks.missing.difference(lost):
            nacks.missing.discard(seq)  # given up on
            asked.pop(seq, None)
        if lost and (task is None or task.done()):
            task = loop.create_task(send_and_retry(last_ssrc, lost))

    def stop() -> None:
        if timer is not None:
            timer.cancel()
        if task is not None:
            task.cancel()

    receiver._send_rtcp_nack = send_and_retry  # type: ignore[method-assign]
    return stop


_NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def ntp_time(unix_time: float) -> int:
    """The 64-bit NTP timestamp of a `time.time()` value (as RTCP sender reports carry it)."""
    seconds = int(unix_time)
    return ((seconds + _NTP_UNIX_OFFSET) << 32) | int((unix_time - seconds) * (1 << 32))


def _current_ntp_time() -> int:
    return ntp_time(time.time())


def _current_ms() -> int:
    return int((time.time() + _NTP_UNIX_OFFSET) * 1000)


def use_fast_ntp_clock() -> None:
    """aiortc reads the NTP clock through `datetime` (two datetime objects, a
    timedelta, a division): twice per packet in a stock sender (8 % of the
    server's time with 16 viewers, docs/benchmarks.md) and once per received
    packet (`current_ms`, each packet's arrival time). The same values from
    `time.time()` cost a fraction of that.
    """
    aiortc.clock.current_ntp_time = _current_ntp_time
    aiortc.clock.current_ms = _current_ms


# --- Offers as native stacks write them: H.264 of any profile, VP9, simulcast layers ----------
#
# aiortc lists H.264 constrained baseline only and matches H.264 by profile and
# packetization mode (never by level), so a publisher that signals High
# (OBS with x264 often does) finds no common codec. Forwarding never decodes and
# browsers decode every profile, so Relay registers one entry per profile.
# VP9 and AV1 (profile 0, what browsers send by default) are registered too, to
# be forwarded only: the tap never queues a frame for the decoder thread (the
# only caller of get_decoder) and a viewer's parked track never reaches
# get_encoder, so aiortc never looks for a VP9 or AV1 codec it does not have.
# aiortc parses the header extensions that name simulcast layers (RFC 8852)
# only when they are registered too.

_EXTRA_H264_PROFILES = ("4d001f", "640c1f", "64001f")  # Main, Constrained High, High


def _register_native_codecs() -> None:
    video = aiortc.codecs.CODECS["video"]
    h264 = [c for c in video if c.mimeType.lower() == "video/h264"]
    have = {str(c.parameters.get("profile-level-id")) for c in h264}
    payload_type = max(c.payloadType or 0 for c in video) + 1
    extra: list[tuple[str, dict[str, int | str | None]]] = [
        ("video/H264", {"level-asymmetry-allowed": "1", "packetization-mode": "1", "profile-level-id": p})
        for p in _EXTRA_H264_PROFILES if p not in have]
    for mime in ("video/VP9", "video/AV1"):
        if all(c.mimeType.lower() != mime.lower() for c in video):
            extra.append((mime, {PROFILE_PARAMETERS[mime.lower()]: "0"}))
    for mime, parameters in extra:
        video.append(RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=payload_type,
                                           rtcpFeedback=list(h264[0].rtcpFeedback), parameters=parameters))
        video.append(RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=payload_type + 1,
                                           parameters={"apt": payload_type}))
        payload_type += 2
    extensions = aiortc.codecs.HEADER_EXTENSIONS["video"]
    used = {e.id for e in extensions}
    free = (i for i in range(1, 15) if i not in used)
    for uri in RID_EXTENSIONS:
        if all(e.uri != uri for e in extensions):
            extensions.append(RTCRtpHeaderExtensionParameters(id=next(free), uri=uri))


_register_native_codecs()

_is_codec_compatible = aiortc.rtcpeerconnection.is_codec_compatible


def _same_profile_compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    """aiortc's codec match, and for VP9 and AV1 the same profile (absent means 0: RFC 9628 §6.1, AV1 RTP §7.2).

    aiortc compares them on name and clock only, so it would answer a profile-2
    (10-bit) VP9 entry listed first with the profile it registered.
    """
    if not _is_codec_compatible(a, b):
        return False
    name = PROFILE_PARAMETERS.get(a.mimeType.lower())
    return name is None or str(a.parameters.get(name, 0)) == str(b.parameters.get(name, 0))


aiortc.rtcpeerconnection.is_codec_compatible = _same_profile_compatible

# aiortc answers with the offer's payload type only in 96-127 and otherwise with its own entry's.
# libwebrtc also numbers codecs in 35-63 (Chromium offers AV1 as 45): aiortc's own number could
# then be one another m= section of the BUNDLE already uses (AV1's 111 is Chromium's Opus), and
# Chromium cannot tell which codec a packet is.
aiortc.rtp.DYNAMIC_PAYLOAD_TYPES = frozenset(range(35, 64)) | frozenset(range(96, 128))  # type: ignore[assignment]


def answer_h264_as_offered(pc: RTCPeerConnection, offered: dict[str, list[RTCRtpCodecParameters]]) -> None:
    """Answer H.264 with the profile-level-id the peer offered (`offered`: codecs by mid), not aiortc's entry's.

    RFC 6184 §8.2.2: the answer keeps the offered profile; aiortc would write the
    level of its registered entry. Call between setRemoteDescription and createAnswer.
    """
    for transceiver in pc.getTransceivers():
        codecs = {c.payloadType: c for c in offered.get(transceiver.mid or "", [])}
        for codec in transceiver._codecs:
            theirs = codecs.get(codec.payloadType)
            if codec.mimeType.lower() == "video/h264" and theirs and "profile-level-id" in theirs.parameters:
                codec.parameters["profile-level-id"] = theirs.parameters["profile-level-id"]


class _NacksPerSsrc:
    """aiortc's NackGenerator follows one sequence space; simulcast layers each have their own."""

    def __init__(self) -> None:
        self._by_ssrc: dict[int, NackGenerator] = {}
        self.missing: set[int] = set()

    def add(self, packet: RtpPacket) -> bool:
        generator = self._by_ssrc.setdefault(packet.ssrc, NackGenerator())
        missed = generator.add(packet)
        self.missing = generator.missing  # read by the receiver right after a True
        return missed


def forward_one_layer(receiver: RTCRtpReceiver, rid: str) -> None:
    """Forward only the simulcast layer `rid`; call after `tap_receiver`.

    aiortc routes every unsignalled SSRC of a payload type to the one receiver
    that has it, so all layers arrive here; each keeps its own receiver reports
    and NACKs, and only the chosen layer reaches the tap. Each layer names
    itself in the RTP stream id header extension (RFC 8852), at least in its
    first packets. The receiver sends no REMB: aiortc's estimate follows the
    incoming rate (about 1.8 times it), so a sender that starts its layers
    from the lowest never gets the bandwidth to start the full one (Chromium
    stays on its two lower layers for good); its own loss-based estimate does.
    """
    handle = receiver._handle_rtp_packet
    layers: dict[int, bool] = {}  # SSRC -> whether it carries the chosen layer

    async def learn_layer(packet: RtpPacket, arrival_time_ms: int) -> None:
        name = packet.extensions.rtp_stream_id
        if name is not None and packet.ssrc not in layers:
            layers[packet.ssrc] = name == rid
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = learn_layer  # type: ignore[method-assign]
    receiver._RTCRtpReceiver__nack_generator = _NacksPerSsrc()  # type: ignore[attr-defined]
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
    jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    tapped = jitter_buffer.add

    def one_layer(packet: DepayloadedPacket) -> tuple[bool, None]:
        if layers.get(packet.ssrc):
            return tapped(packet)
        return False, None

    jitter_buffer.add = one_layer
# --- Deployment: media sockets inside a port range (ice.port_range) -----------------------------
#
# aioice binds its sockets itself with `loop.create_datagram_endpoint`: a host
# candidate's socket with local_addr=(address, 0), a TURN client's with only
# remote_addr. It has no setting for ports, so both modules get an `asyncio`
# whose running loop binds those sockets to a free port of the range instead.


class NoMediaPort(Exception):
    """Every UDP port of `ice.port_range` is taken: no media socket could be bound."""


class _PortRange:
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._next = low  # ports are tried round-robin, so a just-freed port is not reused at once

    def ports(self) -> list[int]:
        count = self.high - self.low + 1
        start = self._next - self.low
        self._next = self.low + (start + 1) % count
        return [self.low + (start + i) % count for i in range(count)]


_port_range: _PortRange | None = None


class _RangedLoop:
    """The running loop, except that its datagram sockets bind inside `_port_range`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Callable[[], Any], local_addr: tuple[str, int] | None = None,
                                       remote_addr: tuple[str, int] | None = None, **kwargs: Any) -> Any:
        ranged = _port_range
        if ranged is None or (local_addr is not None and local_addr[1] != 0):
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr,
                                                             remote_addr=remote_addr, **kwargs)
        if local_addr is not None:
            host = local_addr[0]
        else:  # a TURN client: bind the wildcard of the server's family
            host = "::" if remote_addr is not None and ":" in remote_addr[0] else "0.0.0.0"
        last: OSError | None = None
        for port in ranged.ports():
            try:
                return await self._loop.create_datagram_endpoint(factory, local_addr=(host, port),
                                                                 remote_addr=remote_addr, **kwargs)
            except OSError as exc:  # in use: try the next one
                last = exc
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {ranged.low}-{ranged.high} on {host}") from last


class _RangedAsyncio(types.ModuleType):
    """`asyncio` as aioice's modules see it: everything as it is but the running loop."""

    def __init__(self) -> None:
        super().__init__("asyncio")

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def get_running_loop() -> Any:
        return _RangedLoop(asyncio.get_running_loop())


_gather_candidates = aioice.ice.Connection.gather_candidates


async def _gather_or_fail(self: aioice.ice.Connection) -> None:
    """aioice logs a socket it cannot bind and goes on: with no host candidate at all, fail instead."""
    await _gather_candidates(self)
    wanted = self._transport_policy == aioice.ice.TransportPolicy.ALL and aioice.ice.get_host_addresses(
        use_ipv4=self._use_ipv4, use_ipv6=self._use_ipv6)
    if _port_range is not None and wanted and not any(c.type == "host" for c in self.local_candidates):
        await self.close()
        raise NoMediaPort(f"every UDP port in {_port_range.low}-{_port_range.high} is in use (ice.port_range)")


def set_port_range(port_range: list[int]) -> None:
    """Bind every media socket (host candidates, TURN clients) inside [low, high]; [] = any port."""
    global _port_range
    _port_range = _PortRange(port_range[0], port_range[1]) if port_range else None
    if isinstance(aioice.ice.asyncio, types.ModuleType) and aioice.ice.asyncio is asyncio:
        aioice.ice.asyncio = _RangedAsyncio()
        aioice.turn.asyncio = _RangedAsyncio()
        aioice.ice.Connection.gather_candidates = _gather_or_fail  # type: ignore[method-assign]


# --- Per-packet forwarding (issue 12): a viewer's sender without its RTP task -------------
#
# The forwarder writes each publisher packet, rewritten, straight to a viewer's SRTP
# context and ICE socket (docs/design.md "Packets, not frames"). The viewer's stock
# RTCRtpSender stays for what it does well (SDP, SSRCs, RTCP SR/SDES/BYE, RR stats):
# its track never yields, so `_run_rtp` parks at `recv()` and `stop()` still completes
# (cancelling that task instead makes `stop()` wait forever, rtcrtpsender.py:239-242).

SRTP_BUFFER = 4096
"""Each viewer's packet buffer: room for any UDP-sized packet plus SRTP's trailer. (pylibsrtp's own
protects at most 1500 - 144 bytes, and native publishers fill a 1400-byte MTU.)"""

_ffi, _lib = pylibsrtp._binding.ffi, pylibsrtp._binding.lib

srtp_protect: Callable[[Any, Any, Any], int] = _lib.srtp_protect
"""libsrtp's `srtp_protect(context, buffer, length)`: the packet in `buffer`, `length[0]` bytes long,
protected in place (length updated); 0 when done. pylibsrtp's `Session.protect` wraps it with two
copies, an allocation and checks: about half of a forwarded packet's cost in Python."""


def srtp_context(session: pylibsrtp.Session) -> Any:
    """The libsrtp context of `session`, valid while `session` lives (the caller keeps it)."""
    return session._srtp[0]


def srtp_buffer() -> tuple[Any, memoryview]:
    """A packet buffer for `srtp_protect` and a writable view of the same bytes."""
    cdata = _ffi.new("char[]", SRTP_BUFFER)
    return cdata, memoryview(_ffi.buffer(cdata))


def srtp_length() -> Any:
    """The length cell `srtp_protect` reads and updates."""
    return _ffi.new("int *")


def _check_forwarding() -> None:
    problems = []
    sender_names = RTCRtpSender.__init__.__code__.co_names
    for name in ("_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
                 "_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count"):
        if name not in sender_names or name not in RTCRtpSender._run_rtcp.__code__.co_names:
            problems.append(f"RTCRtpSender no longer reports {name} in its SR")
    if "_srtp" not in pylibsrtp.Session.__init__.__code__.co_names or not hasattr(_lib, "srtp_protect"):
        problems.append("pylibsrtp.Session no longer keeps its libsrtp context in _srtp")
    if "_tx_srtp" not in RTCDtlsTransport._send_rtp.__code__.co_names:
        problems.append("RTCDtlsTransport._send_rtp no longer protects with _tx_srtp")
    if "_nominated" not in aioice.ice.Connection.sendto.__code__.co_names:
        problems.append("aioice Connection.sendto no longer sends on _nominated")
    if "remote_addr" not in vars(aioice.ice.CandidatePair):
        problems.append("aioice CandidatePair.remote_addr is gone")
    if "_handle_rtcp_packet" not in vars(RTCRtpReceiver):
        problems.append("RTCRtpReceiver._handle_rtcp_packet is gone")
    if problems:
        raise ImportError("relay.media.aiortc_patch: " + "; ".join(problems))


_check_forwarding()


class ParkedTrack(_Track):
    """A sender's track that never yields: its `_run_rtp` waits here, encoding nothing."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()  # cancelled by the sender's stop()


@dataclass(frozen=True, slots=True)
class SendPath:
    """What the forwarder needs of one viewer's sender, read once when it starts.

    `srtp`, `sendto` and `addr` are the viewer's SRTP session (shared with
    aiortc's own RTCP: one per DTLS transport) and its nominated ICE pair's
    socket: protecting in place (`srtp_protect`) and `sendto` is all a packet costs.
    """

    ssrc: int
    rtx_ssrc: int
    payload_type: int
    rtx_payload_type: int | None
    mid: str | None
    extensions: dict[str, int]  # negotiated header extension URI -> id
    srtp: pylibsrtp.Session
    sendto: Callable[[memoryview, tuple[str, int]], Any]
    addr: tuple[str, int]


class SenderReport(Protocol):
    """Where a forwarded sender's SR reads its figures from (`Output` in media.forwarder)."""

    @property
    def packets(self) -> int: ...

    @property
    def octets(self) -> int: ...

    def report_times(self) -> tuple[int, int]:
        """(NTP time, RTP timestamp) of one instant, in the viewer's timestamps."""


def _sr_field(name: str) -> property:
    def get(sender: Any) -> int:
        report: SenderReport = sender._relay_report
        if name == "packets":
            return report.packets
        if name == "octets":
            return report.octets
        return report.report_times()[0 if name == "ntp" else 1]

    return property(get, lambda sender, value: None)  # _run_rtp, parked, never writes


class _ForwardedSender(RTCRtpSender):
    """A sender whose SR figures come from the forwarder (the class of a forwarded sender).

    Read only when `_run_rtcp` sends an SR (every 0.5-1.5 s), never per packet.
    """

    _RTCRtpSender__packet_count = _sr_field("packets")
    _RTCRtpSender__octet_count = _sr_field("octets")
    _RTCRtpSender__ntp_timestamp = _sr_field("ntp")
    _RTCRtpSender__rtp_timestamp = _sr_field("rtp")


def forward_sender(
    sender: RTCRtpSender,
    report: SenderReport,
    on_ready: Callable[[SendPath], None],
    on_closed: Callable[[], None],
) -> None:
    """Make `sender` a forwarded one: `on_ready` gets its send path once DTLS is up.

    aiortc calls `send()` once DTLS is connected (rtcpeerconnection.py:1085-1089),
    so `_tx_srtp` and the nominated pair exist then. `on_closed` is called when
    the DTLS transport closes or fails: the forwarder must stop sending to it.
    """
    sender._relay_report = report  # type: ignore[attr-defined]
    sender.__class__ = _ForwardedSender
    send = sender.send

    async def send_and_forward(parameters: RTCRtpSendParameters) -> None:
        await send(parameters)
        dtls = sender.transport
        if dtls._state is not _DtlsState.CONNECTED:
            return
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return
        codec = parameters.codecs[0]
        assert codec.payloadType is not None  # negotiated
        rtx = next((c.payloadType for c in parameters.codecs
                    if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == codec.payloadType), None)

        def on_state() -> None:
            if dtls._state in (_DtlsState.CLOSED, _DtlsState.FAILED):
                dtls.remove_listener("statechange", on_state)
                on_closed()

        # The host socket itself: asyncio's transport.sendto adds checks and a buffer
        # (about a fifth of the cost here); a datagram the kernel cannot take now is
        # lost like any UDP packet, and NACK repairs it. A TURN pair has no socket.
        # The packet is a view of the viewer's buffer, rewritten by the next one: TURN's
        # sendto, which sends from a task, gets a copy.
        transport = pair.protocol.transport
        sock = getattr(transport, "_sock", None)
        sendto: Callable[[memoryview, tuple[str, int]], Any] = (
            sock.sendto if isinstance(sock, socket.socket)
            else lambda data, addr: transport.sendto(bytes(data), addr))
        dtls.on("statechange", on_state)
        on_ready(SendPath(
            ssrc=sender._ssrc, rtx_ssrc=sender._rtx_ssrc, payload_type=codec.payloadType, rtx_payload_type=rtx,
            mid=parameters.muxId, extensions={e.uri: e.id for e in parameters.headerExtensions},
            srtp=dtls._tx_srtp, sendto=sendto, addr=pair.remote_addr,
        ))

    sender.send = send_and_forward  # type: ignore[method-assign]


def on_retransmit_request(sender: RTCRtpSender, callback: Callable[[int], None]) -> None:
    """Give each sequence number a viewer's NACK asks for to `callback` (the stock history is empty)."""

    async def retransmit(sequence_number: int) -> None:
        callback(sequence_number & 0xFFFF)  # aiortc does not mask NACK's lost values (rtp.py:512)

    sender._retransmit = retransmit  # type: ignore[method-assign]


def on_sender_report(receiver: RTCRtpReceiver, callback: Callable[[int, int], None]) -> None:
    """Tell `callback` each (NTP time, RTP timestamp) pair of the publisher's sender reports."""
    handle = receiver._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            callback(packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp)
        await handle(packet)

    receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
