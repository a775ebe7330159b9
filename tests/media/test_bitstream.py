"""VP8, VP9, AV1 and H.264 headers as real encoders write them: keyframes, frame starts, sizes, SPS cropping."""

from __future__ import annotations

import pytest

from relay.media.bitstream import (
    AV1_SEQUENCE_HEADER,
    AV1_TEMPORAL_DELIMITER,
    H264_IDR,
    H264_SPS,
    av1_keyframe,
    av1_obus,
    av1_packet_keyframe,
    av1_size,
    av1_temporal_unit,
    h264_nal_units,
    h264_packet_keyframe,
    h264_packet_nal_type,
    h264_size,
    h264_sps_size,
    video_size,
    vp8_frame_start,
    vp8_keyframe,
    vp8_packet_keyframe,
    vp8_size,
    vp9_descriptor,
    vp9_frame_end,
    vp9_frame_start,
    vp9_keyframe,
    vp9_packet_keyframe,
    vp9_picture,
    vp9_size,
)

from .samples import build_vp9_descriptor, encode, encode_av1, encode_vp9, packetize_av1, packetize_vp9


@pytest.mark.parametrize("width,height", [(320, 240), (642, 362), (1280, 720)])
def test_vp8_keyframe_and_size(width: int, height: int) -> None:
    key, *deltas = encode("libvpx", width, height)
    assert vp8_keyframe(key) and vp8_size(key) == (width, height)
    assert video_size("VP8", key) == (width, height)
    assert deltas and not any(vp8_keyframe(d) for d in deltas)
    assert all(vp8_size(d) is None for d in deltas)


def test_vp8_frame_start_reads_the_payload_descriptor() -> None:
    assert vp8_frame_start(bytes([0x10, 0x00]))  # S=1, PID=0
    assert vp8_frame_start(bytes([0x90, 0x80, 0x01]))  # X=1 extension, S=1, PID=0
    assert not vp8_frame_start(bytes([0x00]))  # continuation
    assert not vp8_frame_start(bytes([0x11]))  # S=1 but partition 1
    assert not vp8_frame_start(b"")


@pytest.mark.parametrize("width,height,profile", [
    (320, 240, "baseline"),  # whole macroblocks: no cropping
    (320, 180, "baseline"),  # 180 = 11.25 macroblocks: bottom cropped
    (642, 362, "baseline"),  # odd sizes: cropped right and bottom
    (1280, 720, "high"),  # a High-profile SPS has chroma and bit-depth fields first
    (1918, 1078, "high"),
])
def test_h264_sps_size_applies_cropping(width: int, height: int, profile: str) -> None:
    key, *deltas = encode("libx264", width, height, profile=profile, tune="zerolatency")
    units = h264_nal_units(key)
    types = [u[0] & 0x1F for u in units]
    assert H264_SPS in types and H264_IDR in types
    sps = units[types.index(H264_SPS)]
    assert h264_sps_size(sps) == (width, height)
    assert h264_size(key) == video_size("H264", key) == (width, height)
    assert deltas and all(h264_size(d) is None for d in deltas)  # no SPS outside the keyframe


def test_h264_sps_that_is_cut_short_gives_no_size() -> None:
    key = encode("libx264", 320, 240, frames=1, profile="baseline")[0]
    sps = next(u for u in h264_nal_units(key) if u[0] & 0x1F == H264_SPS)
    assert h264_sps_size(sps[:4]) is None


def test_h264_packet_nal_type_looks_inside_stap_a_and_fu_a() -> None:
    assert h264_packet_nal_type(bytes([0x65, 0x88])) == H264_IDR  # single NAL unit
    stap_a = bytes([0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE])
    assert h264_packet_nal_type(stap_a) == H264_SPS
    fu_a_start = bytes([0x7C, 0x85, 0x00])  # FU indicator type 28, header S=1 type 5
    assert h264_packet_nal_type(fu_a_start) == H264_IDR
    assert h264_packet_nal_type(b"") == 0


def test_vp8_keyframes_are_found_at_packet_level_behind_any_descriptor() -> None:
    key, delta = b"\x50", b"\x51"  # first VP8 frame byte: P bit clear / set
    assert vp8_packet_keyframe(b"\x10" + key)
    assert not vp8_packet_keyframe(b"\x10" + delta)
    assert vp8_packet_keyframe(b"\x90\x80\x12" + key)  # X, I with a 7-bit picture id
    assert vp8_packet_keyframe(b"\x90\xe0\x80\x12\x05\x20" + key)  # I (15-bit), L, T
    assert not vp8_packet_keyframe(b"\x90\xe0\x80\x12\x05\x20" + delta)
    assert not vp8_packet_keyframe(b"\x00" + key), "not a frame start"
    assert not vp8_packet_keyframe(b"\x11" + key), "partition 1"


def test_h264_keyframes_are_found_in_single_nal_stap_a_and_fu_a() -> None:
    sps, pps, idr, slice_ = b"\x67\x42", b"\x68\xce", b"\x65\x88", b"\x41\x9a"
    assert h264_packet_keyframe(sps) == 2 and h264_packet_keyframe(idr) == 1
    assert h264_packet_keyframe(slice_) == 0 and h264_packet_keyframe(pps) == 0

    def stap(*nals: bytes) -> bytes:
        return b"\x18" + b"".join(len(n).to_bytes(2, "big") + n for n in nals)

    assert h264_packet_keyframe(stap(sps, pps)) == 2
    assert h264_packet_keyframe(stap(pps, idr)) == 1
    assert h264_packet_keyframe(stap(pps, slice_)) == 0
    assert h264_packet_keyframe(b"\x7c\x85" + bytes(10)) == 1  # FU-A, S=1, IDR
    assert h264_packet_keyframe(b"\x7c\x05" + bytes(10)) == 0  # FU-A continuation
    assert h264_packet_keyframe(b"\x7c\x81" + bytes(10)) == 0  # FU-A start of a non-IDR slice


@pytest.mark.parametrize("width,height", [(320, 240), (642, 362)])
def test_vp9_keyframe_and_size_from_the_uncompressed_header(width: int, height: int) -> None:
    key, *deltas = encode_vp9(width, height, 3)
    assert vp9_keyframe(key) and vp9_size(key) == (width, height)
    assert video_size("VP9", key) == (width, height)
    assert deltas and not any(vp9_keyframe(d) for d in deltas)
    assert all(vp9_size(d) is None for d in deltas)
    assert vp9_size(key[:5]) is None and not vp9_keyframe(b"") and vp9_size(b"\x00" * 16) is None


@pytest.mark.parametrize("flexible", [False, True])
def test_vp9_keyframes_are_found_at_packet_level_behind_any_descriptor(flexible: bool) -> None:
    key, delta = encode_vp9(320, 240, 2)
    key_packets = packetize_vp9(key, 7, keyframe=True, size=(320, 240), flexible=flexible)
    delta_packets = packetize_vp9(delta, 8, keyframe=False, flexible=flexible)
    assert len(key_packets) > 2
    assert vp9_packet_keyframe(key_packets[0])
    assert not any(vp9_packet_keyframe(p) for p in key_packets[1:] + delta_packets)
    # The descriptor's length is exactly what precedes the frame's bytes.
    length, sid = vp9_descriptor(key_packets[0])
    assert key_packets[0][length:] == key[:len(key_packets[0]) - length] and sid == 0
    # P clear but no KEY_FRAME header (an intra-only frame, or garbage) is no keyframe.
    assert not vp9_packet_keyframe(build_vp9_descriptor(8, keyframe=True, start=True, end=False) + delta[:40])
    # An upper spatial layer of a key picture does not start a decoder.
    assert not vp9_packet_keyframe(build_vp9_descriptor(7, keyframe=True, start=True, end=False, sid=1) + key[:40])
    # Without layer indices the stream has one layer: B and P alone decide.
    assert vp9_packet_keyframe(bytes([0x88]) + key[:40]) and not vp9_packet_keyframe(bytes([0xC8]) + key[:40])
    assert vp9_descriptor(bytes([0xA8, 0x80])) == (0, 0), "cut short"


def test_vp9_frame_starts_and_ends() -> None:
    start = build_vp9_descriptor(1, keyframe=False, start=True, end=False)
    end = build_vp9_descriptor(1, keyframe=False, start=False, end=True)
    assert vp9_frame_start(start) and not vp9_frame_start(end)
    assert not vp9_frame_start(build_vp9_descriptor(1, keyframe=False, start=True, end=False, sid=1))
    assert vp9_frame_end(bytes([0x84])) and not vp9_frame_end(bytes([0x80]))
    assert not vp9_frame_end(end), "with L only the marker ends"


def test_vp9_picture_strips_descriptors_and_joins_spatial_layers_in_a_superframe() -> None:
    key, delta = encode_vp9(320, 240, 2)
    base = packetize_vp9(key, 3, keyframe=True, size=(320, 240))
    assert vp9_picture(base) == key
    upper = packetize_vp9(delta, 3, keyframe=True, sid=1)
    picture = vp9_picture(base + upper)
    assert picture.startswith(key + delta) and vp9_keyframe(picture)
    index = picture[len(key) + len(delta):]
    width = (index[0] >> 3 & 3) + 1
    assert index[0] == index[-1] and index[0] & 0xE7 == 0xC1 and len(index) == 2 + 2 * width
    assert [int.from_bytes(index[1 + i * width:1 + (i + 1) * width], "little") for i in range(2)] == [
        len(key), len(delta)]


@pytest.mark.parametrize("width,height", [(160, 120), (642, 362)])
def test_av1_keyframe_and_size_from_the_sequence_header(width: int, height: int) -> None:
    key, *deltas = encode_av1(width, height, 3)
    assert [kind for kind, _ in av1_obus(key)][:2] == [AV1_TEMPORAL_DELIMITER, AV1_SEQUENCE_HEADER]
    assert av1_keyframe(key) and av1_size(key) == (width, height) and video_size("AV1", key) == (width, height)
    assert deltas and not any(av1_keyframe(d) for d in deltas)
    assert all(av1_size(d) is None for d in deltas) and av1_size(key[:6]) is None


@pytest.mark.parametrize("mtu", [300, 1100, 100_000])
@pytest.mark.parametrize("counted", [True, False])
def test_av1_temporal_units_come_back_from_their_packets_without_temporal_delimiters(mtu: int, counted: bool) -> None:
    frames = encode_av1(160, 120, 2)
    for n, frame in enumerate(frames):
        packets = packetize_av1(frame, keyframe=n == 0, mtu=mtu, counted=counted)
        assert {p[0] >> 4 & 3 for p in packets} <= ({1, 2} if counted else {0})
        unit = av1_temporal_unit(packets)
        assert unit == b"".join(obu for kind, obu in av1_obus(frame) if kind != AV1_TEMPORAL_DELIMITER)
        assert [av1_packet_keyframe(p) for p in packets] == [n == 0] + [False] * (len(packets) - 1)
    key_packets = packetize_av1(frames[0], keyframe=True, mtu=300)
    # A temporal unit whose first packet was lost keeps only the OBUs that start in what arrived.
    partial = av1_temporal_unit(key_packets[1:])
    assert not av1_keyframe(partial)
