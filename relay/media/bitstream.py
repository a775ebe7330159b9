"""What Relay reads of VP8, VP9, AV1 and H.264 bitstreams: frame starts, keyframes, sizes.

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
            raise ValueError("header truncated")
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
    sizes = {"vp8": vp8_size, "vp9": vp9_size, "av1": av1_size}
    return sizes.get(codec.lower(), h264_size)(frame)


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


# VP9's RTP payload descriptor (RFC 9628 §4.2), first byte: I P L F B E V Z.
VP9_I, VP9_P, VP9_L, VP9_F, VP9_B, VP9_E, VP9_V = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02


def vp9_descriptor(payload: bytes) -> tuple[int, int]:
    """(length of the payload descriptor, spatial layer id) of an RTP VP9 packet; length 0 if it is cut short.

    Skips the picture ID (I, 7 or 15 bits), the layer indices (L; TL0PICIDX
    too in non-flexible mode), the reference indices (F and P) and the
    scalability structure (V), in that order (RFC 9628 §4.2-4.3). Without L
    the stream has one spatial layer: 0.
    """
    size = len(payload)
    if not size:
        return 0, 0
    b0 = payload[0]
    pos, sid = 1, 0
    if b0 & VP9_I:
        pos += 2 if size > pos and payload[pos] & 0x80 else 1
    if b0 & VP9_L:
        if size <= pos:
            return 0, 0
        sid = (payload[pos] >> 1) & 0x07
        pos += 1 if b0 & VP9_F else 2
    if b0 & VP9_F and b0 & VP9_P:
        for _ in range(3):  # at most three references, each byte's N bit says another follows
            if size <= pos:
                return 0, 0
            pos += 1
            if not payload[pos - 1] & 0x01:
                break
    if b0 & VP9_V:
        if size <= pos:
            return 0, 0
        ss = payload[pos]
        pos += 1
        if ss & 0x10:  # Y: a width and height per spatial layer
            pos += 4 * ((ss >> 5) + 1)
        if ss & 0x08:  # G: the picture group
            if size <= pos:
                return 0, 0
            count, pos = payload[pos], pos + 1
            for _ in range(count):
                if size <= pos:
                    return 0, 0
                pos += 1 + ((payload[pos] >> 2) & 0x03)
    return (pos, sid) if pos <= size else (0, 0)


def vp9_frame_start(payload: bytes) -> bool:
    """B=1 on the base spatial layer: the first packet of a picture (RFC 9628 §4.2)."""
    if not payload or not payload[0] & VP9_B:
        return False
    length, sid = vp9_descriptor(payload)
    return length > 0 and sid == 0


def vp9_frame_end(payload: bytes) -> bool:
    """E=1 without layer indices: the last packet of a picture of a stream with one spatial layer.

    With L, E ends one spatial layer's frame and only the marker bit ends the picture.
    """
    return bool(payload) and payload[0] & (VP9_E | VP9_L) == VP9_E


def _vp9_header(frame: bytes) -> tuple[_Bits, int] | None:
    """The VP9 uncompressed header (VP9 spec §6.2) read up to frame_type, if it is a keyframe's; and the profile."""
    if not frame or frame[0] >> 6 != 2:  # frame_marker
        return None
    bits = _Bits(frame[:16])
    try:
        bits.u(2)
        profile = bits.u(1) | bits.u(1) << 1
        if profile == 3:
            bits.u(1)
        if bits.u(1):  # show_existing_frame: no frame of its own
            return None
        if bits.u(1):  # frame_type: 0 is KEY_FRAME
            return None
    except ValueError:
        return None
    return bits, profile


def vp9_keyframe(frame: bytes) -> bool:
    """frame_type KEY_FRAME in the uncompressed header of the frame's first (base layer) frame."""
    return _vp9_header(frame) is not None


def vp9_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP9 keyframe's uncompressed header (VP9 spec §6.2, color_config, frame_size)."""
    header = _vp9_header(frame)
    if header is None:
        return None
    bits, profile = header
    try:
        bits.u(2)  # show_frame, error_resilient_mode
        if bits.u(24) != 0x498342:  # frame_sync_code
            return None
        if profile >= 2:
            bits.u(1)  # ten_or_twelve_bit
        if bits.u(3) != 7:  # color_space other than CS_RGB
            bits.u(1)  # color_range
            if profile in (1, 3):
                bits.u(3)  # subsampling_x, subsampling_y, reserved_zero
        elif profile in (1, 3):
            bits.u(1)
        return bits.u(16) + 1, bits.u(16) + 1
    except ValueError:
        return None


def vp9_packet_keyframe(payload: bytes) -> bool:
    """The first packet of a VP9 keyframe: B=1, P=0, base spatial layer, a KEY_FRAME header (RFC 9628 §4.2).

    P=0 alone also marks intra-only frames, which cannot start a decoder, so the
    frame's own header decides.
    """
    if len(payload) < 2 or payload[0] & (VP9_B | VP9_P) != VP9_B:
        return False
    length, sid = vp9_descriptor(payload)
    return length > 0 and sid == 0 and vp9_keyframe(payload[length:length + 16])


def vp9_picture(payloads: list[bytes]) -> bytes:
    """A picture's RTP payloads as one VP9 frame: descriptors stripped, one frame per spatial layer.

    Each layer's frame starts at a B bit. Several layers become a superframe
    (VP9 spec Annex B): the frames, then an index of their sizes, as libvpx
    writes an SVC picture and as WebM stores it.
    """
    frames: list[bytearray] = []
    for payload in payloads:
        length, _ = vp9_descriptor(payload)
        if not length:
            continue
        if payload[0] & VP9_B or not frames:
            frames.append(bytearray())
        frames[-1] += payload[length:]
    if len(frames) <= 1:
        return bytes(frames[0]) if frames else b""
    largest = max(len(f) for f in frames)
    width = next(n for n in (1, 2, 3, 4) if largest < 1 << (8 * n))
    marker = bytes([0xC0 | (width - 1) << 3 | (len(frames) - 1)])
    index = marker + b"".join(len(f).to_bytes(width, "little") for f in frames) + marker
    return b"".join(frames) + index


# AV1's RTP aggregation header (AV1 RTP payload format §4.4), one byte: Z Y W W N - - -.
AV1_Z, AV1_Y, AV1_N = 0x80, 0x40, 0x08
AV1_SEQUENCE_HEADER, AV1_TEMPORAL_DELIMITER = 1, 2  # OBU types (AV1 spec §6.2.2)


def leb128(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 value at `pos` and the position after it (AV1 spec §4.10.5)."""
    value = 0
    for i in range(8):
        if pos >= len(data):
            raise ValueError("LEB128 value truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ValueError("LEB128 value too long")


def to_leb128(value: int) -> bytes:
    """`value` as unsigned LEB128."""
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def av1_packet_keyframe(payload: bytes) -> bool:
    """N=1 (so Z=0): the first packet of a coded video sequence, which starts with a keyframe."""
    return bool(payload) and payload[0] & (AV1_Z | AV1_N) == AV1_N


def av1_obus(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, whole OBU) of a low-overhead bitstream (AV1 spec §5), every OBU with its size field."""
    obus, pos = [], 0
    try:
        while pos < len(data):
            header = data[pos]
            start = pos + 1 + (1 if header & 0x04 else 0)  # obu_extension_flag
            if not header & 0x02:  # no obu_has_size_field: the OBU runs to the end
                obus.append(((header >> 3) & 0x0F, data[pos:]))
                break
            size, body = leb128(data, start)
            obus.append(((header >> 3) & 0x0F, data[pos:body + size]))
            pos = body + size
    except ValueError:
        pass
    return obus


def av1_temporal_unit(payloads: list[bytes]) -> bytes:
    """A temporal unit's RTP payloads as a low-overhead bitstream (AV1 spec §5), as WebM stores it.

    Each packet holds OBU elements, the first a continuation when Z is set;
    W of them, or all (W=0), have a LEB128 length first (RTP payload format
    §4.4-4.5). Each OBU gets its size field back, and temporal delimiters are
    dropped, as Matroska's AV1 mapping wants.
    """
    obus: list[bytearray] = []
    open_obu: bytearray | None = None  # the OBU the previous packet left open (Y), if its start arrived
    for payload in payloads:
        if not payload:
            continue
        aggregation, count, pos, index = payload[0], (payload[0] >> 4) & 0x03, 1, 0
        last: bytearray | None = None
        try:
            while pos < len(payload):
                index += 1
                if count and index == count:
                    size = len(payload) - pos
                else:
                    size, pos = leb128(payload, pos)
                element = payload[pos:pos + size]
                pos += size
                if index == 1 and aggregation & AV1_Z:
                    last = open_obu  # None if its start was lost: the fragment is dropped
                    if last is not None:
                        last += element
                else:
                    last = bytearray(element)
                    obus.append(last)
        except ValueError:
            last = None
        open_obu = last if aggregation & AV1_Y else None
    out = bytearray()
    for obu in obus:
        if not obu or (obu[0] >> 3) & 0x0F == AV1_TEMPORAL_DELIMITER:
            continue
        header_size = 2 if obu[0] & 0x04 else 1
        if obu[0] & 0x02:
            out += obu  # the sender kept the size field
        else:
            out += bytes([obu[0] | 0x02]) + obu[1:header_size] + to_leb128(len(obu) - header_size) + obu[header_size:]
    return bytes(out)


def av1_keyframe(temporal_unit: bytes) -> bool:
    """A temporal unit a decoder can start on: it begins a coded video sequence (a sequence header)."""
    return any(kind == AV1_SEQUENCE_HEADER for kind, _ in av1_obus(temporal_unit))


def av1_size(temporal_unit: bytes) -> tuple[int, int] | None:
    """Width and height (the maximum the sequence allows) from the temporal unit's sequence header (AV1 spec §5.5)."""
    obu = next((o for kind, o in av1_obus(temporal_unit) if kind == AV1_SEQUENCE_HEADER), None)
    if obu is None:
        return None
    try:
        _size, body = leb128(obu, 2 if obu[0] & 0x04 else 1)
        bits = _Bits(obu[body:])
        bits.u(3)  # seq_profile
        bits.u(1)  # still_picture
        if bits.u(1):  # reduced_still_picture_header
            bits.u(5)
        else:
            decoder_model = False
            buffer_delay_bits = 0
            if bits.u(1):  # timing_info_present_flag
                bits.u(32)
                bits.u(32)
                if bits.u(1):  # equal_picture_interval
                    bits.ue()
                decoder_model = bool(bits.u(1))
                if decoder_model:
                    buffer_delay_bits = bits.u(5) + 1
                    bits.u(32)
                    bits.u(10)
            display_delay = bits.u(1)
            for _ in range(bits.u(5) + 1):  # operating points
                bits.u(12)
                if bits.u(5) > 7:  # seq_level_idx
                    bits.u(1)
                if decoder_model and bits.u(1):
                    bits.u(2 * buffer_delay_bits + 1)
                if display_delay and bits.u(1):
                    bits.u(4)
        width_bits, height_bits = bits.u(4) + 1, bits.u(4) + 1
        return bits.u(width_bits) + 1, bits.u(height_bits) + 1
    except ValueError:
        return None
