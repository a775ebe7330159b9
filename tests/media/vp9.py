"""Real VP9 frames (libvpx through PyAV) in RTP packets as RFC 9628 lays them out, for tests without a browser.

The layouts are libwebrtc's: non-flexible mode with a 15-bit picture ID, layer
indices, TL0PICIDX and, on keyframes, the scalability structure; or flexible
mode with one reference index on inter frames.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from relay.media.bitstream import VP9_B, VP9_E, VP9_F, VP9_I, VP9_L, VP9_P, VP9_V

from .rtp import Pkt

REALTIME = {"lag-in-frames": "0", "deadline": "realtime", "cpu-used": "8", "g": "100"}


def encode_vp9(width: int, height: int, frames: int) -> list[bytes]:
    """`frames` moving-noise frames from libvpx-vp9; the first is a keyframe, the rest are not (no hidden frames)."""
    context = av.CodecContext.create("libvpx-vp9", "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = Fraction(1, 30)
    context.options = REALTIME
    rng = np.random.default_rng(1)
    out = []
    for i in range(frames):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in context.encode(frame)]
    out += [bytes(p) for p in context.encode(None)]
    return out


def descriptor(picture_id: int, *, keyframe: bool, start: bool, end: bool, sid: int = 0,
               size: tuple[int, int] | None = None, flexible: bool = False) -> bytes:
    """One packet's payload descriptor (RFC 9628 §4.2)."""
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


def packetize(frame: bytes, picture_id: int, *, keyframe: bool, sid: int = 0, size: tuple[int, int] | None = None,
              flexible: bool = False, mtu: int = 1100) -> list[bytes]:
    """A layer frame's RTP payloads: each a descriptor and at most `mtu` bytes of the frame."""
    chunks = [frame[i:i + mtu] for i in range(0, len(frame), mtu)]
    return [descriptor(picture_id, keyframe=keyframe, start=i == 0, end=i == len(chunks) - 1, sid=sid,
                       size=size if keyframe else None, flexible=flexible) + chunk
            for i, chunk in enumerate(chunks)]


def rtp_packets(frames: list[bytes], size: tuple[int, int], seq: int = 65000, ts: int = 0,
                flexible: bool = False) -> list[Pkt]:
    """One picture per frame, 3000 ticks apart, the marker on each picture's last packet.

    aiortc leaves VP9's payload as it is in `_data` (it depayloads VP8 and H.264 only).
    """
    out = []
    for n, frame in enumerate(frames):
        payloads = packetize(frame, n, keyframe=n == 0, size=size, flexible=flexible)
        for i, payload in enumerate(payloads):
            out.append(Pkt(seq & 0xFFFF, (ts + 3000 * n) & 0xFFFFFFFF, int(i == len(payloads) - 1), payload, payload))
            seq += 1
    return out
