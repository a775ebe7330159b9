"""A media file played in real time as aiortc tracks.

Streams in a codec the peer takes go out as `av.Packet`s, which aiortc's
sender only packetizes: nothing is decoded or encoded. The other streams are
decoded here and encoded once by aiortc. aiortc's MediaPlayer is not used:
with decode=False its loop restarts the timestamps at zero (and stops
pacing), it decodes either every stream or none, and it hands out H.264 from
MP4 in AVCC form, which aiortc's packetizer cannot split.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.sdp import CLOCK_RATES, FFMPEG_CODECS, FORWARD_ONLY

log = logging.getLogger(__name__)

# aiortc offers H.264 as 42001f/42e01f only; other profiles may carry B-frames.
H264_PROFILES = ("Baseline", "Constrained Baseline")
READ_AHEAD = 0.5  # seconds the reader thread works ahead of the wall clock
MAX_BACKLOG = 500  # items kept for a track nobody reads (its m= line was refused)


@dataclass
class MediaInfo:
    codecs: dict[str, str]  # kind -> FFmpeg codec name of the first stream of that kind
    as_is: dict[str, str]  # kind -> codec name aiortc can send without re-encoding


def _open(path: str) -> Any:
    try:
        return av.open(path)
    except (av.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def _streams(container: Any) -> dict[str, Any]:
    found = {}
    for kind in ("video", "audio"):
        stream = next((s for s in container.streams if s.type == kind), None)
        if stream is not None:
            found[kind] = stream
    return found


def inspect(path: str) -> MediaInfo:
    """What `path` holds and which of its streams can be sent as they are."""
    with _open(path) as container:
        streams = _streams(container)
        if not streams:
            raise ValueError(f"{path} has no audio or video stream")
        codecs, as_is = {}, {}
        for kind, stream in streams.items():
            name = stream.codec_context.name
            codecs[kind] = name
            sendable = name in FFMPEG_CODECS and f"{kind}/{FFMPEG_CODECS[name]}".lower() not in FORWARD_ONLY
            if sendable and (name != "h264" or stream.codec_context.profile in H264_PROFILES):
                as_is[kind] = FFMPEG_CODECS[name]
        return MediaInfo(codecs, as_is)


class FileTrack(MediaStreamTrack):
    """One stream of a FileSource; each item is released at its time in the file."""

    def __init__(self, source: FileSource, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._source = source
        self._items: deque[tuple[float, Any]] = deque()
        self._ready = asyncio.Event()

    def put(self, due: float, item: Any) -> None:
        if len(self._items) >= MAX_BACKLOG:
            self._items.popleft()
        self._items.append((due, item))
        self._ready.set()

    async def recv(self) -> Any:
        self._source.start()
        while not self._items:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        due, item = self._items.popleft()
        if item is None:
            self.stop()
            raise MediaStreamError
        delay = self._source.clock + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return item

    def stop(self) -> None:
        super().stop()
        self._ready.set()
        self._source.track_ended()


class FileSource:
    """Plays `path` in real time from the first `recv()`; kinds in `as_is` are not decoded.

    A reader thread demuxes (and decodes what must be re-encoded) up to
    READ_AHEAD seconds ahead. With `loop`, timestamps keep increasing across
    repetitions, as RTP requires. `ended` is set once every track has ended.
    """

    def __init__(self, path: str, as_is: Collection[str] = (), loop: bool = False) -> None:
        self.path = path
        self.loop = loop
        self.info = inspect(path)
        unknown = set(as_is) - set(self.info.as_is)
        if unknown:
            raise ValueError(f"{path}: cannot send {', '.join(sorted(unknown))} without re-encoding")
        self.as_is = set(as_is)
        self.tracks = {kind: FileTrack(self, kind) for kind in self.info.codecs}
        self.ended = asyncio.Event()
        self.error: str | None = None
        self.loops = 0
        self.clock = 0.0  # time.monotonic() at which the file's time 0 plays
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._aloop = asyncio.get_running_loop()
        self.clock = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"file-source {self.path}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._quit.set()
        for track in self.tracks.values():
            track.stop()

    def track_ended(self) -> None:
        if all(t.readyState == "ended" for t in self.tracks.values()):
            self._quit.set()
            self.ended.set()

    def _post(self, kind: str, due: float, item: Any) -> None:
        assert self._aloop is not None
        try:
            self._aloop.call_soon_threadsafe(self.tracks[kind].put, due, item)
        except RuntimeError:  # the event loop is gone
            self._quit.set()

    def _run(self) -> None:
        try:
            self._play()
        except Exception as exc:
            self.error = f"{self.path}: {exc}"
            log.warning("reading %s failed: %s", self.path, exc)
        finally:
            for kind in self.tracks:
                self._post(kind, 0.0, None)

    def _play(self) -> None:
        with _open(self.path) as container:
            streams = _streams(container)
            origin = container.start_time / 1_000_000 if container.start_time else 0.0
            annexb = None
            video = streams.get("video")
            if video is not None and "video" in self.as_is and video.codec_context.name == "h264" \
                    and (video.codec_context.extradata or b"")[:1] == b"\x01":
                annexb = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", video)
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000, frame_size=960)
            offset = end = 0.0
            samples = 0
            while True:
                for packet in container.demux(*streams.values()):
                    if self._quit.is_set():
                        return
                    kind = packet.stream.type
                    start = packet.pts if packet.pts is not None else packet.dts
                    if start is None:
                        if kind not in self.as_is:  # the flush packet at the end: drain the decoder
                            samples = self._decoded(kind, packet, offset - origin, resampler, samples)
                        continue
                    t = float(start * packet.time_base) - origin
                    end = max(end, t + float((packet.duration or 0) * packet.time_base))
                    if self._quit.wait(max(0.0, self.clock + offset + t - READ_AHEAD - time.monotonic())):
                        return
                    if kind in self.as_is:
                        for out in annexb.filter(packet) if annexb and kind == "video" else [packet]:
                            self._post(kind, offset + t, self._packet(kind, bytes(out), offset + t))
                    else:
                        samples = self._decoded(kind, packet, offset - origin, resampler, samples)
                if not self.loop or end <= 0:
                    return
                self.loops += 1
                offset += end
                container.seek(0)
                for kind, stream in streams.items():
                    if kind not in self.as_is:
                        stream.codec_context.flush_buffers()

    @staticmethod
    def _packet(kind: str, data: bytes, due: float) -> av.Packet:
        clock = CLOCK_RATES[kind]
        packet = av.Packet(data)
        packet.pts = packet.dts = round(due * clock)
        packet.time_base = Fraction(1, clock)
        return packet

    def _decoded(self, kind: str, packet: Any, shift: float, resampler: Any, samples: int) -> int:
        """Decode `packet`, post its frames with continuous timestamps; returns the audio sample count."""
        for frame in packet.decode():
            if frame.pts is None:
                continue
            due = float(frame.pts * frame.time_base) + shift
            if kind == "video":
                frame.pts = round(due * CLOCK_RATES["video"])
                frame.time_base = Fraction(1, CLOCK_RATES["video"])
                self._post(kind, due, frame)
                continue
            for chunk in resampler.resample(frame):
                chunk.pts = samples
                chunk.time_base = Fraction(1, CLOCK_RATES["audio"])
                samples += chunk.samples
                self._post(kind, due, chunk)
        return samples
