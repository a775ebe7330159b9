"""Recording one stream to disk: its encoded frames remuxed, never decoded.

A `Recorder` is one more sink of a stream's fan-outs. On the event loop it
decides where a file starts: on a video keyframe, when a publish starts, the
resolution or codec changes, or a segment is due. Timing, queueing and muxing
are its `MediaWriter`'s (`relay.media.writer`), one writer thread per
recorder, so a slow disk never stalls forwarding; when that disk falls too far
behind, the recorder drops frames up to the next keyframe and asks for one.

When writing a file fails (a full disk, a read-only directory), the recorder
stops feeding it and keeps the reason as `error` until a later file is
written: the next segment tries again, or else the next publish (a new
recorder). Forwarding never notices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from relay.media.bitstream import video_size
from relay.media.fanout import MediaFrame
from relay.media.library import file_name
from relay.media.writer import FileSpec, MediaWriter, OutputFile, Queued, container_format

if TYPE_CHECKING:
    from relay.media.stream import Stream

log = logging.getLogger(__name__)

# While a segment is due, its keyframe is asked for at most this often (s).
SEGMENT_KEYFRAME_RETRY = 1.0


@dataclass
class RecordingFile(OutputFile):
    """A file being written, with the codecs the catalogue shows for it."""

    codecs: dict[str, str] = field(default_factory=dict)


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
        on_error: Callable[[Recorder, Path, str | None], None] | None = None,
    ) -> None:
        self.stream = stream
        self.directory = directory
        self.segment_seconds = segment_seconds
        self.waiting_keyframe = False  # set once video flows and cannot be used yet
        self.current: RecordingFile | None = None
        self.ended = False
        self.overflows = 0
        self.dropped = 0
        self.error: str | None = None  # why the last file failed, until a later one is written
        self._on_file_done = on_file_done
        # Called with a file and why writing it failed, or with None once a file works after a failure.
        self._on_error = on_error
        self._retry_at = 0.0  # after a failure, no new file before this (monotonic)
        self._inputs = [_Input(self, kind) for kind in ("video", "audio")]
        self._writer = MediaWriter(f"record-{stream.name}")
        self._segment_asked = -float("inf")

    def start(self) -> None:
        """Join the stream's fan-outs; the first video frame asks for a keyframe if it is not one."""
        for sink in self._inputs:
            self.stream.fanouts[sink.kind].add(sink)

    def stop(self) -> None:
        """Leave the stream and finalise the file; the writer thread exits when done."""
        if self.ended:
            return
        self.ended = True
        for sink in self._inputs:
            self.stream.fanouts[sink.kind].remove(sink)
        self._finish_file()
        self._writer.stop()

    end = stop  # Stream.stop() ends every sink: the publisher left

    @property
    def writing(self) -> bool:
        """The writer thread still runs (a stopped recorder finishes its file first)."""
        return self._writer.writing

    @property
    def backlog(self) -> int:
        return self._writer.backlog

    @property
    def bytes_written(self) -> int:
        """Muxed so far, over all files; /metrics reads it."""
        return self._writer.bytes_written

    @property
    def write_errors(self) -> int:
        return self._writer.write_errors

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the writer thread (blocking: run it off the loop); True if it finished."""
        return self._writer.join(timeout)

    # Event loop side: decide, then queue.

    def push(self, kind: str, frame: MediaFrame) -> None:
        if self.ended:
            return
        now = time.monotonic()
        outcomes = self._writer.outcomes
        while outcomes:  # news from the writer thread, about once a file
            self._heard(*outcomes.popleft(), now)
        if self.error is not None and self.current is None and now < self._retry_at:
            self.waiting_keyframe = False  # nothing to ask keyframes for until the retry
            return
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
        packet = frame.packet
        if packet.pts is None:  # the relay's assemblers always stamp frames; nothing to time this one by
            self.dropped += 1
            return
        queued = self._writer.write(kind, packet, packet.pts, packet.time_base, frame.keyframe, now)
        if queued is Queued.STALE:
            self.dropped += 1
        elif queued is Queued.FULL:
            self._overflow()

    def _heard(self, path: Path, error: str | None, now: float) -> None:
        """The writer wrote the first frame of `path` (`error` None) or failed to write it."""
        current = self.current
        if current is None or path != current.path:
            if error is not None and self._on_error:
                self._on_error(self, path, error)  # an earlier file's ending: the file being written is fine
            return
        if error is None:
            if self.error is not None:
                log.info("recording %r works again: %s", self.stream.name, path)
                self.error = None
                if self._on_error:
                    self._on_error(self, path, None)
            return
        if self.error is None:
            log.warning("recording %r failed (%s); %s", self.stream.name, error,
                        "the next segment tries again" if self.segment_seconds else "the next publish tries again")
        # Stop feeding a file the writer dropped: it is no longer growing.
        self.error, self.current = error, None
        self._writer.finish()
        self.waiting_keyframe = False
        # The next segment tries again; without segments, the next publish does (a new recorder).
        self._retry_at = max(current.t0 + self.segment_seconds, now) if self.segment_seconds else float("inf")
        if self._on_error:
            self._on_error(self, path, error)

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
        started = datetime.now(UTC)
        directory = self.directory / self.stream.name
        path = directory / file_name(started, fmt)
        while path.exists():  # two files within a millisecond: keep both
            started += timedelta(milliseconds=1)
            path = directory / file_name(started, fmt)
        codecs = {"video": video_codec} if video_codec else {}
        if audio is not None:
            codecs["audio"] = audio.codec
        self.current = RecordingFile(FileSpec(path, fmt, video_codec, size, audio is not None), now, codecs=codecs)
        self._writer.open(self.current)
        log.info("recording %r to %s", self.stream.name, path)

    def _finish_file(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            self._writer.finish()
            if self._on_file_done:
                self._on_file_done(current)

    def _overflow(self) -> None:
        """The disk cannot keep up: drop frames until the next keyframe."""
        self.overflows += 1
        if not self.waiting_keyframe:
            log.warning("recording %r: writer queue full, dropping to the next keyframe", self.stream.name)
        self._wait_keyframe("recorder queue overflow")
