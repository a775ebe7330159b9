"""What Relay reads of VP8 and H.264 bitstreams: frame starts, keyframes, sizes.

Only headers are parsed, never pictures; this is how a relay that does not
decode still knows where frames start and how big the picture is.
"""

from __future__ import annotations

import re

H264_IDR = 5
H264_SPS = 7
_START_CODE = re.compile(b"\x00\x00\x01")


def vp8_frame_start(payload: bytes) -> bool:
    """S=1 and partition index 0 in the VP8 payload descriptor (RFC 7741 §4.2)."""
    return bool(payload) and payload[0] & 0x17 == 0x10


def vp8_keyframe(frame: bytes) -> bool:
    """P bit clear in the first byte of the VP8 frame (RFC 6386 §9.1)."""
    return bool(frame) and frame[0] & 0x01 == 0


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 §9.1)."""
    if len(frame) < 10 or not vp8_keyframe(frame) or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (
        int.from_bytes(frame[6:8], "little") & 0x3FFF,
        int.from_bytes(frame[8:10], "little") & 0x3FFF,
    )


def h264_packet_nal_type(payload: bytes) -> int:
    """The NAL type an RTP packet carries; for STAP-A the first one (RFC 6184 §5)."""
    if not payload:
        return 0
    nal = payload[0] & 0x1F
    if nal == 24 and len(payload) > 3:  # STAP-A
        return payload[3] & 0x1F
    if nal == 28 and len(payload) > 1:  # FU-A
        return payload[1] & 0x1F
    return nal


def h264_nal_units(annexb: bytes) -> list[bytes]:
    """Split an Annex-B byte stream on its start codes."""
    return [unit.rstrip(b"\x00") for unit in _START_CODE.split(annexb)[1:]]


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def u(self, n: int) -> int:
        if n > self._left:
            raise ValueError("SPS truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def h264_sps_size(sps: bytes) -> tuple[int, int] | None:
    """Width and height from an SPS NAL unit (H.264 §7.3.2.1.1), cropping applied."""
    try:
        bits = _Bits(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
        profile = bits.u(8)
        bits.u(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma = 1
        if profile in _HIGH_PROFILES:
            chroma = bits.ue()
            if chroma == 3:
                bits.u(1)
            bits.ue()
            bits.ue()
            bits.u(1)
            if bits.u(1):
                return None  # scaling matrices: not worth parsing for a size
        bits.ue()  # log2_max_frame_num_minus4
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.u(1)
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.u(1)
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.u(1)
        if not frame_mbs_only:
            bits.u(1)
        bits.u(1)
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue()) if bits.u(1) else (0, 0, 0, 0)
    except ValueError:
        return None
    crop_x = 2 if chroma in (1, 2) else 1
    crop_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return width, height


def h264_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from the SPS of an Annex-B access unit, if it has one."""
    for nal in h264_nal_units(frame):
        if nal and nal[0] & 0x1F == H264_SPS:
            return h264_sps_size(nal)
    return None


def video_size(codec: str, frame: bytes) -> tuple[int, int] | None:
    return vp8_size(frame) if codec.lower() == "vp8" else h264_size(frame)


def vp8_packet_keyframe(payload: bytes) -> bool:
    """The first packet of a VP8 keyframe: S=1, PID 0 and the P bit clear (RFC 7741 §4.2-4.3).

    Skips the payload descriptor (X; then I with M, L, T|K) to reach the
    first byte of the VP8 frame.
    """
    if len(payload) < 2 or payload[0] & 0x17 != 0x10:
        return False
    pos = 1
    if payload[0] & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            pos += 2 if len(payload) > pos and payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    return len(payload) > pos and payload[pos] & 0x01 == 0


def h264_packet_keyframe(payload: bytes) -> int:
    """Whether an RTP packet starts an H.264 keyframe: 2 if it carries an SPS, 1 an IDR start, else 0.

    Single NAL (type 7 or 5), STAP-A (an inner type 7 or 5) or the FU-A start
    of an IDR (RFC 6184 §5.6-5.8). A keyframe starts at the SPS when there is
    one, so its parameter sets reach the viewer before the IDR.
    """
    if not payload:
        return 0
    nal = payload[0] & 0x1F
    if nal == 28:
        return 1 if len(payload) > 1 and payload[1] & 0x80 and payload[1] & 0x1F == H264_IDR else 0
    if nal == 24:
        found, pos = 0, 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos:pos + 2], "big")
            inner = payload[pos + 2] & 0x1F
            if inner == H264_SPS:
                return 2
            if inner == H264_IDR:
                found = 1
            pos += 2 + size
        return found
    return 2 if nal == H264_SPS else 1 if nal == H264_IDR else 0
