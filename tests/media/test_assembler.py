"""The frame assembler and the keyframe-request policy, fed real RTP packets."""

from __future__ import annotations

import asyncio
import time

from relay.media.assembler import EncodedFrame, Unwrapper, VideoAssembler
from relay.media.bitstream import av1_size, av1_temporal_unit
from relay.media.keyframes import KeyframeRequester

from ..conftest import poll_until
from .samples import Pkt, av1_stream, encode_av1, encode_vp9, vp9_stream


def vp8_frame(seq: int, ts: int, parts: int, key: bool) -> list[Pkt]:
    """A VP8 frame in `parts` packets; descriptor S=1 on the first, data byte 0 = P bit."""
    packets = []
    for i in range(parts):
        descriptor = bytes([0x10 if i == 0 else 0x00])
        data = bytes([0x00 if key else 0x01]) if i == 0 else bytes([i])
        packets.append(Pkt((seq + i) & 0xFFFF, ts & 0xFFFFFFFF, int(i == parts - 1), descriptor + data, data))
    return packets


def collect(hole_wait: float = 0.05) -> tuple[VideoAssembler, list[EncodedFrame], list[int]]:
    frames: list[EncodedFrame] = []
    losses: list[int] = []
    assembler = VideoAssembler("vp8", frames.append, lambda: losses.append(1), hole_wait)
    return assembler, frames, losses


def test_unwrapper_crosses_the_wrap_and_tolerates_reordering() -> None:
    unwrap = Unwrapper(16)
    values = [unwrap(v) for v in (65534, 65535, 0, 65535, 1)]
    assert [v - values[0] for v in values] == [0, 1, 2, 1, 3]


def test_frames_emitted_on_marker_across_sequence_wrap_and_reordering() -> None:
    assembler, frames, losses = collect()
    seq, ts = 65530, 2**32 - 6000
    for n in range(6):
        packets = vp8_frame(seq, ts, 3, key=n == 0)
        if n == 2:
            packets = [packets[2], packets[0], packets[1]]  # reordered within a frame
        for packet in packets:
            assembler.add(packet)
        seq, ts = seq + 3, ts + 3000
    assert len(frames) == 6 and not losses
    assert frames[0].keyframe and not any(f.keyframe for f in frames[1:])
    assert [f.timestamp - frames[0].timestamp for f in frames] == [0, 3000, 6000, 9000, 12000, 15000]
    assert frames[1].data == bytes([0x01, 1, 2])


def test_a_hole_waits_then_skips_to_the_next_frame_and_reports_loss() -> None:
    assembler, frames, losses = collect(hole_wait=0.05)
    stream = [vp8_frame(100 + 3 * n, 1000 + 3000 * n, 3, key=n == 0) for n in range(4)]
    for packet in stream[0]:
        assembler.add(packet)
    assembler.add(stream[1][0])  # frame 1 loses its last two packets
    for packet in stream[2]:
        assembler.add(packet)
    assert len(frames) == 1 and not losses  # waiting for a retransmission
    time.sleep(0.06)  # the point: longer than hole_wait, no retransmission came
    for packet in stream[3]:
        assembler.add(packet)
    assert losses == [1]
    assert [f.timestamp - frames[0].timestamp for f in frames] == [0, 6000, 9000]  # frame 1 skipped


def test_late_retransmission_fills_the_hole_in_time() -> None:
    assembler, frames, losses = collect(hole_wait=1.0)
    first, second = vp8_frame(10, 0, 2, True), vp8_frame(12, 3000, 2, False)
    assembler.add(first[0])
    assembler.add(second[0])
    assembler.add(second[1])
    assert frames == []
    assembler.add(first[1])  # the retransmission arrives
    assert [f.timestamp - frames[0].timestamp for f in frames] == [0, 3000] and not losses


async def test_keyframe_requests_are_spaced_deferred_and_retried() -> None:
    sent: list[float] = []
    waiting = True

    async def send() -> bool:
        sent.append(time.monotonic())
        return True

    requester = KeyframeRequester(send, lambda: waiting, min_interval=0.2, retry_interval=0.3)
    try:
        start = time.monotonic()
        requester.request("a")
        await poll_until(lambda: len(sent) == 1, timeout=0.05)
        requester.request("b")  # too soon: deferred, not dropped
        requester.request("c")  # merged with b
        await poll_until(lambda: len(sent) >= 2, timeout=0.5)
        assert len(sent) == 2
        assert 0.19 <= sent[1] - sent[0] < 0.3, "deferred to the spacing, no later"
        await poll_until(lambda: len(sent) >= 3, timeout=1)  # a viewer still waits: retried
        assert 0.29 <= sent[2] - sent[1] < 0.45, "retried after retry_interval"
        waiting = False
        count = len(sent)
        await asyncio.sleep(0.5)  # absence: longer than the retry interval
        assert len(sent) == count  # nobody waits: no more requests
        assert sent[0] - start < 0.05
    finally:
        requester.close()


def h264_frame(seq: int, ts: int, nal_types: list[int]) -> list[Pkt]:
    """One packet per NAL unit (single NAL unit packets), the last with the marker."""
    return [Pkt(seq + i, ts, int(i == len(nal_types) - 1), bytes([0x60 | t, i]), b"\x00\x00\x01" + bytes([0x60 | t, i]))
            for i, t in enumerate(nal_types)]


def test_h264_stream_starts_on_its_first_keyframe() -> None:
    frames: list[EncodedFrame] = []
    assembler = VideoAssembler("h264", frames.append, lambda: None)
    for packet in h264_frame(500, 0, [7, 8, 5]) + h264_frame(503, 3000, [1]) + h264_frame(504, 6000, [1, 1]):
        assembler.add(packet)
    assert [f.keyframe for f in frames] == [True, False, False]
    assert frames[0].data.count(b"\x00\x00\x01") == 3


def test_h264_mid_stream_join_starts_at_a_known_frame_boundary() -> None:
    frames: list[EncodedFrame] = []
    assembler = VideoAssembler("h264", frames.append, lambda: None)
    for packet in h264_frame(900, 0, [1, 1]) + h264_frame(902, 3000, [1]) + h264_frame(903, 6000, [7, 8, 5]):
        assembler.add(packet)
    # 900 may be the middle of a frame: the first frame emitted starts after a marker
    assert [(f.timestamp - frames[0].timestamp, f.keyframe) for f in frames] == [(0, False), (3000, True)]


async def test_a_request_that_cannot_be_sent_stays_pending_without_spacing() -> None:
    ready = False
    tries: list[float] = []
    sent: list[float] = []

    async def send() -> bool:
        (sent if ready else tries).append(time.monotonic())
        return ready

    requester = KeyframeRequester(send, lambda: False, min_interval=0.5, retry_interval=5)
    try:
        requester.request("viewer joined")
        await poll_until(lambda: len(tries) >= 3, timeout=1)  # tried, and tried again: still pending
        assert sent == [] and requester.sent == 0
        ready = True  # the publisher's first video packet arrived
        start = time.monotonic()
        await poll_until(lambda: len(sent) >= 1, timeout=0.5)
        assert len(sent) == 1 and sent[0] - start < 0.1, "the unsent tries must not have started the spacing"
    finally:
        requester.close()


def test_vp9_pictures_lose_their_descriptors_and_a_mid_stream_join_starts_at_a_picture() -> None:
    frames = encode_vp9(160, 120, 4)
    packets = vp9_stream(frames, (160, 120))
    out: list[EncodedFrame] = []
    assembler = VideoAssembler("VP9", out.append, lambda: None)
    second = next(i for i, p in enumerate(packets) if p.timestamp == 3000)
    for packet in packets[second - 1:]:  # joined on the keyframe's last packet
        assembler.add(packet)
    assert [f.data for f in out] == frames[1:] and not any(f.keyframe for f in out)
    out.clear()
    assembler = VideoAssembler("VP9", out.append, lambda: None)
    for packet in packets:
        assembler.add(packet)
    assert [f.data for f in out] == frames and [f.keyframe for f in out] == [True, False, False, False]


def test_vp9_without_layer_indices_ends_a_picture_on_its_e_bit() -> None:
    out: list[EncodedFrame] = []
    assembler = VideoAssembler("VP9", out.append, lambda: None)
    for seq, payload in enumerate([b"\x08ab", b"\x00cd", b"\x04ef"]):  # B, -, E; no marker bit
        assembler.add(Pkt(seq, 0, 0, payload, payload))
    assert [f.data for f in out] == [b"abcdef"]


def test_av1_temporal_units_are_rebuilt_and_a_mid_stream_join_starts_at_a_known_boundary() -> None:
    frames = encode_av1(160, 120, 3)
    packets = av1_stream(frames)
    out: list[EncodedFrame] = []
    assembler = VideoAssembler("AV1", out.append, lambda: None)
    for packet in packets[1:]:  # joined after the first packet: the next unit starts after a marker
        assembler.add(packet)
    assert [(f.timestamp - out[0].timestamp, f.keyframe) for f in out] == [(0, False), (3000, False)]
    out.clear()
    assembler = VideoAssembler("AV1", out.append, lambda: None)
    for packet in packets:
        assembler.add(packet)
    assert [f.data for f in out] == [av1_temporal_unit([p.payload for p in packets if p.timestamp == f.timestamp
                                                        - out[0].timestamp]) for f in out]
    assert [f.keyframe for f in out] == [True, False, False] and av1_size(out[0].data) == (160, 120)
