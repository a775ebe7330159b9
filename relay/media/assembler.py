"""Encoded frames from depayloaded RTP packets, without aiortc's jitter buffer.

aiortc's JitterBuffer holds every frame until the next one starts (+33 ms)
and stalls for seconds after one unrecovered loss. This assembler emits a
frame as soon as its marker packet closes a gap-free run, waits at most
`hole_wait` for a retransmission, then skips to the next frame start and
reports the loss so the caller can ask for a keyframe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.media.bitstream import (
    H264_IDR,
    H264_SPS,
    av1_keyframe,
    av1_packet_keyframe,
    av1_temporal_unit,
    h264_packet_nal_type,
    vp8_frame_start,
    vp8_keyframe,
    vp9_frame_end,
    vp9_frame_start,
    vp9_keyframe,
    vp9_picture,
)

MAX_PENDING = 2048

# Codecs whose payloads aiortc passes through as they are: how a frame is rebuilt from them, and
# how a rebuilt frame shows a keyframe.
_REBUILT: dict[str, tuple[Callable[[list[bytes]], bytes], Callable[[bytes], bool]]] = {
    "vp9": (vp9_picture, vp9_keyframe),
    "av1": (av1_temporal_unit, av1_keyframe),
}


class Packet(Protocol):
    """What the assembler reads of aiortc's RtpPacket (after depayloading)."""

    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes
    _data: bytes


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    timestamp: int  # RTP timestamp, unwrapped to 64 bits
    keyframe: bool


class Unwrapper:
    """Extends a wrapping counter (16-bit sequence, 32-bit timestamp) to 64 bits."""

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def __call__(self, value: int) -> int:
        if self._last is None:
            self._last = value + self._mod  # room to go back before the first value
            return self._last
        delta = (value - self._last) % self._mod
        if delta >= self._half:
            delta -= self._mod
        result = self._last + delta
        if delta > 0:
            self._last = result
        return result


class VideoAssembler:
    """Gap-free runs of packets, closed by a marker bit, become frames.

    VP9's payload descriptor and AV1's aggregation are undone here (aiortc
    depayloads only VP8 and H.264); a VP9 picture of one spatial layer also
    ends at its E bit.
    """

    def __init__(
        self,
        codec: str,
        on_frame: Callable[[EncodedFrame], None],
        on_loss: Callable[[], None],
        hole_wait: float = 0.2,
    ) -> None:
        self._vp8 = codec.lower() == "vp8"
        self._vp9 = codec.lower() == "vp9"
        self._av1 = codec.lower() == "av1"
        self._rebuild = _REBUILT.get(codec.lower())
        self._on_frame = on_frame
        self._on_loss = on_loss
        self._hole_wait = hole_wait
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._pending: dict[int, tuple[Packet, int]] = {}
        self._next: int | None = None  # first sequence number of the next frame
        self._hole_since: float | None = None

    def add(self, packet: Packet) -> None:
        seq = self._seq(packet.sequence_number)
        ts = self._ts(packet.timestamp)
        if self._next is not None and seq < self._next:
            return  # late or duplicate: its frame was emitted or skipped
        if seq in self._pending:
            return
        self._pending[seq] = (packet, ts)
        if self._next is None:
            start = self._find_start(min(self._pending))
            if start is None:
                self._trim()
                return
            self._drop_before(start)
        self._emit()
        if self._pending:
            self._check_hole()

    def _is_start(self, seq: int) -> bool:
        packet, ts = self._pending[seq]
        if self._vp8:
            return vp8_frame_start(packet.payload)
        if self._vp9:
            return vp9_frame_start(packet.payload)
        before = self._pending.get(seq - 1)
        if before is None:
            # H.264 and AV1 mark no frame start; without the packet before, an SPS
            # or AV1's N bit is one (a keyframe begins with it), so the stream can start on it.
            if self._av1:
                return av1_packet_keyframe(packet.payload)
            return h264_packet_nal_type(packet.payload) == H264_SPS
        return bool(before[0].marker) or before[1] != ts

    def _find_start(self, after: int) -> int | None:
        for seq in sorted(s for s in self._pending if s >= after):
            if self._is_start(seq):
                return seq
        return None

    def _emit(self) -> None:
        assert self._next is not None
        while self._next in self._pending:
            first_ts = self._pending[self._next][1]
            end = self._next
            while True:
                entry = self._pending.get(end)
                if entry is None:
                    return  # incomplete: wait for the rest
                if entry[1] != first_ts:
                    end -= 1  # the marker packet was missing but the next frame began
                    break
                if entry[0].marker or (self._vp9 and vp9_frame_end(entry[0].payload)):
                    break
                end += 1
            self._deliver(self._next, end, first_ts)
            self._next = end + 1
            self._hole_since = None

    def _deliver(self, first: int, last: int, ts: int) -> None:
        packets = [self._pending.pop(s)[0] for s in range(first, last + 1)]
        if self._rebuild is not None:
            join, is_keyframe = self._rebuild
            data = join([p.payload for p in packets])
            self._on_frame(EncodedFrame(data, ts, is_keyframe(data)))
            return
        data = b"".join(p._data for p in packets)
        if self._vp8:
            keyframe = vp8_keyframe(data)
        else:
            keyframe = any(h264_packet_nal_type(p.payload) in (H264_IDR, H264_SPS) for p in packets)
        self._on_frame(EncodedFrame(data, ts, keyframe))

    def _check_hole(self) -> None:
        now = time.monotonic()
        if self._hole_since is None:
            self._hole_since = now
        if now - self._hole_since < self._hole_wait and len(self._pending) < MAX_PENDING:
            return
        assert self._next is not None
        start = self._find_start(self._next + 1)
        self._hole_since = None
        if start is None:
            self._pending.clear()
            self._next = None
        else:
            self._drop_before(start)
        self._on_loss()
        if self._next is not None:
            self._emit()

    def _drop_before(self, start: int) -> None:
        for seq in [s for s in self._pending if s < start]:
            del self._pending[seq]
        self._next = start

    def _trim(self) -> None:
        if len(self._pending) > MAX_PENDING:
            self._pending.clear()


class AudioSequencer:
    """Audio is forwarded packet by packet; late and duplicate packets are dropped."""

    def __init__(self, on_frame: Callable[[EncodedFrame], None]) -> None:
        self._on_frame = on_frame
        self._ts = Unwrapper(32)
        self._last: int | None = None

    def add(self, packet: Packet) -> None:
        ts = self._ts(packet.timestamp)
        if self._last is not None and ts <= self._last:
            return
        self._last = ts
        self._on_frame(EncodedFrame(packet._data, ts, True))
