"""Per-stream, per-kind fan-out of encoded frames to the sinks that need frames: recorders.

Viewers get packets, not frames (`media.forwarder`).

One `av.Packet` per frame is shared by every sink: nothing downstream writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import av


@dataclass(frozen=True, slots=True)
class MediaFrame:
    packet: av.Packet
    keyframe: bool
    size: int


class Sink(Protocol):
    """Anything that takes a stream's frames: a recorder."""

    waiting_keyframe: bool

    def push(self, frame: MediaFrame) -> None: ...

    def end(self) -> None:
        """The publisher is gone."""


class FanOut:
    """The frame sinks of one kind (audio or video) of one stream."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sinks: set[Sink] = set()

    def add(self, sink: Sink) -> None:
        self.sinks.add(sink)

    def remove(self, sink: Sink) -> None:
        self.sinks.discard(sink)

    def push(self, frame: MediaFrame) -> None:
        for sink in tuple(self.sinks):
            sink.push(frame)

    def reset(self) -> None:
        """The publisher is gone: forget its sinks."""
        self.sinks.clear()

    def gap(self) -> None:
        """Frames were lost upstream: every video sink must resume on a keyframe."""
        for sink in self.sinks:
            sink.waiting_keyframe = True

    def any_waiting(self) -> bool:
        return any(sink.waiting_keyframe for sink in self.sinks)
