"""`relay watch`: subscribe to any WHEP endpoint, show how the stream is doing, record it.

The client takes encoded frames (nothing is decoded by aiortc), so
`--record` writes exactly what arrived. Video is also decoded here, once, to
learn the picture size and to read the test pattern's stamp, which gives the
end-to-end latency when the publisher runs on the same clock.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import deque
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError

from relay.cli.console import StatusLine, UsageError, add_client_options, client_options, interruptible, run, until
from relay.cli.publish import positive
from relay.client import ClientError, SessionError, WhepClient, start_when_live
from relay.client.capture import Capture
from relay.client.channels import CHAT_LABEL, Channel, chat_line
from relay.client.encoded import EncodedTrack
from relay.client.testpattern import latency_ms, read_stamp

WINDOW = 2.0  # seconds the live figures are averaged over
# A stamp's latency outside this range (ms) was made on another clock (a file,
# another machine): it says nothing about latency.
SAME_CLOCK_MS = (-1000.0, 60000.0)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "watch", help="watch a WHEP endpoint: live fps, bitrate, loss, latency; optionally record",
        description="Subscribe to a WHEP endpoint until --duration passes, the stream ends or Ctrl-C; "
        "the session is deleted on the way out.",
    )
    p.add_argument("url", help="WHEP endpoint, e.g. http://127.0.0.1:8080/whep/cam")
    p.add_argument("--record", metavar="FILE", type=Path,
                   help="write what arrives, without re-encoding: .webm for VP8, VP9, AV1 or audio only, "
                        ".mp4 for H.264")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds of media")
    p.add_argument("--video-only", action="store_true", help="do not ask for audio")
    p.add_argument("--wait", action="store_true",
                   help="while the stream is offline (409) or the server busy (503), retry until it is live; "
                   "when it ends, wait for it to come back (until --duration or Ctrl-C)")
    p.add_argument("--chat", action="store_true",
                   help="open the stream's chat (data channel 'chat') and print its messages, the history first")
    add_client_options(p)
    p.set_defaults(func=lambda args: run(watch, args))


class Figures:
    """What the status line and the summary show, from the frames of both tracks."""

    def __init__(self, clock_kind: str) -> None:
        self.clock_kind = clock_kind  # the kind whose first frame starts the clock (video starts on a keyframe)
        self.recent: deque[tuple[float, str, int]] = deque()  # (arrival, kind, bytes)
        self.latencies: deque[tuple[float, float]] = deque()  # (arrival, ms)
        self.all_latencies: list[float] = []
        self.frames = {"video": 0, "audio": 0}
        self.bytes = 0
        self.size: tuple[int, int] | None = None
        self.decode_errors = 0
        self.first: float | None = None

    def add(self, kind: str, nbytes: int) -> None:
        now = time.monotonic()
        if self.first is None and kind == self.clock_kind:
            self.first = now
        self.frames[kind] += 1
        self.bytes += nbytes
        self.recent.append((now, kind, nbytes))

    def add_latency(self, ms: float) -> None:
        self.latencies.append((time.monotonic(), ms))
        self.all_latencies.append(ms)

    def live(self) -> tuple[float, float, float | None]:
        """Video fps, kbps and median latency over the last WINDOW seconds."""
        horizon = time.monotonic() - WINDOW
        for items in (self.recent, self.latencies):
            while items and items[0][0] < horizon:
                items.popleft()
        span = min(WINDOW, time.monotonic() - (self.first or time.monotonic())) or 1.0
        fps = sum(1 for _, kind, _ in self.recent if kind == "video") / span
        kbps = sum(n for _, _, n in self.recent) * 8 / span / 1000
        latency = statistics.median(ms for _, ms in self.latencies) if self.latencies else None
        return fps, kbps, latency


class VideoProbe:
    """Decodes received video once, for its size and the test pattern's stamp."""

    def __init__(self, codec: str) -> None:
        decoder = av.CodecContext.create(codec.lower(), "r")
        assert isinstance(decoder, av.VideoCodecContext)  # only video tracks are probed
        self._decoder = decoder

    def frames(self, data: bytes) -> list[av.VideoFrame]:
        try:
            return list(self._decoder.decode(av.Packet(data)))
        except av.FFmpegError:
            return []


async def loss_percent(client: WhepClient) -> float:
    """Lost packets over expected, from the standard receiver stats."""
    if client.pc is None:
        return 0.0
    report = await client.pc.getStats()
    inbound = [s for s in report.values() if s.type == "inbound-rtp"]
    received = sum(s.packetsReceived for s in inbound)
    lost = sum(max(0, s.packetsLost) for s in inbound)
    return 100.0 * lost / (received + lost) if received + lost else 0.0


async def _consume(track: EncodedTrack, figures: Figures, capture: Capture | None) -> None:
    probe: VideoProbe | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        figures.add(track.kind, len(frame.data))
        if capture is not None:
            capture.push(track.kind, frame, track.clock_rate)
        if track.kind != "video" or track.codec is None:
            continue
        probe = probe or VideoProbe(track.codec)
        decoded = probe.frames(frame.data)
        if not decoded:
            figures.decode_errors += frame.keyframe
        for picture in decoded:
            figures.size = (picture.width, picture.height)
            stamp = read_stamp(picture)
            latency = latency_ms(stamp) if stamp is not None else None
            if latency is not None and SAME_CLOCK_MS[0] < latency < SAME_CLOCK_MS[1]:
                figures.add_latency(latency)


async def _print_chat(channel: Channel, status: StatusLine) -> None:
    """Chat lines on stdout as they come (the status line, on stderr, is redrawn after each)."""
    async for message in channel:
        line = chat_line(message)
        if line is not None:
            status.done()
            print(line, flush=True)


def _status(elapsed: float, figures: Figures, fps: float, kbps: float, latency: float | None,
            loss: float, capture: Capture | None) -> str:
    size = f"{figures.size[0]}x{figures.size[1]}" if figures.size else "?x?"
    parts = [f"watch {elapsed:6.1f} s", size, f"{fps:5.1f} fps", f"{kbps:6.0f} kbps", f"loss {loss:4.1f}%",
             f"latency {latency:4.0f} ms" if latency is not None else "latency    - ms"]
    if capture is not None:
        parts.append(f"rec {capture.bytes / 1e6:.1f} MB" if capture.started else "rec waiting for a keyframe")
    return "  ".join(parts)


async def watch(args: argparse.Namespace, stop: asyncio.Event) -> int:
    if args.record is not None and args.record.suffix.lower() not in (".webm", ".mp4"):
        raise UsageError(f"record to a .webm (VP8, VP9, AV1, audio only) or .mp4 (H.264) file, not {args.record.name}")
    if args.record is not None and not args.record.parent.is_dir():
        raise UsageError(f"{args.record.parent} is not a directory")
    kinds = ("video",) if args.video_only else ("video", "audio")
    status = StatusLine()
    capture: Capture | None = None
    figures: Figures | None = None
    ended_by, loss = "stop", 0.0
    try:
        while True:
            deadline = None if args.wait else time.monotonic()
            if args.wait and args.duration and figures is not None and figures.first is not None:
                deadline = figures.first + args.duration  # waiting for a comeback counts too
            try:
                client = await interruptible(stop, start_when_live(
                    lambda: WhepClient(args.url, kinds=kinds, encoded=True,
                                       data_channels=[CHAT_LABEL] if args.chat else [], **client_options(args)),
                    deadline=deadline,
                    on_retry=lambda exc: status.show(f"waiting for {args.url}: {exc}"),
                ))
            except SessionError:
                if figures is None or deadline is None or time.monotonic() < deadline:
                    raise
                ended_by = "duration"  # the stream did not come back in time
                break
            try:
                if figures is None:
                    figures = Figures("video" if "video" in client.encoded else "audio")
                if args.record is not None and capture is None:
                    try:
                        capture = Capture(args.record, client.codecs.get("video"), "audio" in client.encoded)
                    except ValueError as exc:
                        raise UsageError(str(exc)) from None
                elif capture is not None:
                    if client.codecs.get("video") != capture.video_codec:
                        raise ClientError(f"the stream came back as {client.codecs.get('video')} video; "
                                          f"{capture.path} holds {capture.video_codec}")
                    capture.resume()
                ended_by = await _session(args, client, figures, capture, status, stop)
                loss = await loss_percent(client)
            finally:
                status.done()
                await client.close()
            if ended_by != "the stream ended" or not args.wait:
                break
            status.say("relay watch: the stream ended; waiting for it to come back (--wait)")
    finally:
        status.done()
        if capture is not None:
            await asyncio.to_thread(capture.close)
    if ended_by == "the stream ended":
        status.say(f"relay watch: {ended_by}")
    print(_summary(args.url, client, figures, loss, capture), flush=True)
    if capture is not None and capture.error:
        raise ClientError(capture.error)
    return 0


async def _session(args: argparse.Namespace, client: WhepClient, figures: Figures, capture: Capture | None,
                   status: StatusLine, stop: asyncio.Event) -> str:
    """Show one WHEP session's media until the stop, the duration, or the stream's end; say which."""
    consumers: list[asyncio.Task[None]] = []
    try:
        await interruptible(stop, client.wait_connected())
        status.say(f"watching {args.url}: " + ", ".join(f"{k} {c}" for k, c in client.codecs.items()))
        consumers = [asyncio.create_task(_consume(t, figures, capture)) for t in client.encoded.values()]
        media_ended = asyncio.Event()
        asyncio.gather(*consumers, return_exceptions=True).add_done_callback(lambda _: media_ended.set())
        if args.chat:
            consumers.append(asyncio.create_task(_print_chat(client.channels[CHAT_LABEL], status)))
        connected_at = time.monotonic()
        while True:
            remaining = 0.5
            if args.duration and figures.first:
                remaining = args.duration - (time.monotonic() - figures.first)
            await until(stop, client.ended, media_ended, timeout=max(0.0, min(0.5, remaining)))
            now = time.monotonic()
            elapsed = now - figures.first if figures.first else 0.0
            fps, kbps, latency = figures.live()
            status.show(_status(elapsed, figures, fps, kbps, latency, await loss_percent(client), capture))
            if stop.is_set():
                return "stop"
            if media_ended.is_set() or client.ended.is_set():
                if client.pc is not None and client.pc.connectionState == "failed" and not args.wait:
                    raise ClientError(f"the media connection to {args.url} failed")
                return "the stream ended"
            if figures.first is None and now - connected_at > args.timeout:
                raise ClientError(f"no media arrived from {args.url} within {args.timeout:g} s")
            if args.duration and elapsed >= args.duration:
                return "duration"
    finally:
        for task in consumers:
            task.cancel()


def _summary(url: str, client: WhepClient, figures: Figures, loss: float, capture: Capture | None) -> str:
    seconds = time.monotonic() - figures.first if figures.first else 0.0
    media = []
    if "video" in client.codecs:
        size = f" {figures.size[0]}x{figures.size[1]}" if figures.size else ""
        fps = figures.frames["video"] / max(seconds, 1e-3)
        media.append(f"video {client.codecs['video']}{size} {fps:.1f} fps")
    if "audio" in client.codecs:
        media.append(f"audio {client.codecs['audio']} {figures.frames['audio']} frames")
    media.append(f"{figures.bytes / 1e6:.2f} MB, loss {loss:.1f}%")
    if figures.all_latencies:
        media.append(f"latency p50 {statistics.median(figures.all_latencies):.0f} ms")
    text = f"watched {seconds:.1f} s of {url}: " + ", ".join(media)
    if capture is not None:
        text += (f"; recorded {capture.duration:.1f} s to {capture.path}" if capture.started
                 else f"; nothing recorded to {capture.path} (no keyframe arrived)")
    return text
