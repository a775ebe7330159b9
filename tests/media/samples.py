"""Real encoded frames (PyAV's encoders) and RTP packets made of them as the payload formats lay them out.

Tests feed Relay VP9 and AV1 as browsers packetize them without a browser:
VP9 in libwebrtc's layouts (RFC 9628: non-flexible mode with a 15-bit picture
ID, layer indices, TL0PICIDX and the scalability structure on keyframes, or
flexible mode with a reference index), AV1 in OBU elements with and without
length fields, fragmented across packets (AV1 RTP payload format §4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from relay.media.bitstream import (
    AV1_N,
    AV1_TEMPORAL_DELIMITER,
    AV1_Y,
    AV1_Z,
    VP9_B,
    VP9_E,
    VP9_F,
    VP9_I,
    VP9_L,
    VP9_P,
    VP9_V,
    av1_obus,
    leb128,
    to_leb128,
)

# Encoder options for quick frames without hidden ones: one frame in, one frame out.
VP9_REALTIME = {"lag-in-frames": "0", "deadline": "realtime", "cpu-used": "8"}
AV1_REALTIME = {"preset": "12", "svtav1-params": "keyint=1000:pred-struct=1"}


@dataclass
class Pkt:
    """What the assembler reads of aiortc's RtpPacket (after depayloading)."""

    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes
    _data: bytes


def encode(codec: str, width: int, height: int, frames: int = 3, **options: str) -> list[bytes]:
    """Encode `frames` noise frames; the first is a keyframe, the rest are not."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = Fraction(1, 30)
    context.options = {"g": "100", **options}
    rng = np.random.default_rng(1)
    out = []
    for i in range(frames):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in context.encode(frame)]
    out += [bytes(p) for p in context.encode(None)]
    return out


def encode_vp9(width: int, height: int, frames: int) -> list[bytes]:
    return encode("libvpx-vp9", width, height, frames, **VP9_REALTIME)


def encode_av1(width: int, height: int, frames: int) -> list[bytes]:
    return encode("libsvtav1", width, height, frames, **AV1_REALTIME)


def build_vp9_descriptor(picture_id: int, *, keyframe: bool, start: bool, end: bool, sid: int = 0,
                   size: tuple[int, int] | None = None, flexible: bool = False) -> bytes:
    """One packet's VP9 payload descriptor (RFC 9628 §4.2)."""
    b0 = VP9_I | VP9_L | (VP9_B if start else 0) | (VP9_E if end else 0)
    b0 |= 0 if keyframe else VP9_P
    b0 |= VP9_F if flexible else 0
    out = bytearray([b0, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
    out.append(sid << 1 | (1 if sid and keyframe else 0))  # TID 0, U 0, SID, D (inter-layer dependency)
    if not flexible:
        out.append(picture_id & 0xFF)  # TL0PICIDX
    elif not keyframe:
        out.append(1 << 1)  # one reference: the previous picture (P_DIFF 1, N 0)
    if size is not None and start:
        out[0] |= VP9_V
        out += bytes([0x18])  # N_S 0 (one layer), Y, G
        out += size[0].to_bytes(2, "big") + size[1].to_bytes(2, "big")
        out += bytes([1, 0x04, 1])  # one picture in the group: TID 0, U 0, R 1, P_DIFF 1
    return bytes(out)


def packetize_vp9(frame: bytes, picture_id: int, *, keyframe: bool, sid: int = 0,
                  size: tuple[int, int] | None = None, flexible: bool = False, mtu: int = 1100) -> list[bytes]:
    """A layer frame's RTP payloads: each a descriptor and at most `mtu` bytes of the frame."""
    chunks = [frame[i:i + mtu] for i in range(0, len(frame), mtu)]
    return [build_vp9_descriptor(picture_id, keyframe=keyframe, start=i == 0, end=i == len(chunks) - 1, sid=sid,
                           size=size if keyframe else None, flexible=flexible) + chunk
            for i, chunk in enumerate(chunks)]


def packetize_av1(temporal_unit: bytes, *, keyframe: bool, mtu: int = 1100, counted: bool = True) -> list[bytes]:
    """A temporal unit's RTP payloads: its OBUs without size fields or temporal delimiter, as elements.

    Packets fill up to `mtu`; an OBU that does not fit continues in the next
    packet (Y, then Z). With `counted`, up to three elements are counted in W
    (the last without a length); otherwise, or with more, all are length-prefixed (W=0).
    """
    obus = []
    for kind, obu in av1_obus(temporal_unit):
        if kind == AV1_TEMPORAL_DELIMITER:
            continue
        header = 2 if obu[0] & 0x04 else 1
        _, body = leb128(obu, header)
        obus.append(bytes([obu[0] & ~0x02 & 0xFF]) + obu[1:header] + obu[body:])
    packets: list[tuple[bool, bool, list[bytes]]] = []  # (Z, Y, elements)
    z, elements, used = False, [], 1
    for obu in obus:
        pos = 0
        while pos < len(obu):
            room = mtu - used - 2  # two bytes of length for each element
            if room < 1:
                packets.append((z, False, elements))
                z, elements, used = False, [], 1
                continue
            chunk = obu[pos:pos + room]
            pos += len(chunk)
            elements.append(chunk)
            used += len(chunk) + 2
            if pos < len(obu):
                packets.append((z, True, elements))
                z, elements, used = True, [], 1
    if elements:
        packets.append((z, False, elements))
    out = []
    for i, (z, y, items) in enumerate(packets):
        count = len(items) if counted and len(items) <= 3 else 0
        header = (AV1_Z if z else 0) | (AV1_Y if y else 0) | count << 4 | (AV1_N if keyframe and i == 0 else 0)
        body = b"".join(item if count and n == count - 1 else to_leb128(len(item)) + item
                        for n, item in enumerate(items))
        out.append(bytes([header]) + body)
    return out


def rtp_packets(payloads: Callable[[int, bytes], list[bytes]], frames: list[bytes], seq: int = 65000,
                ts: int = 0) -> list[Pkt]:
    """One frame after another, 3000 ticks apart, the marker on each frame's last packet.

    `payloads(n, frame)` packetizes frame `n`. aiortc leaves VP9 and AV1
    payloads as they are in `_data` (it depayloads VP8 and H.264 only).
    """
    out = []
    for n, frame in enumerate(frames):
        parts = payloads(n, frame)
        for i, payload in enumerate(parts):
            out.append(Pkt(seq & 0xFFFF, (ts + 3000 * n) & 0xFFFFFFFF, int(i == len(parts) - 1), payload, payload))
            seq += 1
    return out


def vp9_stream(frames: list[bytes], size: tuple[int, int], flexible: bool = False) -> list[Pkt]:
    return rtp_packets(lambda n, frame: packetize_vp9(frame, n, keyframe=n == 0, size=size, flexible=flexible),
                       frames)


def av1_stream(frames: list[bytes]) -> list[Pkt]:
    return rtp_packets(lambda n, frame: packetize_av1(frame, keyframe=n == 0), frames)
