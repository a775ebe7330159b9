"""A received track as whole encoded frames, for clients that must not decode.

The WHEP client taps its receiver before aiortc's jitter buffer (so nothing
is decoded) and feeds the packets here. Video starts, and after a loss
resumes, on a keyframe, which is requested by PLI because the stock receiver
only asks for one when its own jitter buffer or decoder runs into trouble.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiortc import RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from . import aiortc_patch
from .assembler import AudioSequencer, EncodedFrame, VideoAssembler
from .keyframes import KeyframeRequester

CLOCK_RATES = {"audio": 48000, "video": 90000}


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
        self.overflows = 0
        self.waiting_keyframe = kind == "video"
        self._receiver = receiver
        self._payload_types = payload_types
        self._max_queue = max_queue
        self._assembler: VideoAssembler | AudioSequencer | None = None
        self._keyframes: KeyframeRequester | None = None
        self._ssrc: int | None = None
        self._queue: deque[EncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._ended = False

    def on_packet(self, packet: RtpPacket) -> None:
        if self._ended:
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
        if self.waiting_keyframe:
            if not frame.keyframe:
                return
            self.waiting_keyframe = False
        if len(self._queue) >= self._max_queue:
            self._queue.clear()
            self.overflows += 1
            if self.kind == "video":
                self._resync("reader too slow")
                return
        self.frames += 1
        self.bytes += len(frame.data)
        self._queue.append(frame)
        self._ready.set()

    def _on_loss(self) -> None:
        self.losses += 1
        self._resync("loss")

    def _resync(self, reason: str) -> None:
        self.waiting_keyframe = True
        if self._keyframes:
            self._keyframes.request(reason)

    async def _send_pli(self) -> bool:
        if self._ssrc is None:
            return False
        await aiortc_patch.send_pli(self._receiver, self._ssrc)
        return True

    async def recv(self) -> EncodedFrame:
        """The next frame; MediaStreamError once the track has ended and all were read."""
        while not self._queue:
            if self._ended:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def end(self) -> None:
        self._ended = True
        self._ready.set()
        if self._keyframes:
            self._keyframes.close()
            self._keyframes = None
