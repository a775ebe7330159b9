"""The publisher's video: the stamped test pattern, VP8 at a fixed bitrate and GOP.

aiortc's Vp8Encoder has no GOP setting and clamps its bitrate to 1.5 Mbps, so
the benchmark encodes with PyAV's libvpx itself and gives aiortc's sender
finished `av.Packet`s, which it only packetizes (the path Relay's viewers use).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from fractions import Fraction

import av
from aiortc.mediastreams import MediaStreamTrack
from av.video.frame import PictureType

from relay.client.testpattern import VIDEO_CLOCK_RATE, TestPatternTrack, _Paced, make_frame
from relay.media.fanout import FanOut, MediaFrame
from relay.media.gated_queue import GatedQueue

VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
QUEUE_FRAMES = 30


def vp8_encoder(width: int, height: int, fps: int, bitrate: int, gop_seconds: float) -> av.VideoCodecContext:
    """Real-time CBR libvpx, like aiortc's settings, plus a keyframe every `gop_seconds`."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.framerate = fps
    codec.bit_rate = bitrate
    codec.gop_size = max(1, round(gop_seconds * fps))
    codec.thread_count = 1
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "undershoot-pct": "100",
        "overshoot-pct": "15",
        "static-thresh": "1",
    }
    return codec


def _encode(codec: av.VideoCodecContext, frame: av.VideoFrame, index: int) -> list[av.Packet]:
    frame.pts, frame.time_base = index, codec.time_base
    return list(codec.encode(frame))


def _rtp_packet(data: bytes, index: int, fps: int) -> av.Packet:
    packet = av.Packet(data)
    packet.pts = packet.dts = index * VIDEO_CLOCK_RATE // fps
    packet.time_base = VIDEO_TIME_BASE
    return packet


class PacketTrack(MediaStreamTrack):
    """What a publisher's aiortc sender pulls: `LiveVideo`'s frames as `av.Packet`s, started on a keyframe.

    It joins the fan-out on the sender's first `recv()`, so frames do not pile up before DTLS.
    """

    kind = "video"

    def __init__(self, fanout: FanOut, request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self._fanout = fanout
        self._request_keyframe = request_keyframe
        self._queue: GatedQueue[MediaFrame] = GatedQueue(True, QUEUE_FRAMES, request_keyframe)
        self._joined = False

    @property
    def waiting_keyframe(self) -> bool:
        return self._queue.waiting_keyframe

    @waiting_keyframe.setter
    def waiting_keyframe(self, value: bool) -> None:
        self._queue.waiting_keyframe = value

    def push(self, frame: MediaFrame) -> None:
        self._queue.push(frame, frame.keyframe)

    def end(self) -> None:
        self.stop()

    async def recv(self) -> av.Packet:
        if not self._joined and self.readyState == "live":
            self._joined = True
            self._fanout.add(self)
            self._request_keyframe()
        return (await self._queue.get()).packet

    def stop(self) -> None:
        super().stop()
        self._fanout.remove(self)
        self._queue.close(discard=True)


class LiveVideo:
    """Stamped test-pattern frames encoded as they are made, for every subscriber.

    The stamps carry the real send time, so viewers can read latency. With
    `honor_pli` a viewer's keyframe request (PLI/FIR, routed here by the
    publisher) makes the next frame a keyframe, as browsers do; without it
    keyframes come only every GOP, as from an encoder with a fixed interval.
    A new subscriber always starts on a keyframe, as a fresh encoder would.
    """

    def __init__(self, width: int, height: int, fps: int, bitrate: int, gop_seconds: float) -> None:
        self.fps = fps
        self.fanout = FanOut("video")
        self.keyframes = 0
        self._pattern = TestPatternTrack(width, height, fps)
        self._codec = vp8_encoder(width, height, fps, bitrate, gop_seconds)
        self._force = False
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> PacketTrack:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return PacketTrack(self.fanout, self.request_keyframe)

    def request_keyframe(self) -> None:
        self._force = True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._pattern.recv()
            index = self._pattern.frames_sent - 1
            if not self.fanout.sinks:
                continue
            if self._force:
                self._force = False
                frame.pict_type = PictureType.I
            for encoded in await loop.run_in_executor(None, _encode, self._codec, frame, index):
                self.keyframes += encoded.is_keyframe
                data = bytes(encoded)
                self.fanout.push(MediaFrame(_rtp_packet(data, index, self.fps), encoded.is_keyframe, len(data)))

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._pattern.stop()


def encode_loop(width: int, height: int, fps: int, bitrate: int, seconds: float, gop_seconds: float) -> list[bytes]:
    """`seconds` of stamped frames (counters 0..n-1, send time 0), starting on a keyframe.

    `seconds` is rounded up to whole GOPs so that the loop restarts on a keyframe.
    """
    gop = max(1, round(gop_seconds * fps))
    count = -(-round(seconds * fps) // gop) * gop
    codec = vp8_encoder(width, height, fps, bitrate, gop_seconds)
    frames = [bytes(p) for i in range(count) for p in _encode(codec, make_frame(i, width, height, 0), i)]
    if len(frames) != count:
        raise RuntimeError(f"libvpx returned {len(frames)} packets for {count} frames")
    return frames


class LoopTrack(_Paced):
    """Pre-encoded frames replayed in a loop at `fps`: a 720p publisher for almost no CPU.

    Its stamps carry counter modulo the loop length and no meaningful send
    time; use LiveVideo where latency matters.
    """

    kind = "video"

    def __init__(self, frames: list[bytes], fps: int) -> None:
        super().__init__(1 / fps)
        self.frames = frames
        self.fps = fps

    async def recv(self) -> av.Packet:
        index = await self._next_index()
        return _rtp_packet(self.frames[index % len(self.frames)], index, self.fps)
