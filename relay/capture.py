"""One file of what a WHEP client receives, remuxed without re-encoding.

The server's recordings (`relay.record`) are sinks of a stream with files
named by time; a client chooses its file and reads frames from its own
`EncodedTrack`s, so only the container choice and its options are shared:
VP8 or audio-only goes to WebM, H.264 to fragmented MP4, both flushed about
every second. Frames are timed by arrival like server recordings: each track
is anchored at its first frame, then follows its own RTP clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from .assembler import EncodedFrame
from .bitstream import video_size
from .record import FileSpec, container_format, open_container

log = logging.getLogger(__name__)


def expected_suffix(video_codec: str | None) -> str:
    return "." + container_format(video_codec)


class Capture:
    """Writes frames to `path` on a writer thread; the file starts on a video keyframe."""

    def __init__(self, path: Path, video_codec: str | None, audio: bool) -> None:
        suffix = expected_suffix(video_codec)
        if path.suffix.lower() != suffix:
            what = f"{video_codec} video" if video_codec else "audio only"
            raise ValueError(f"the stream carries {what}: record it to a {suffix} file, not {path.name}")
        self.path = path
        self.video_codec = video_codec
        self.audio = audio
        self.bytes = 0
        self.duration = 0.0
        self.error: str | None = None
        self._t0: float | None = None
        self._anchors: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name=f"capture {path.name}", daemon=True)

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def push(self, kind: str, frame: EncodedFrame, clock_rate: int) -> None:
        now = time.monotonic()
        if self._t0 is None and not self._open(kind, frame, now):
            return
        assert self._t0 is not None
        if kind not in self._anchors:
            self._anchors[kind] = int((now - self._t0) * clock_rate) - frame.timestamp
        pts = frame.timestamp + self._anchors[kind]
        if pts <= self._last.get(kind, -1):
            return
        self._last[kind] = pts
        self.bytes += len(frame.data)
        self.duration = max(self.duration, pts / clock_rate)
        self._queue.put((kind, frame.data, pts, Fraction(1, clock_rate), frame.keyframe))

    def _open(self, kind: str, frame: EncodedFrame, now: float) -> bool:
        if self.video_codec and not (kind == "video" and frame.keyframe):
            return False  # audio before the first keyframe is dropped: the file starts on it
        size = video_size(self.video_codec, frame.data) if self.video_codec else None
        if self.video_codec and size is None:
            return False
        fmt = container_format(self.video_codec)
        self._queue.put(FileSpec(self.path, fmt, self.video_codec, size, self.audio))
        self._t0 = now
        self._thread.start()
        return True

    def close(self) -> None:
        """Finish the file (blocking: call it off the event loop)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _write(self) -> None:
        spec = self._queue.get()
        try:
            container, streams = open_container(spec)
        except (av.FFmpegError, OSError) as exc:
            self.error = f"cannot write {self.path}: {exc}"
            return
        try:
            while (item := self._queue.get()) is not None:
                kind, data, pts, time_base, keyframe = item
                packet = av.Packet(data)
                packet.stream = streams[kind]
                packet.time_base = time_base
                packet.pts = packet.dts = pts
                packet.is_keyframe = keyframe
                container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            self.error = f"writing {self.path} failed: {exc}"
        finally:
            try:
                container.close()
            except (av.FFmpegError, OSError) as exc:
                self.error = self.error or f"closing {self.path} failed: {exc}"
