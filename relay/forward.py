"""Per-stream fan-out of encoded frames to viewer tracks.

A viewer's stock RTCRtpSender pulls `av.Packet`s from its ViewerTrack and
re-packetizes them with `Encoder.pack()`; nothing is decoded or encoded. One
`av.Packet` is shared by every viewer: `pack()` only reads it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MediaFrame:
    packet: av.Packet
    keyframe: bool
    size: int


class Sink(Protocol):
    """Anything that takes a stream's frames: a viewer track, a recorder."""

    waiting_keyframe: bool

    def push(self, frame: MediaFrame) -> None: ...


class FanOut:
    """The sinks of one kind (audio or video) of one stream."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sinks: set[Sink] = set()
        self.frames = 0

    def add(self, sink: Sink) -> None:
        self.sinks.add(sink)

    def remove(self, sink: Sink) -> None:
        self.sinks.discard(sink)

    def push(self, frame: MediaFrame) -> None:
        self.frames += 1
        for sink in tuple(self.sinks):
            sink.push(frame)

    def gap(self) -> None:
        """Frames were lost upstream: every video sink must resume on a keyframe."""
        for sink in self.sinks:
            sink.waiting_keyframe = True

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
        self._on_overflow = on_overflow
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def push(self, item: T, keyframe: bool) -> bool:
        """Queue `item`; False if it was dropped."""
        if self.waiting_keyframe:
            if not keyframe:
                return False
            self.waiting_keyframe = False
        if len(self._items) >= self._max_items:
            self._items.clear()
            self.overflows += 1
            if self._video:
                self.waiting_keyframe = True
                self._on_overflow()
                return False
        self._items.append(item)
        self._ready.set()
        return True

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> T:
        """The next item; MediaStreamError once closed and drained."""
        while not self._items:
            if self.closed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
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
    ) -> None:
        super().__init__()
        self.kind = fanout.kind
        self._fanout = fanout
        self._request_keyframe = request_keyframe
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
            self._joined = True
            self._fanout.add(self)
            if self.kind == "video":
                self._request_keyframe("viewer joined")
        frame = await self._queue.get()
        self.frames_sent += 1
        self.bytes_sent += frame.size
        return frame.packet

    def stop(self) -> None:
        super().stop()
        self._fanout.remove(self)
        self._queue.close(discard=True)
