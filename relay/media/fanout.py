"""Per-stream, per-kind fan-out of encoded frames to sinks: viewer tracks, recorders.

One `av.Packet` per frame is shared by every sink: nothing downstream writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import av

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
        assert newest is not None  # the tap stamps every frame it fans out
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
