"""Which streams are recorded, their recorders, their files, and the API for them.

The manager listens to every stream change: a live stream whose recording is
on (runtime switch, else its `recording.streams` entry, else
`recording.enabled`) gets a `Recorder`; one that goes offline or is switched
off loses it, and its file is finalised. Files live at
`{dir}/{stream}/{UTC start}.{ext}`; names from requests are validated and
every resolved path must stay inside `dir`. Retention deletes finished files
by age and by total size, oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import av
from aiohttp import web

from . import auth
from .config import RecordingConfig
from .context import Context
from .endpoint import stream_name
from .problems import Problem
from .record import FILE_TIME_FORMAT, Recorder, RecordingFile
from .sdp import FFMPEG_CODECS
from .stream import Stream, Streams, valid_stream_name

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"(\d{8}T\d{6})\.(\d{3})Z\.(webm|mp4)")
MEDIA_TYPES = {"webm": "video/webm", "mp4": "video/mp4"}
RETENTION_INTERVAL = 60.0


@dataclass(frozen=True)
class Probe:
    """What a finished file holds, read from its headers (no decoding)."""

    duration: float | None
    codecs: dict[str, str]


def probe(path: Path) -> Probe:
    """Duration and codecs; a file cut by a crash has no duration header, so scan its packets."""
    try:
        with av.open(str(path)) as container:
            codecs = {s.type: FFMPEG_CODECS.get(s.codec_context.name, s.codec_context.name)
                      for s in container.streams if s.type in ("video", "audio")}
            if container.duration:
                return Probe(round(container.duration / 1_000_000, 3), codecs)
            end = 0.0
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            return Probe(round(end, 3), codecs)
    except (av.FFmpegError, OSError) as exc:
        log.warning("recording %s cannot be read: %s", path, exc)
        return Probe(None, {})


def start_time(name: str) -> datetime:
    match = FILE_NAME.fullmatch(name)
    assert match is not None
    started = datetime.strptime(match[1], FILE_TIME_FORMAT)
    return started.replace(microsecond=int(match[2]) * 1000, tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FileOnDisk:
    stream: str
    path: Path
    size: int
    mtime: float


class Recordings:
    """The recorders of all streams and the files they leave; one per app."""

    def __init__(self, config: RecordingConfig, streams: Streams, join_timeout: float) -> None:
        self.config = config
        self.root = Path(config.dir).resolve()
        self._streams = streams
        self._join_timeout = join_timeout
        self._overrides: dict[str, bool] = {}
        self._recorders: dict[str, Recorder] = {}
        self._finishing: set[Recorder] = set()
        self._retired: Counter[str] = Counter()  # counts of recorders already let go, for /metrics
        self._probes: dict[Path, tuple[tuple[int, float], Probe]] = {}
        self._accepting = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # What to record.

    def enabled(self, name: str) -> bool:
        if name in self._overrides:
            return self._overrides[name]
        if name in self.config.streams:
            return self.config.streams[name].enabled
        return self.config.enabled

    def recorder(self, name: str) -> Recorder | None:
        return self._recorders.get(name)

    def on_stream(self, stream: Stream) -> None:
        """Streams listener: keep exactly one recorder on each stream that should record."""
        recorder = self._recorders.get(stream.name)
        if recorder is not None and recorder.stream is not stream and not recorder.ended:
            return  # news of an older stream object of that name
        wanted = stream.live and self._accepting and self.enabled(stream.name)
        if recorder is not None and (recorder.ended or recorder.stream is not stream or not wanted):
            self._retire(recorder)
            recorder = None
        if recorder is None and wanted:
            recorder = self._new_recorder(stream)
        stream.set_recording(recorder is not None)

    def _new_recorder(self, stream: Stream) -> Recorder | None:
        try:
            self.inside(self.root / stream.name)
        except ValueError:
            log.error("stream name %r would leave %s: not recorded", stream.name, self.root)
            return None
        recorder = Recorder(stream, self.root, self.config.segment_seconds, self._file_done)
        self._recorders[stream.name] = recorder
        recorder.start()
        return recorder

    def _retire(self, recorder: Recorder) -> None:
        if self._recorders.get(recorder.stream.name) is recorder:
            del self._recorders[recorder.stream.name]
        recorder.stop()
        for done in [r for r in self._finishing if not r.writing]:
            self._let_go(done)
        self._finishing.add(recorder)
        recorder.stream.set_recording(False)

    def _file_done(self, file: RecordingFile) -> None:
        log.info("recording %s done: %.1f s", file.path, file.duration)
        self._wake.set()

    def switch(self, name: str, on: bool) -> dict[str, Any]:
        """Runtime start/stop; it holds for this stream until switched again or restart."""
        self._overrides[name] = on
        stream = self._streams.get(name)
        if stream is not None:
            self.on_stream(stream)
        return self.state(name)

    def state(self, name: str) -> dict[str, Any]:
        stream = self._streams.get(name)
        recorder = self._recorders.get(name)
        current = recorder.current if recorder else None
        return {
            "stream": name,
            "enabled": self.enabled(name),
            "live": bool(stream and stream.live),
            "recording": recorder is not None,
            "file": current.path.name if current else None,
        }

    # Files.

    def inside(self, path: Path) -> Path:
        """`path` resolved; ValueError if it is not strictly inside the recordings dir."""
        resolved = path.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise ValueError(f"{path} is outside {self.root}")
        return resolved

    def file_path(self, stream: str, name: str) -> Path:
        if not FILE_NAME.fullmatch(name):
            raise Problem(400, "bad-recording-name",
                          f"{name[:80]!r} is not a recording file name; take names from GET /api/recordings")
        try:
            path = self.inside(self.root / stream / name)
        except ValueError:
            raise Problem(400, "bad-recording-name", "that recording path leaves the recordings directory") from None
        if not path.is_file():
            raise Problem(404, "unknown-recording", f"there is no recording {stream}/{name}")
        return path

    def _scan(self, only: str | None = None) -> list[FileOnDisk]:
        files = []
        try:
            dirs = [entry for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        for directory in dirs:
            if not valid_stream_name(directory.name) or (only and directory.name != only):
                continue
            for entry in os.scandir(directory.path):
                if FILE_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    files.append(FileOnDisk(directory.name, Path(entry.path), stat.st_size, stat.st_mtime))
        return files

    def _active(self) -> dict[Path, RecordingFile]:
        return {r.current.path: r.current for r in self._recorders.values() if r.current is not None}

    async def list(self, only: str | None = None) -> list[dict[str, Any]]:
        active = self._active()
        return await asyncio.to_thread(self._describe_all, only, active)

    def _describe_all(self, only: str | None, active: dict[Path, RecordingFile]) -> list[dict[str, Any]]:
        files = self._scan(only)
        for gone in set(self._probes) - {f.path for f in files}:
            self._probes.pop(gone, None)
        out = [self._describe(f, active.get(f.path)) for f in files]
        return sorted(out, key=lambda item: (item["start"], item["stream"]), reverse=True)

    def _describe(self, file: FileOnDisk, live: RecordingFile | None) -> dict[str, Any]:
        if live is not None:
            info = Probe(round(live.duration, 3), dict(live.codecs))
        else:
            key = (file.size, file.mtime)
            cached = self._probes.get(file.path)
            if cached is None or cached[0] != key:
                cached = self._probes[file.path] = (key, probe(file.path))
            info = cached[1]
        name = file.path.name
        return {
            "stream": file.stream,
            "file": name,
            "url": f"/api/recordings/{file.stream}/{name}",
            "media_type": MEDIA_TYPES[name.rsplit(".", 1)[1]],
            "start": iso(start_time(name)),
            "duration": info.duration,
            "size": file.size,
            "codecs": info.codecs,
            "recording": live is not None,
        }

    def delete(self, stream: str, name: str) -> None:
        path = self.file_path(stream, name)
        if path in self._active():
            raise Problem(409, "recording-active",
                          f"{stream}/{name} is being written; stop it first with DELETE /api/streams/{stream}/recording")
        path.unlink(missing_ok=True)
        self._probes.pop(path, None)

    # Retention.

    async def sweep(self) -> list[Path]:
        """Delete finished files older than max_age_hours, then the oldest beyond max_total_mb."""
        active = set(self._active())
        return await asyncio.to_thread(self._sweep, active)

    def _sweep(self, active: set[Path]) -> list[Path]:
        files = sorted(self._scan(), key=lambda f: f.mtime)
        kept = [f for f in files if f.path not in active]
        doomed: list[FileOnDisk] = []
        if self.config.max_age_hours:
            oldest = time.time() - self.config.max_age_hours * 3600
            doomed = [f for f in kept if f.mtime < oldest]
            kept = [f for f in kept if f.mtime >= oldest]
        if self.config.max_total_mb:
            total = sum(f.size for f in files) - sum(f.size for f in doomed)
            for file in kept:
                if total <= self.config.max_total_mb * 1_000_000:
                    break
                doomed.append(file)
                total -= file.size
        for file in doomed:
            log.info("retention: deleting recording %s", file.path)
            file.path.unlink(missing_ok=True)
        return [f.path for f in doomed]

    async def _retention(self) -> None:
        while True:
            try:
                await self.sweep()
            except OSError as exc:
                log.error("retention sweep failed: %s", exc)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), RETENTION_INTERVAL)
            except TimeoutError:
                pass

    # Lifetime.

    async def start(self, app: web.Application) -> None:
        if self.config.max_age_hours or self.config.max_total_mb:
            self._task = asyncio.create_task(self._retention())

    async def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until every stopped recorder has closed its file; True if all did."""
        finishing = list(self._finishing)
        done = await asyncio.gather(*(asyncio.to_thread(r.join, timeout) for r in finishing))
        for recorder, finished in zip(finishing, done):
            if finished:
                self._let_go(recorder)
        return all(done)

    def _let_go(self, recorder: Recorder) -> None:
        self._finishing.discard(recorder)
        self._retired.update(_counts(recorder))

    def totals(self) -> Counter[str]:
        """Bytes written and errors (write failures, writer overflows) over every recorder, for /metrics."""
        totals = Counter(self._retired)
        for recorder in {*self._recorders.values(), *self._finishing}:
            totals.update(_counts(recorder))
        return totals

    async def close(self, app: web.Application) -> None:
        """Shutdown: finalise every file (the sessions were closed before this)."""
        self._accepting = False
        for recorder in list(self._recorders.values()):
            self._retire(recorder)
        if self._task:
            self._task.cancel()
        if not await self.wait_finished(self._join_timeout):
            log.error("some recordings were not finalised within %.0f s", self._join_timeout)


def _counts(recorder: Recorder) -> Counter[str]:
    return Counter(bytes=recorder.bytes_written, errors=recorder.write_errors + recorder.overflows)


RECORDINGS = web.AppKey("recordings", Recordings)


def recordings(request: web.Request) -> Recordings:
    return request.app[RECORDINGS]


async def start_recording(request: web.Request) -> web.Response:
    return web.json_response(recordings(request).switch(stream_name(request), True))


async def stop_recording(request: web.Request) -> web.Response:
    return web.json_response(recordings(request).switch(stream_name(request), False))


async def list_recordings(request: web.Request) -> web.Response:
    only = request.query.get("stream")
    if only is not None and not valid_stream_name(only):
        raise Problem(400, "bad-stream-name", f"?stream={only[:80]!r} is not a stream name")
    if only is not None:
        auth.require(request, only, "view")
    listed = [r for r in await recordings(request).list(only) if not auth.refusal(request, r["stream"], "view")]
    return web.json_response({"recordings": listed})


async def download(request: web.Request) -> web.FileResponse:
    """The file itself, with Range support (a <video> element seeks with it)."""
    path = recordings(request).file_path(stream_name(request), request.match_info["file"])
    return web.FileResponse(path, headers={"Content-Type": MEDIA_TYPES[path.suffix[1:]]})


async def delete(request: web.Request) -> web.Response:
    recordings(request).delete(stream_name(request), request.match_info["file"])
    return web.Response(status=204)


def setup(app: web.Application, ctx: Context) -> Recordings:
    """Create the manager, hear every stream change, add the routes and the lifetime hooks.

    Call it after the sessions' shutdown hook is added: sessions close first
    (ending the recorders' streams), then `close` waits for the files.
    """
    manager = Recordings(ctx.config.recording, ctx.streams, ctx.config.server.shutdown_grace)
    app[RECORDINGS] = manager
    ctx.streams.listeners.append(manager.on_stream)
    publisher, viewer = auth.protected("publish"), auth.protected("view")
    app.router.add_post("/api/streams/{stream}/recording", publisher(start_recording))
    app.router.add_delete("/api/streams/{stream}/recording", publisher(stop_recording))
    app.router.add_get("/api/recordings", list_recordings)  # lists what the token may view
    app.router.add_get("/api/recordings/{stream}/{file}", viewer(download))
    app.router.add_delete("/api/recordings/{stream}/{file}", publisher(delete))
    app.on_startup.append(manager.start)
    app.on_shutdown.append(manager.close)
    return manager
