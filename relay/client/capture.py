"""One file of what a WHEP client receives, remuxed without re-encoding.

Written by the same `MediaWriter` as the server's recordings, so it is timed,
contained and flushed alike; only the policy differs: a client chooses its
one file, reads frames from its own `EncodedTrack`s, and cannot ask the
publisher for a keyframe, so it waits for one at the start and after the disk
fell behind.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

from relay.media.assembler import EncodedFrame
from relay.media.bitstream import video_size
from relay.media.writer import FileSpec, MediaWriter, OutputFile, Queued, container_format


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
        self._file: OutputFile | None = None
        self._waiting_keyframe = False  # after an overflow: video resumes on a keyframe
        self._writer = MediaWriter(f"capture {path.name}")

    @property
    def started(self) -> bool:
        return self._file is not None

    @property
    def bytes(self) -> int:
        """Written to the file so far."""
        return self._writer.bytes_written

    @property
    def duration(self) -> float:
        return self._file.duration if self._file else 0.0

    @property
    def error(self) -> str | None:
        """Why writing failed, if it did."""
        return self._writer.error

    def push(self, kind: str, frame: EncodedFrame, clock_rate: int) -> None:
        now = time.monotonic()
        if self._file is None and not self._open(kind, frame, now):
            return
        if kind == "video":
            if frame.keyframe:
                self._waiting_keyframe = False
            elif self._waiting_keyframe:
                return
        queued = self._writer.write(kind, frame.data, frame.timestamp, Fraction(1, clock_rate), frame.keyframe, now)
        if queued is Queued.FULL:
            self._waiting_keyframe = bool(self.video_codec)

    def resume(self) -> None:
        """The stream came back in a new session: its RTP clocks start afresh.

        Each track is anchored again at its next frame's arrival, so the file
        goes on where it stopped; video resumes on a keyframe.
        """
        if self._file is not None:
            self._file.anchors.clear()
        self._waiting_keyframe = bool(self.video_codec)

    def _open(self, kind: str, frame: EncodedFrame, now: float) -> bool:
        if self.video_codec and not (kind == "video" and frame.keyframe):
            return False  # audio before the first keyframe is dropped: the file starts on it
        size = video_size(self.video_codec, frame.data) if self.video_codec else None
        if self.video_codec and size is None:
            return False
        spec = FileSpec(self.path, container_format(self.video_codec), self.video_codec, size, self.audio)
        self._file = OutputFile(spec, now)
        self._writer.open(self._file)
        return True

    def close(self) -> None:
        """Finish the file (blocking: call it off the event loop)."""
        self._writer.stop()
        self._writer.join()
