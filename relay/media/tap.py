"""A publisher's receiver, tapped: each RTP packet to the forwarder, and encoded frames to the fan-out.

`aiortc_patch.tap_receiver` hands each packet here after RTX unwrap and
depayload, before aiortc's jitter buffer: nothing is ever decoded. Viewers
get the packets as they are (`media.forwarder`); frames are assembled once
per stream, for the recorders, the picture size and keyframe bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import av

from relay.media.aiortc_patch import DepayloadedPacket
from relay.media.assembler import AudioSequencer, EncodedFrame, VideoAssembler
from relay.media.fanout import FanOut, MediaFrame
from relay.media.forwarder import Forwarder
from relay.media.meter import RateMeter


class PublisherTap:
    """One kind of a publisher's media: assembles frames and pushes one shared `av.Packet` each."""

    def __init__(
        self,
        kind: str,
        codec: str,
        clock_rate: int,
        fanout: FanOut,
        forwarder: Forwarder,
        meter_in: RateMeter,
        hole_wait: float,
        on_keyframe: Callable[[str, bytes], None],
        request_keyframe: Callable[[str], None],
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.profile: str | None = None  # H.264's profile-level-id, which viewers must take
        self.ssrc: int | None = None
        self._fanout = fanout
        self._forwarder = forwarder
        self._meter_in = meter_in
        self._on_keyframe = on_keyframe if kind == "video" else None
        self._request_keyframe = request_keyframe
        self._time_base = Fraction(1, clock_rate)
        self._base: int | None = None
        self.assembler: VideoAssembler | AudioSequencer
        if kind == "video":
            self.assembler = VideoAssembler(codec, self._on_frame, self._on_loss, hole_wait)
        else:
            self.assembler = AudioSequencer(self._on_frame)

    def on_packet(self, packet: DepayloadedPacket) -> None:
        self.ssrc = packet.ssrc
        self._forwarder.on_packet(packet.sequence_number, packet.timestamp, packet.marker, packet.payload)
        self._meter_in.add(len(packet.payload) + 12)
        self.assembler.add(packet)

    def _on_frame(self, frame: EncodedFrame) -> None:
        if self._base is None:
            self._base = frame.timestamp  # the publisher's start: recorders align audio and video on it
        if frame.keyframe and self._on_keyframe is not None:
            self._on_keyframe(self.codec, frame.data)
        if not self._fanout.sinks:
            return  # nobody records: no av.Packet to build
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = frame.timestamp - self._base
        packet.time_base = self._time_base
        self._fanout.push(MediaFrame(packet, frame.keyframe, len(frame.data)))

    def _on_loss(self) -> None:
        self._fanout.gap()
        self._request_keyframe("upstream loss")
