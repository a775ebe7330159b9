"""Writing encoded frames to a file, remuxed by PyAV on a thread of its own.

Shared by the server's recorder and the client's `watch --record`, so both
time frames and fail alike. The event loop only stamps and queues: each track
is anchored once per file, at the arrival of its first frame, and then follows
its own RTP clock, so audio and video line up within network jitter; a frame
that would not advance its track is dropped, since muxers refuse it. The
thread muxes, so a slow disk never stalls the loop, and the queue is bounded
so a stuck disk cannot eat the memory: the caller decides what to drop.

Containers (aiortc-forwarding.md §6): VP8, VP9 and AV1 (or audio only) go to WebM,
H.264 to fragmented MP4. Both are flushed about every second, so a file
survives `kill -9` up to its last second.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

# Frames (audio and video) the writer thread may lag behind: about 4 s.
MAX_QUEUE = 320

MUX_OPTIONS = {
    # Clusters close every second; flush_packets writes each one out at once.
    "webm": {"flush_packets": "1", "cluster_time_limit": "1000", "max_interleave_delta": "1000000"},
    # A fragment (moof+mdat) every second, not only on the rare WebRTC keyframe.
    "mp4": {
        "flush_packets": "1",
        "movflags": "frag_keyframe+empty_moov+default_base_moof",
        "frag_duration": "1000000",
        "max_interleave_delta": "1000000",
    },
}


def container_format(video_codec: str | None) -> str:
    """H.264 goes to fragmented MP4 (browsers play no H.264 in Matroska); VP8, VP9, AV1 and audio-only to WebM."""
    return "mp4" if video_codec == "H264" else "webm"


@dataclass(frozen=True)
class FileSpec:
    """What the writer thread needs to open a file."""

    path: Path
    format: str
    video_codec: str | None
    size: tuple[int, int] | None
    audio: bool


@dataclass
class OutputFile:
    """A file being written, as the event loop sees it."""

    spec: FileSpec
    t0: float  # monotonic arrival of the file's first frame
    anchors: dict[str, int] = field(default_factory=dict)  # per kind: output pts - RTP pts
    last_pts: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def path(self) -> Path:
        return self.spec.path


class Queued(enum.Enum):
    """What `MediaWriter.write` did with a frame."""

    YES = "queued"
    STALE = "not after the track's last frame: dropped"
    FULL = "the writer is too far behind: dropped"


@dataclass(frozen=True, slots=True)
class _Write:
    kind: str
    payload: bytes | av.Packet  # copied on the writer thread, not on the loop
    pts: int
    time_base: Fraction
    keyframe: bool


_CLOSE = object()  # writer queue sentinels: finish the file; finish it and stop
_EXIT = object()


class MediaWriter:
    """Writes files one after another on one thread; call everything but `join` from one thread (the loop)."""

    def __init__(self, name: str, max_queue: int = MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self.file: OutputFile | None = None
        self.bytes_written = 0  # muxed, counted by the writer thread
        self.write_errors = 0
        self.error: str | None = None  # why the last failure happened
        # The thread's word on each file, for the loop to take (popleft): (path,
        # None) once bytes of it are on disk, (path, reason) when writing it
        # failed; the reason names no path. The newest are kept if nobody reads.
        self.outcomes: deque[tuple[Path, str | None]] = deque(maxlen=64)
        # Unbounded, so opening and closing files is never refused nor blocks
        # the loop; frames are bounded by max_queue in write().
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def writing(self) -> bool:
        """The thread still runs (a stopped writer finishes its file first)."""
        return self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Items the writer thread has yet to handle."""
        return self._queue.qsize()

    def open(self, file: OutputFile) -> None:
        """Finish the current file, if any, and write the next frames to `file`."""
        if self._stopped:
            raise RuntimeError("the writer was stopped")
        self.finish()
        self.file = file
        self._queue.put(file.spec)
        if not self._thread.is_alive():
            self._thread.start()  # no thread until there is a file to write

    def write(self, kind: str, payload: bytes | av.Packet, pts: int, time_base: Fraction,
              keyframe: bool, now: float) -> Queued:
        """Queue one frame of the open file; `pts` is on the track's RTP clock, `now` its monotonic arrival."""
        file = self.file
        if file is None:
            raise RuntimeError("no file is open")
        if kind not in file.anchors:
            file.anchors[kind] = int((now - file.t0) / time_base) - pts
        pts += file.anchors[kind]
        if pts <= file.last_pts.get(kind, -1):
            return Queued.STALE
        if self.backlog >= self.max_queue:
            return Queued.FULL
        self._queue.put(_Write(kind, payload, pts, time_base, keyframe))
        file.last_pts[kind] = pts
        file.duration = max(file.duration, float(pts * time_base))
        return Queued.YES

    def finish(self) -> None:
        """Finalise the open file (on the thread, after the frames queued before)."""
        if self.file is not None:
            self.file = None
            self._queue.put(_CLOSE)

    def stop(self) -> None:
        """Finish the file; the thread exits once it is written."""
        self.finish()
        self._stopped = True
        self._queue.put(_EXIT)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread (blocking: run it off the loop); True if it finished."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # Writer thread.

    def _run(self) -> None:
        container: av.container.OutputContainer | None = None
        streams: dict[str, av.stream.Stream] = {}
        path: Path | None = None
        confirmed = False  # bytes of the open file reached the disk
        while True:
            item = self._queue.get()
            try:
                if isinstance(item, _Write):
                    if container is not None:
                        packet = av.Packet(bytes(item.payload))
                        packet.stream = streams[item.kind]
                        packet.time_base = item.time_base
                        packet.pts = packet.dts = item.pts
                        packet.is_keyframe = item.keyframe
                        container.mux(packet)
                        self.bytes_written += packet.size
                        if not confirmed and path is not None and _size(path):  # a full disk fails a mux late
                            confirmed = True
                            self.outcomes.append((path, None))
                elif isinstance(item, FileSpec):
                    path, confirmed = item.path, False
                    container, streams = open_container(item)
                elif container is not None:  # _CLOSE or _EXIT
                    closing, container, streams = container, None, {}
                    closing.close()
            except Exception as exc:  # the thread must outlive a bad file, or later files are lost too
                self._failed(path, exc)
                if container is not None:
                    _close_quietly(container)
                container, streams = None, {}
                _remove_if_empty(path)
            if item is _EXIT:
                return

    def _failed(self, path: Path | None, exc: Exception) -> None:
        self.write_errors += 1
        self.error = f"writing {path} failed: {exc}"
        if path is not None:
            self.outcomes.append((path, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__))
        expected = isinstance(exc, (av.FFmpegError, OSError))  # a disk or muxer fault, not a bug: no traceback
        log.error("%s; the rest of that file is lost", self.error, exc_info=not expected)


def open_container(spec: FileSpec) -> tuple[av.container.OutputContainer, dict[str, av.stream.Stream]]:
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(spec.path), "w", format=spec.format, options=MUX_OPTIONS[spec.format])
    streams: dict[str, av.stream.Stream] = {}
    try:
        if spec.video_codec and spec.size:
            width, height = spec.size
            streams["video"] = container.add_mux_stream(spec.video_codec.lower(), rate=30, width=width, height=height)
        if spec.audio:
            # A mux-only Opus stream has no OpusHead; an (unfed) encoder stream writes one.
            streams["audio"] = container.add_stream("libopus", rate=48000, layout="stereo")
    except BaseException:
        _close_quietly(container)
        raise
    return container, streams


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove_if_empty(path: Path | None) -> None:
    """A file that failed before its first byte holds nothing: do not leave one per retry."""
    try:
        if path is not None and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _close_quietly(container: av.container.OutputContainer) -> None:
    try:
        container.close()
    except (av.FFmpegError, OSError):
        pass
