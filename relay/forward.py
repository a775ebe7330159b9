"""Per-stream fan-out of encoded frames to viewer tracks.

A viewer's stock RTCRtpSender pulls `av.Packet`s from its ViewerTrack and
re-packetizes them with `Encoder.pack()`; nothing is decoded or encoded. One
`av.Packet` is shared by every viewer: `pack()` only reads it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

T = TypeVar("T")

# A GOP longer than this is not kept for new viewers (10 s at 30 fps, or 8 MB).
GOP_MAX_FRAMES = 300
GOP_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MediaFrame:
    packet: av.Packet
    keyframe: bool
    size: int


class Sink(Protocol):
    """Anything that takes a stream's frames: a viewer track, a recorder."""

    waiting_keyframe: bool

    def push(self, frame: MediaFrame) -> None: ...

    def end(self) -> None:
        """The publisher is gone."""


class FanOut:
    """The sinks of one kind (audio or video) of one stream.

    For video it also keeps the frames since the last keyframe (the GOP), so
    a new viewer can start at once from that keyframe instead of waiting for
    the publisher's next one: a publisher that ignores keyframe requests may
    send one only every few seconds.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sinks: set[Sink] = set()
        self._gop: list[MediaFrame] = []
        self._gop_bytes = 0

    def _drop_gop(self) -> None:
        self._gop, self._gop_bytes = [], 0

    def add(self, sink: Sink) -> None:
        self.sinks.add(sink)

    def remove(self, sink: Sink) -> None:
        self.sinks.discard(sink)

    def push(self, frame: MediaFrame) -> None:
        if self.kind == "video":
            self._keep(frame)
        for sink in tuple(self.sinks):
            sink.push(frame)

    def _keep(self, frame: MediaFrame) -> None:
        if frame.keyframe:
            self._drop_gop()
        elif not self._gop:
            return  # no keyframe to start from
        self._gop.append(frame)
        self._gop_bytes += frame.size
        if len(self._gop) > GOP_MAX_FRAMES or self._gop_bytes > GOP_MAX_BYTES:
            self._drop_gop()  # too long to replay: wait for a keyframe

    def reset(self) -> None:
        """The publisher is gone: forget its sinks and its GOP."""
        self.sinks.clear()
        self._drop_gop()

    def gap(self) -> None:
        """Frames were lost upstream: every video sink must resume on a keyframe."""
        self._drop_gop()
        for sink in self.sinks:
            sink.waiting_keyframe = True

    def replay(self, bitrate: int) -> list[tuple[MediaFrame, float]]:
        """The current GOP for a sink joining now, paced at `bitrate`: (frame, send offset in s).

        Sent in one burst, a GOP of seconds overruns the viewer's socket
        buffer; paced, it takes a fraction of a second. Each frame is retimed
        to its send offset, ending at the newest frame's time, so the viewer
        plays the replay as a fast-forward and lands on the live picture.
        """
        if not self._gop or bitrate <= 0:
            return []
        offsets, sent = [], 0
        for frame in self._gop:
            offsets.append(sent * 8 / bitrate)
            sent += frame.size
        newest, time_base = self._gop[-1].packet.pts, self._gop[-1].packet.time_base
        pts, replay = newest + 1, []
        for frame, offset in zip(reversed(self._gop), reversed(offsets)):  # newest first
            pts = min(pts - 1, newest - round((offsets[-1] - offset) / time_base))
            packet = av.Packet(bytes(frame.packet))
            packet.pts = packet.dts = pts
            packet.time_base = time_base
            replay.append((MediaFrame(packet, frame.keyframe, frame.size), offset))
        replay.reverse()
        return replay

    def any_waiting(self) -> bool:
        return any(sink.waiting_keyframe for sink in self.sinks)


class GatedQueue(Generic[T]):
    """A bounded frame queue that starts, and after an overflow resumes, on a keyframe.

    A reader too slow to keep up is flushed and waits for the next keyframe
    (`on_overflow` asks for one) instead of growing memory. Audio has no
    keyframes to wait for: its queue is only flushed.
    """

    def __init__(self, video: bool, max_items: int, on_overflow: Callable[[], None]) -> None:
        self.waiting_keyframe = video
        self.overflows = 0
        self.closed = False
        self._video = video
        self._max_items = max_items
        self._limit = max_items
        self._on_overflow = on_overflow
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def push(self, item: T, keyframe: bool) -> bool:
        """Queue `item`; False if it was dropped."""
        if self.waiting_keyframe:
            if not keyframe:
                return False
            self.waiting_keyframe = False
        if len(self._items) >= self._limit:
            self._items.clear()
            self._limit = self._max_items
            self.overflows += 1
            if self._video:
                self.waiting_keyframe = True
                self._on_overflow()
                return False
        self._items.append(item)
        self._ready.set()
        return True

    def prefill(self, items: list[T]) -> None:
        """Queue a replay (starting with a keyframe) on top of the usual bound."""
        self._items.extend(items)
        self._limit = self._max_items + len(self._items)
        self.waiting_keyframe = False
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> T:
        """The next item; MediaStreamError once closed and drained."""
        while not self._items:
            if self.closed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if len(self._items) <= self._max_items:
            self._limit = self._max_items  # the replay is drained
        return self._items.popleft()

    def close(self, discard: bool = False) -> None:
        self.closed = True
        if discard:
            self._items.clear()
        self._ready.set()


class ViewerTrack(MediaStreamTrack):
    """What a viewer's stock RTCRtpSender pulls: the stream's frames as `av.Packet`s.

    It joins the fan-out on the sender's first `recv()`, so frames do not pile
    up while ICE and DTLS are still connecting.
    """

    def __init__(
        self,
        fanout: FanOut,
        max_queue: int,
        request_keyframe: Callable[[str], None],
        replay_bitrate: int = 0,
    ) -> None:
        super().__init__()
        self.kind = fanout.kind
        self._fanout = fanout
        self._request_keyframe = request_keyframe
        self._replay_bitrate = replay_bitrate
        self._replay: deque[float] = deque()  # send offsets of the replayed frames still queued
        self._replay_start = 0.0
        self._queue: GatedQueue[MediaFrame] = GatedQueue(
            fanout.kind == "video", max_queue, lambda: request_keyframe("viewer queue overflow")
        )
        self._joined = False
        self.frames_sent = 0
        self.bytes_sent = 0

    @property
    def waiting_keyframe(self) -> bool:
        return self._queue.waiting_keyframe

    @waiting_keyframe.setter
    def waiting_keyframe(self, value: bool) -> None:
        self._queue.waiting_keyframe = value

    @property
    def overflows(self) -> int:
        return self._queue.overflows

    def push(self, frame: MediaFrame) -> None:
        self._queue.push(frame, frame.keyframe)

    def end(self) -> None:
        """The stream is over: the sender's next `recv()` raises and it stops."""
        self.stop()

    async def recv(self) -> av.Packet:
        if not self._joined and self.readyState == "live":
            self._join()
        frame = await self._queue.get()
        if self._replay:
            delay = self._replay_start + self._replay.popleft() - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        self.frames_sent += 1
        self.bytes_sent += frame.size
        return frame.packet

    def _join(self) -> None:
        """Start from the stream's current GOP if there is one, else ask for a keyframe."""
        self._joined = True
        self._fanout.add(self)
        if self.kind != "video":
            return
        replay = self._fanout.replay(self._replay_bitrate)
        if replay:
            self._queue.prefill([frame for frame, _ in replay])
            self._replay.extend(offset for _, offset in replay)
            self._replay_start = time.monotonic()
        else:
            self._request_keyframe("viewer joined")

    def stop(self) -> None:
        super().stop()
        self._fanout.remove(self)
        self._queue.close(discard=True)
