"""Which streams are recorded, and the lifetime of their recorders.

The manager listens to every stream change: a live stream whose recording is
on (runtime switch, else its `recording.streams` entry, else
`recording.enabled`) gets a `Recorder`; one that goes offline or is switched
off loses it, and its file is finalised. The files themselves, and retention,
are the `Library`'s; the manager tells it which files are still being written.

A recorder whose file failed (a full disk, a read-only directory) stays on its
stream to try again at the next segment, but the stream shows
`recording: false` and the reason (`recording_error`) until a file works; the
failed file is listed with that reason as its `error`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from relay.config import RecordingConfig
from relay.media.library import Entry, FileInfo, Library
from relay.media.recorder import Recorder, RecordingFile
from relay.media.stream import Stream, Streams

log = logging.getLogger(__name__)

RETENTION_INTERVAL = 60.0
MAX_FAILED_FILES = 1000  # failed files whose reason the catalogue remembers


class Recordings:
    """The recorders of all streams and the files they leave; one per app."""

    def __init__(self, config: RecordingConfig, streams: Streams, join_timeout: float) -> None:
        self.config = config
        self.library = Library(Path(config.dir))
        self._streams = streams
        self._join_timeout = join_timeout
        self._overrides: dict[str, bool] = {}
        self._recorders: dict[str, Recorder] = {}
        self._finishing: set[Recorder] = set()
        self._retired: Counter[str] = Counter()  # counts of recorders already let go, for /metrics
        self._failed: OrderedDict[tuple[str, str], str] = OrderedDict()  # (stream, file) -> why writing it failed
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
        if recorder is not None:
            stream.set_recording(recorder.error is None, recorder.error)
        elif not self.enabled(stream.name):
            stream.set_recording(False)  # switched off: an old failure no longer matters
        else:
            stream.set_recording(False, stream.recording_error)  # offline: the last failure stays shown

    def _new_recorder(self, stream: Stream) -> Recorder | None:
        try:
            self.library.inside(self.library.root / stream.name)
        except ValueError:
            log.error("stream name %r would leave %s: not recorded", stream.name, self.library.root)
            return None
        recorder = Recorder(stream, self.library.root, self.config.segment_seconds, self._file_done,
                            self._recorder_error)
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
        recorder.stream.set_recording(False, recorder.error)

    def _file_done(self, file: RecordingFile) -> None:
        log.info("recording %s done: %.1f s", file.path, file.duration)
        self._wake.set()

    def _recorder_error(self, recorder: Recorder, path: Path, error: str | None) -> None:
        """A file failed (`error`), or one works after a failure: the catalogue and the stream show it."""
        if error is not None:
            self._failed[(recorder.stream.name, path.name)] = error
            while len(self._failed) > MAX_FAILED_FILES:
                self._failed.popitem(last=False)
        if self._recorders.get(recorder.stream.name) is recorder:
            recorder.stream.set_recording(recorder.error is None, recorder.error)

    def switch(self, name: str, on: bool) -> dict[str, Any]:
        """Runtime start/stop; it holds for this stream until switched again or restart."""
        self._overrides[name] = on
        failed = self._recorders.get(name)
        if on and failed is not None and failed.error is not None:
            self._retire(failed)  # switching on again tries a new file now
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
            "recording": recorder is not None and recorder.error is None,
            "error": recorder.error if recorder else None,
            "file": current.path.name if current else None,
        }

    # Files: the library's, minus those being written.

    def _active(self) -> dict[Path, FileInfo]:
        """The files being written, as their writers know them (reading them would find no duration yet)."""
        return {r.current.path: FileInfo(round(r.current.duration, 3), dict(r.current.codecs))
                for r in self._recorders.values() if r.current is not None}

    async def catalogue(self, only: str | None = None) -> list[Entry]:
        """Newest first; a file whose writing failed carries the reason as its `error`."""
        entries = await asyncio.to_thread(self.library.catalogue, only, self._active())
        return [dataclasses.replace(e, error=self._failed[(e.stream, e.file)]) if (e.stream, e.file) in self._failed
                else e for e in entries]

    def delete(self, stream: str, name: str) -> None:
        """Delete a finished file; RecordingError (from the library) says why not."""
        self.library.delete(stream, name, self._active())

    async def sweep(self) -> list[Path]:
        """Retention: delete finished files older than max_age_hours, then the oldest beyond max_total_mb."""
        return await asyncio.to_thread(self.library.sweep, self.config.max_age_hours, self.config.max_total_mb,
                                       set(self._active()))

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

    async def start(self) -> None:
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

    async def close(self) -> None:
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
