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
from typing import Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


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


class ViewerTrack(MediaStreamTrack):
    """A bounded queue of encoded frames that starts and resumes on a keyframe.

    It joins the fan-out on the sender's first `recv()`, so frames do not pile
    up while ICE and DTLS are still connecting; a viewer too slow to keep up
    is flushed and waits for the next keyframe instead of growing memory.
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
        self._max_queue = max_queue
        self._request_keyframe = request_keyframe
        self._queue: deque[MediaFrame] = deque()
        self._ready = asyncio.Event()
        self._joined = False
        self.waiting_keyframe = fanout.kind == "video"
        self.frames_sent = 0
        self.bytes_sent = 0
        self.overflows = 0

    def push(self, frame: MediaFrame) -> None:
        if self.waiting_keyframe:
            if not frame.keyframe:
                return
            self.waiting_keyframe = False
        if len(self._queue) >= self._max_queue:
            self._queue.clear()
            self.overflows += 1
            if self.kind == "video":
                self.waiting_keyframe = True
                self._request_keyframe("viewer queue overflow")
                return
        self._queue.append(frame)
        self._ready.set()

    def end(self) -> None:
        """The stream is over: the sender's next `recv()` raises and it stops."""
        self.stop()

    async def recv(self) -> av.Packet:
        if not self._joined and self.readyState == "live":
            self._joined = True
            self._fanout.add(self)
            if self.kind == "video":
                self._request_keyframe("viewer joined")
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame = self._queue.popleft()
        self.frames_sent += 1
        self.bytes_sent += frame.size
        return frame.packet

    def stop(self) -> None:
        super().stop()
        self._leave()
        self._ready.set()

    def _leave(self) -> None:
        self._fanout.remove(self)
        self._queue.clear()
