"""Recording one stream to disk: its encoded frames remuxed, never decoded.

A `Recorder` is one more sink of a stream's fan-outs. On the event loop it
only decides things (where a file starts, which timestamp a frame gets) and
queues the frames; a writer thread per recorder muxes them with PyAV, so a
slow disk never stalls forwarding. A file starts on a video keyframe, and
frames are timed by arrival: each track is anchored once per file at the
arrival of its first frame, then follows its own RTP clock, so audio and
video line up within network jitter.

Containers (aiortc-forwarding.md §6): VP8 (or audio only) goes to WebM,
H.264 to fragmented MP4. Both are flushed about every second, so a file
survives `kill -9` up to its last second.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av

from .bitstream import video_size
from .forward import MediaFrame

if TYPE_CHECKING:
    from .stream import Stream

log = logging.getLogger(__name__)

# Frames (audio and video) the writer thread may lag behind: about 4 s.
MAX_QUEUE = 320
# While a segment is due, its keyframe is asked for at most this often (s).
SEGMENT_KEYFRAME_RETRY = 1.0

FILE_TIME_FORMAT = "%Y%m%dT%H%M%S"
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
    """H.264 goes to fragmented MP4; VP8 and audio-only streams to WebM."""
    return "mp4" if video_codec == "H264" else "webm"


def file_name(started: datetime, fmt: str) -> str:
    """`{UTC start}.{ext}`, e.g. 20250102T030405.678Z.webm: sortable, no colons."""
    utc = started.astimezone(timezone.utc)
    return f"{utc.strftime(FILE_TIME_FORMAT)}.{utc.microsecond // 1000:03d}Z.{fmt}"


@dataclass(frozen=True)
class FileSpec:
    """What the writer thread needs to open a file."""

    path: Path
    format: str
    video_codec: str | None
    size: tuple[int, int] | None
    audio: bool


@dataclass
class RecordingFile:
    """A file being written, as the loop sees it."""

    spec: FileSpec
    t0: float  # monotonic arrival of the file's first frame
    codecs: dict[str, str]
    anchors: dict[str, int] = field(default_factory=dict)  # per kind: output pts - RTP pts
    last_pts: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def path(self) -> Path:
        return self.spec.path


@dataclass(frozen=True, slots=True)
class _Write:
    kind: str
    packet: av.Packet
    pts: int
    keyframe: bool


_CLOSE = object()  # writer queue sentinels: finish the file; finish it and stop
_EXIT = object()


class _Input:
    """The recorder's sink in one fan-out: tags frames with their kind."""

    def __init__(self, recorder: Recorder, kind: str) -> None:
        self._recorder = recorder
        self.kind = kind

    @property
    def waiting_keyframe(self) -> bool:
        return self.kind == "video" and self._recorder.waiting_keyframe

    @waiting_keyframe.setter
    def waiting_keyframe(self, value: bool) -> None:
        # FanOut.gap(): frames were lost upstream, resume on a keyframe.
        if self.kind == "video":
            self._recorder.waiting_keyframe = value

    def push(self, frame: MediaFrame) -> None:
        self._recorder.push(self.kind, frame)

    def end(self) -> None:
        self._recorder.end()


class Recorder:
    """Records one live stream into files under `directory` until ended."""

    def __init__(
        self,
        stream: Stream,
        directory: Path,
        segment_seconds: float = 0.0,
        on_file_done: Callable[[RecordingFile], None] | None = None,
    ) -> None:
        self.stream = stream
        self.directory = directory
        self.segment_seconds = segment_seconds
        self.waiting_keyframe = False  # set once video flows and cannot be used yet
        self.current: RecordingFile | None = None
        self.ended = False
        self.overflows = 0
        self.dropped = 0
        self.write_errors = 0
        self.bytes_written = 0  # muxed by the writer thread; /metrics reads it
        self._on_file_done = on_file_done
        self._inputs = [_Input(self, kind) for kind in ("video", "audio")]
        # Unbounded, so opening and closing files is never refused nor blocks
        # the loop; frames are bounded by MAX_QUEUE in _queue_frame().
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._segment_asked = -float("inf")
        self._thread = threading.Thread(target=self._write_loop, name=f"record-{stream.name}", daemon=True)

    def start(self) -> None:
        """Join the stream's fan-outs; the first video frame asks for a keyframe if it is not one."""
        self._thread.start()
        for sink in self._inputs:
            self.stream.fanouts[sink.kind].add(sink)

    def stop(self) -> None:
        """Leave the stream and finalise the file; the thread exits when done."""
        if self.ended:
            return
        self.ended = True
        for sink in self._inputs:
            self.stream.fanouts[sink.kind].remove(sink)
        self._finish_file()
        self._queue.put(_EXIT)

    end = stop  # Stream.stop() ends every sink: the publisher left

    @property
    def writing(self) -> bool:
        """The writer thread still runs (a stopped recorder finishes its file first)."""
        return self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Items the writer thread has yet to handle."""
        return self._queue.qsize()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the writer thread (blocking: run it off the loop); True if it finished."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # Event loop side: decide, then queue.

    def push(self, kind: str, frame: MediaFrame) -> None:
        if self.ended:
            return
        now = time.monotonic()
        video = self.stream.tracks.get("video")
        if kind == "video":
            if frame.keyframe and video is not None:
                size = video_size(video.codec, bytes(frame.packet))
                if size and self._needs_new_file(video.codec, size, now):
                    self._new_file(video.codec, size, now)
                if self.current is not None:
                    self.waiting_keyframe = False
            if self.waiting_keyframe or self.current is None:
                self._wait_keyframe("recorder waiting")
                return
            self._ask_segment_keyframe(now)
        else:
            if video is None and (self.current is None or self._segment_due(now)):
                self._new_file(None, None, now)
            if self.current is None:
                return  # audio waits for the video keyframe the file starts on
        self._queue_frame(kind, frame, now)

    def _wait_keyframe(self, reason: str) -> None:
        """Drop this frame; ask for a keyframe once, the stream's requester repeats it while we wait.

        Not before video flows: a request sent before the publisher's SSRC is
        known is lost, and the next one would be held back by min_interval.
        """
        self.dropped += 1
        if not self.waiting_keyframe:
            self.waiting_keyframe = True
            self.stream.request_keyframe(reason)

    def _needs_new_file(self, codec: str, size: tuple[int, int], now: float) -> bool:
        current = self.current
        return (current is None or current.spec.size != size
                or current.codecs.get("video") != codec or self._segment_due(now))

    def _segment_due(self, now: float) -> bool:
        return (self.current is not None and self.segment_seconds > 0
                and now - self.current.t0 >= self.segment_seconds)

    def _ask_segment_keyframe(self, now: float) -> None:
        if self._segment_due(now) and now - self._segment_asked >= SEGMENT_KEYFRAME_RETRY:
            self._segment_asked = now
            self.stream.request_keyframe("recording segment")

    def _new_file(self, video_codec: str | None, size: tuple[int, int] | None, now: float) -> None:
        self._finish_file()
        audio = self.stream.tracks.get("audio")
        fmt = container_format(video_codec)
        started = datetime.now(timezone.utc)
        directory = self.directory / self.stream.name
        path = directory / file_name(started, fmt)
        while path.exists():  # two files within a millisecond: keep both
            started += timedelta(milliseconds=1)
            path = directory / file_name(started, fmt)
        spec = FileSpec(path, fmt, video_codec, size, audio is not None)
        codecs = {"video": video_codec} if video_codec else {}
        if audio is not None:
            codecs["audio"] = audio.codec
        self.current = RecordingFile(spec, now, codecs)
        self._queue.put(spec)
        log.info("recording %r to %s", self.stream.name, path)

    def _finish_file(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            self._queue.put(_CLOSE)
            if self._on_file_done:
                self._on_file_done(current)

    def _queue_frame(self, kind: str, frame: MediaFrame, now: float) -> None:
        current = self.current
        assert current is not None
        packet = frame.packet
        time_base = packet.time_base
        if kind not in current.anchors:
            current.anchors[kind] = int((now - current.t0) / time_base) - packet.pts
        pts = packet.pts + current.anchors[kind]
        if pts <= current.last_pts.get(kind, -1):
            self.dropped += 1
            return
        if self.backlog >= MAX_QUEUE:
            self._overflow()
            return
        self._queue.put(_Write(kind, packet, pts, frame.keyframe))
        current.last_pts[kind] = pts
        current.duration = max(current.duration, float(pts * time_base))

    def _overflow(self) -> None:
        """The disk cannot keep up: drop frames until the next keyframe."""
        self.overflows += 1
        if not self.waiting_keyframe:
            log.warning("recording %r: writer queue full, dropping to the next keyframe", self.stream.name)
        self._wait_keyframe("recorder queue overflow")

    # Writer thread: mux.

    def _write_loop(self) -> None:
        container: av.container.OutputContainer | None = None
        streams: dict[str, av.stream.Stream] = {}
        while True:
            item = self._queue.get()
            try:
                if isinstance(item, _Write):
                    if container is not None:
                        out = av.Packet(bytes(item.packet))
                        out.stream = streams[item.kind]
                        out.time_base = item.packet.time_base
                        out.pts = out.dts = item.pts
                        out.is_keyframe = item.keyframe
                        container.mux(out)
                        self.bytes_written += out.size
                elif isinstance(item, FileSpec):
                    container, streams = open_container(item)
                elif container is not None:  # _CLOSE or _EXIT
                    container.close()
                    container, streams = None, {}
            except Exception:  # the thread must outlive a bad file, or later files are lost too
                self.write_errors += 1
                log.exception("recording %r: writing failed; the rest of this file is lost", self.stream.name)
                if container is not None:
                    _close_quietly(container)
                container, streams = None, {}
            if item is _EXIT:
                return


def open_container(spec: FileSpec) -> tuple[av.container.OutputContainer, dict[str, av.stream.Stream]]:
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(spec.path), "w", format=spec.format, options=MUX_OPTIONS[spec.format])
    streams: dict[str, av.stream.Stream] = {}
    if spec.video_codec and spec.size:
        width, height = spec.size
        streams["video"] = container.add_mux_stream(spec.video_codec.lower(), rate=30, width=width, height=height)
    if spec.audio:
        # A mux-only Opus stream has no OpusHead; an (unfed) encoder stream writes one.
        streams["audio"] = container.add_stream("libopus", rate=48000, layout="stereo")
    return container, streams


def _close_quietly(container: av.container.OutputContainer) -> None:
    try:
        container.close()
    except (av.FFmpegError, OSError):
        pass
