"""`relay probe`: publish the test pattern, join N viewers, measure what they get.

Every number comes from what the viewers decode: join time is the viewer's
POST to its first decoded frame, latency is read from the stamp in each
frame (publisher and viewers share this machine's clock), delivered fps and
lost frames from the stamp's counter, and a freeze is a gap between decoded
frames longer than max(3 frame intervals, 1 interval + 150 ms), the
definition of W3C webrtc-stats' freezeCount.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.contrib.media import blackhole_consume
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from relay.cli.console import (
    ClientOptions,
    Interrupted,
    StatusLine,
    add_client_options,
    client_options,
    interruptible,
    run,
    until,
)
from relay.cli.publish import bytes_sent, parse_bitrate, parse_size, positive
from relay.client import ClientError, WhepClient, WhipClient, start_when_live
from relay.client.testpattern import TestPatternTrack, ToneTrack, latency_ms, read_stamp


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "probe", help="publish the test pattern, join N viewers, report join time, latency, fps, freezes",
        description="Publish the stamped test pattern to URL_WHIP, join --viewers viewers at URL_WHEP, "
        "measure for --duration seconds and print a table (or JSON). Exits 1 if a viewer got no video.",
    )
    p.add_argument("whip", metavar="URL_WHIP", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/probe")
    p.add_argument("whep", metavar="URL_WHEP", help="WHEP endpoint of the same stream")
    p.add_argument("--viewers", type=int, default=3, help="viewers to join (default 3)")
    p.add_argument("--duration", type=positive, default=10.0, metavar="S",
                   help="seconds to measure after the viewers joined (default 10)")
    p.add_argument("--size", type=parse_size, default=(640, 360), help="test pattern size (default 640x360)")
    p.add_argument("--fps", type=positive, default=30.0, help="test pattern frame rate (default 30)")
    p.add_argument("--codec", type=str.upper, choices=["VP8", "H264"], help="video codec to offer")
    p.add_argument("--bitrate", type=parse_bitrate, help="video bitrate ceiling, e.g. 1M")
    p.add_argument("--gop", type=positive, metavar="SECONDS", help="keyframe interval")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    add_client_options(p)
    p.set_defaults(func=lambda args: run(probe, args))


@dataclass
class Viewer:
    """One measuring viewer: what it decoded and when."""

    url: str
    options: ClientOptions
    client: WhepClient | None = None
    posted: float | None = None
    first_frame: float | None = None
    arrivals: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    counters: set[int] = field(default_factory=set)
    error: str | None = None

    async def run(self, deadline: float) -> None:
        try:
            video = await self._join(deadline)
            while True:
                frame = await video.recv()
                assert isinstance(frame, av.VideoFrame)  # the viewer's WhepClient decodes
                now = time.monotonic()
                if self.first_frame is None:
                    self.first_frame = now
                self.arrivals.append(now)
                stamp = read_stamp(frame)
                if stamp is not None:
                    self.latencies.append(latency_ms(stamp))
                    self.counters.add(stamp.counter)
        except MediaStreamError:
            self.error = "the stream ended"
        except ClientError as exc:
            self.error = str(exc)
        except TimeoutError:
            self.error = "the answer brought no video track"

    def _new_client(self) -> WhepClient:
        self.client = WhepClient(self.url, **self.options)
        self.posted = self.posted or time.monotonic()  # join time counts from the first POST
        return self.client

    async def _join(self, deadline: float) -> MediaStreamTrack:
        """POST until the stream is live (409/503 are retried)."""
        await start_when_live(self._new_client, deadline, max_wait=0.5)
        assert self.client is not None
        if "audio" in self.client.tracks:  # aiortc decodes it anyway: unread frames would pile up
            self.client.spawn(blackhole_consume(self.client.tracks["audio"]))
        return await self.client.wait_track("video")

    def summary(self, fps: float, until_time: float) -> dict[str, Any]:
        join_ms = (self.first_frame - self.posted) * 1000 if self.first_frame and self.posted else None
        span = until_time - self.first_frame if self.first_frame else 0.0
        gaps = np.diff(self.arrivals) if len(self.arrivals) > 1 else np.array([])
        freeze = max(3 / fps, 1 / fps + 0.150)
        frozen = gaps[gaps > freeze]
        expected = max(self.counters) - min(self.counters) + 1 if self.counters else 0
        return {
            "join_ms": _round(join_ms),
            "frames": len(self.arrivals),
            "fps": round((len(self.arrivals) - 1) / span, 2) if span > 0 else 0.0,
            "latency_p50_ms": _round(_pct(self.latencies, 50)),
            "freezes": int(frozen.size),
            "freeze_s": round(float(frozen.sum()), 3),
            "frames_lost": expected - len(self.counters),
            "frames_unstamped": len(self.arrivals) - len(self.latencies),
            "error": self.error,
        }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def report(args: argparse.Namespace, viewers: list[Viewer], end: float, codec: str, kbps: float) -> dict[str, Any]:
    per_viewer = [v.summary(args.fps, end) for v in viewers]
    joins = [v["join_ms"] for v in per_viewer if v["join_ms"] is not None]
    latencies = [ms for v in viewers for ms in v.latencies]
    fps = [v["fps"] for v in per_viewer if v["frames"]]
    return {
        "whip": args.whip,
        "whep": args.whep,
        "viewers": len(viewers),
        "duration_s": args.duration,
        "video": {"codec": codec, "size": f"{args.size[0]}x{args.size[1]}", "fps": args.fps},
        "publisher_kbps": round(kbps),
        "join_ms": {"p50": _round(_pct(joins, 50)), "p95": _round(_pct(joins, 95)),
                    "max": _round(max(joins) if joins else None)},
        "latency_ms": {"p50": _round(_pct(latencies, 50)), "p95": _round(_pct(latencies, 95))},
        "fps": {"mean": round(float(np.mean(fps)), 2) if fps else 0.0, "min": min(fps) if fps else 0.0},
        "freezes": sum(v["freezes"] for v in per_viewer),
        "freeze_s": round(sum(v["freeze_s"] for v in per_viewer), 3),
        "frames_lost": sum(v["frames_lost"] for v in per_viewer),
        "viewers_without_video": sum(1 for v in per_viewer if not v["frames"]),
        "per_viewer": per_viewer,
    }


def table(result: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    video = result["video"]
    join, latency, fps = result["join_ms"], result["latency_ms"], result["fps"]
    lines = [
        f"probe {result['whip']} -> {result['whep']}",
        f"  {result['viewers']} viewers, {result['duration_s']:g} s, {video['size']} {video['codec']} "
        f"at {video['fps']:g} fps, publisher {result['publisher_kbps']} kbps",
        "",
        f"  {'':22}{'p50':>8}{'p95':>8}{'max':>8}",
        f"  {'join time (ms)':22}{ms(join['p50']):>8}{ms(join['p95']):>8}{ms(join['max']):>8}",
        f"  {'latency (ms)':22}{ms(latency['p50']):>8}{ms(latency['p95']):>8}",
        f"  {'delivered fps':22}{fps['mean']:>8.1f}   (min {fps['min']:.1f} of {video['fps']:g})",
        f"  {'freezes':22}{result['freezes']:>8}   ({result['freeze_s']:.2f} s frozen in all)",
        f"  {'frames lost':22}{result['frames_lost']:>8}",
    ]
    if result["viewers_without_video"]:
        lines.append(f"  {'viewers without video':22}{result['viewers_without_video']:>8}")
    return "\n".join(lines)


def _check_running(stop: asyncio.Event, publisher: WhipClient) -> None:
    if stop.is_set():
        raise Interrupted
    if publisher.ended.is_set():
        raise ClientError(f"the publisher's media connection to {publisher.url} was lost")


async def probe(args: argparse.Namespace, stop: asyncio.Event) -> int:
    if args.viewers < 1:
        raise ClientError("--viewers must be at least 1")
    status = StatusLine(interval=2.0)
    options = client_options(args)
    width, height = args.size
    publisher = WhipClient(args.whip, [TestPatternTrack(width, height, args.fps), ToneTrack()],
                           video_codec=args.codec, video_bitrate=args.bitrate, keyframe_interval=args.gop,
                           **options)
    viewers = [Viewer(args.whep, options) for _ in range(args.viewers)]
    tasks: list[asyncio.Task[None]] = []
    try:
        status.show(f"probe: publishing {width}x{height} to {args.whip}")
        await interruptible(stop, publisher.start())
        await interruptible(stop, publisher.wait_connected())
        status.show(f"probe: publisher connected, joining {args.viewers} viewers at {args.whep}")
        deadline = time.monotonic() + args.timeout
        tasks = [asyncio.create_task(v.run(deadline)) for v in viewers]
        while sum(1 for v in viewers if v.first_frame or v.error) < len(viewers) and time.monotonic() < deadline:
            await until(stop, publisher.ended, timeout=0.1)
            _check_running(stop, publisher)
            status.show(f"probe: {sum(1 for v in viewers if v.first_frame)}/{len(viewers)} viewers have video")
        sent_before, started = await bytes_sent(publisher.pc), time.monotonic()
        while (elapsed := time.monotonic() - started) < args.duration:
            await until(stop, publisher.ended, timeout=min(0.5, args.duration - elapsed))
            _check_running(stop, publisher)
            status.show(f"probe: measuring {elapsed:4.1f}/{args.duration:g} s, "
                        f"{sum(len(v.arrivals) for v in viewers)} frames decoded")
        end = time.monotonic()
        kbps = (await bytes_sent(publisher.pc) - sent_before) * 8 / (end - started) / 1000
    finally:
        status.done()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(v.client.close() for v in viewers if v.client), return_exceptions=True)
        await publisher.close()
    result = report(args, viewers, end, publisher.codecs.get("video", "?"), kbps)
    print(json.dumps(result, indent=2) if args.json else table(result), flush=True)
    failed = [v for v in viewers if not v.arrivals]
    if failed:
        reasons = sorted({v.error or "no frame decoded" for v in failed})
        print(f"relay probe: {len(failed)} of {len(viewers)} viewers got no video: {'; '.join(reasons)}",
              file=sys.stderr)
        return 1
    return 0
