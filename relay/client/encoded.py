"""A received track as whole encoded frames, for clients that must not decode.

The WHEP client taps its receiver before aiortc's jitter buffer (so nothing
is decoded) and feeds the packets here. Video starts, and after a loss
resumes, on a keyframe, which is requested by PLI because the stock receiver
only asks for one when its own jitter buffer or decoder runs into trouble.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver

from relay.media import aiortc_patch
from relay.media.aiortc_patch import DepayloadedPacket
from relay.media.assembler import AudioSequencer, EncodedFrame, VideoAssembler
from relay.media.gated_queue import GatedQueue
from relay.media.keyframes import KeyframeRequester
from relay.sdp import CLOCK_RATES


class EncodedTrack:
    """Encoded frames of one received track, in order, with what was lost."""

    def __init__(
        self, kind: str, receiver: RTCRtpReceiver, payload_types: dict[int, str], max_queue: int = 300
    ) -> None:
        self.kind = kind
        self.clock_rate = CLOCK_RATES[kind]
        self.codec: str | None = None  # "VP8", "H264", "opus"... once the first packet names it
        self.frames = 0
        self.bytes = 0
        self.losses = 0  # gaps the assembler gave up waiting for
        self._receiver = receiver
        self._payload_types = payload_types
        self._assembler: VideoAssembler | AudioSequencer | None = None
        self._keyframes: KeyframeRequester | None = None
        self._ssrc: int | None = None
        self._queue: GatedQueue[EncodedFrame] = GatedQueue(
            kind == "video", max_queue, lambda: self._request_keyframe("reader too slow")
        )

    @property
    def waiting_keyframe(self) -> bool:
        return self._queue.waiting_keyframe

    @property
    def overflows(self) -> int:
        return self._queue.overflows

    def on_packet(self, packet: DepayloadedPacket) -> None:
        if self._queue.closed:
            return
        if self._assembler is None:
            codec = self._payload_types.get(packet.payload_type)
            if codec is None:
                return
            self.codec = codec
            if self.kind == "video":
                self._assembler = VideoAssembler(codec, self._on_frame, self._on_loss)
                self._keyframes = KeyframeRequester(self._send_pli, lambda: self.waiting_keyframe)
            else:
                self._assembler = AudioSequencer(self._on_frame)
        self._ssrc = packet.ssrc
        self._assembler.add(packet)

    def _on_frame(self, frame: EncodedFrame) -> None:
        if self._queue.push(frame, frame.keyframe):
            self.frames += 1
            self.bytes += len(frame.data)

    def _on_loss(self) -> None:
        self.losses += 1
        self._queue.waiting_keyframe = True
        self._request_keyframe("loss")

    def _request_keyframe(self, reason: str) -> None:
        if self._keyframes:
            self._keyframes.request(reason)

    async def _send_pli(self) -> bool:
        if self._ssrc is None:
            return False
        await aiortc_patch.send_pli(self._receiver, self._ssrc)
        return True

    async def recv(self) -> EncodedFrame:
        """The next frame; MediaStreamError once the track has ended and all were read."""
        return await self._queue.get()

    def end(self) -> None:
        self._queue.close()
        if self._keyframes:
            self._keyframes.close()
            self._keyframes = None
