"""The recordings on disk: their names, what they hold, and retention.

Files live at `{root}/{stream}/{UTC start}.{ext}`. Names are the only thing
trusted: a name from outside is checked before it becomes a path, every
resolved path must stay inside `root`, and files whose names are not
recording names are neither listed nor deleted. Below `root` no symlink is
followed: a link (to a file or a stream directory) is neither listed nor
served, so a name cannot reach another stream's files. Files being written
(`active`, from the recorders) are never deleted. Everything here blocks on
the disk: call it off the event loop.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av

from relay.names import valid_stream_name
from relay.sdp import FFMPEG_CODECS

log = logging.getLogger(__name__)

FILE_TIME_FORMAT = "%Y%m%dT%H%M%S"
FILE_NAME = re.compile(r"(\d{8}T\d{6})\.(\d{3})Z\.(webm|mp4)")
MEDIA_TYPES = {"webm": "video/webm", "mp4": "video/mp4"}


def file_name(started: datetime, fmt: str) -> str:
    """`{UTC start}.{ext}`, e.g. 20250102T030405.678Z.webm: sortable, no colons."""
    utc = started.astimezone(UTC)
    return f"{utc.strftime(FILE_TIME_FORMAT)}.{utc.microsecond // 1000:03d}Z.{fmt}"


def start_time(name: str) -> datetime:
    """The inverse of `file_name`; `name` must match FILE_NAME."""
    match = FILE_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a recording file name")
    started = datetime.strptime(match[1], FILE_TIME_FORMAT)
    return started.replace(microsecond=int(match[2]) * 1000, tzinfo=UTC)


@dataclass(frozen=True)
class FileInfo:
    """What a file holds: duration (s, None if unreadable) and codecs by kind, as `GET /api/streams` names them."""

    duration: float | None
    codecs: dict[str, str]


def read_file_info(path: Path) -> FileInfo:
    """Read from the headers, no decoding; a file cut by a crash has no duration header, so scan its packets."""
    try:
        with av.open(str(path)) as container:
            codecs: dict[str, str] = {s.type: FFMPEG_CODECS.get(s.codec_context.name, s.codec_context.name)
                      for s in container.streams if s.type in ("video", "audio")}
            if container.duration:
                return FileInfo(round(container.duration / 1_000_000, 3), codecs)
            end = 0.0
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            return FileInfo(round(end, 3), codecs)
    except (av.FFmpegError, OSError) as exc:
        log.warning("recording %s cannot be read: %s", path, exc)
        return FileInfo(None, {})


@dataclass(frozen=True)
class FileOnDisk:
    stream: str
    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class Entry:
    """One recording in the catalogue."""

    stream: str
    file: str
    media_type: str
    start: datetime
    size: int
    info: FileInfo
    recording: bool  # still being written
    error: str | None = None  # why writing it failed, if it did while this server ran


class RecordingError(Exception):
    """A request for a recording file that cannot be met; the message says why."""


class BadRecordingName(RecordingError):
    pass


class UnknownRecording(RecordingError):
    pass


class RecordingActive(RecordingError):
    pass


def _is(path: Path, kind: Callable[[int], bool]) -> bool:
    """`path` itself (not what a symlink points to) exists and is of `kind` (stat.S_ISDIR, stat.S_ISREG)."""
    try:
        return kind(path.lstat().st_mode)
    except OSError:
        return False


class Library:
    """The recording files under `root`: catalogue, deletion and retention."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._infos: dict[Path, tuple[tuple[int, float], FileInfo]] = {}  # by (size, mtime): read a file once

    def inside(self, path: Path) -> Path:
        """`path` resolved; ValueError if it is not strictly inside the root."""
        resolved = path.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise ValueError(f"{path} is outside {self.root}")
        return resolved

    def file_path(self, stream: str, name: str) -> Path:
        """The existing file `{stream}/{name}`; BadRecordingName or UnknownRecording otherwise.

        Each component below the root is checked with lstat: a symlink (to the
        file or to the stream's directory) is no recording.
        """
        if not FILE_NAME.fullmatch(name):
            raise BadRecordingName(f"{name[:80]!r} is not a recording file name")
        if not valid_stream_name(stream):
            raise BadRecordingName("that recording path leaves the recordings directory")
        directory, path = self.root / stream, self.root / stream / name
        if not (_is(directory, stat.S_ISDIR) and _is(path, stat.S_ISREG)):
            raise UnknownRecording(f"there is no recording {stream}/{name}")
        return path

    def scan(self, only: str | None = None) -> list[FileOnDisk]:
        """Every recording file, of stream `only` if given."""
        files = []
        try:
            dirs = [entry for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):  # nothing recorded yet, or `dir` is no directory
            return []
        for directory in dirs:
            if not valid_stream_name(directory.name) or (only and directory.name != only):
                continue
            for entry in os.scandir(directory.path):
                if FILE_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    files.append(FileOnDisk(directory.name, Path(entry.path), stat.st_size, stat.st_mtime))
        return files

    def catalogue(self, only: str | None, active: Mapping[Path, FileInfo]) -> list[Entry]:
        """Newest first; a file being written is described by its writer (`active`), not read."""
        files = self.scan(only)
        for gone in set(self._infos) - {f.path for f in files}:
            self._infos.pop(gone, None)
        entries = [self._entry(f, active.get(f.path)) for f in files]
        return sorted(entries, key=lambda entry: (entry.start, entry.stream), reverse=True)

    def _entry(self, file: FileOnDisk, live: FileInfo | None) -> Entry:
        info = live
        if info is None:
            key = (file.size, file.mtime)
            cached = self._infos.get(file.path)
            if cached is None or cached[0] != key:
                cached = self._infos[file.path] = (key, read_file_info(file.path))
            info = cached[1]
        name = file.path.name
        return Entry(file.stream, name, MEDIA_TYPES[name.rsplit(".", 1)[1]], start_time(name), file.size,
                     info, live is not None)

    def delete(self, stream: str, name: str, active: Collection[Path]) -> None:
        path = self.file_path(stream, name)
        if path in active:
            raise RecordingActive(f"{stream}/{name} is being written")
        path.unlink(missing_ok=True)
        self._infos.pop(path, None)

    def sweep(self, max_age_hours: float, max_total_mb: float, active: Collection[Path]) -> list[Path]:
        """Delete finished files older than `max_age_hours`, then the oldest beyond `max_total_mb` (0: no limit)."""
        files = sorted(self.scan(), key=lambda f: f.mtime)
        kept = [f for f in files if f.path not in active]
        doomed: list[FileOnDisk] = []
        if max_age_hours:
            oldest = time.time() - max_age_hours * 3600
            doomed = [f for f in kept if f.mtime < oldest]
            kept = [f for f in kept if f.mtime >= oldest]
        if max_total_mb:
            total = sum(f.size for f in files) - sum(f.size for f in doomed)
            for file in kept:
                if total <= max_total_mb * 1_000_000:
                    break
                doomed.append(file)
                total -= file.size
        for file in doomed:
            log.info("retention: deleting recording %s", file.path)
            file.path.unlink(missing_ok=True)
        return [f.path for f in doomed]
