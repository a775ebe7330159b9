"""`relay publish`: send a media file or the test pattern to any WHIP endpoint.

A file whose codecs aiortc can send as they are (VP8, H.264 constrained
baseline, Opus) is offered in exactly those codecs and forwarded without
decoding; if the server refuses them, or with `--transcode`, it is decoded
and encoded once by aiortc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from relay.cli.console import (
    StatusLine,
    UsageError,
    add_client_options,
    client_options,
    interruptible,
    run,
    until,
)
from relay.client import ClientError, SessionError, WhipClient
from relay.client.filesource import FileSource, inspect
from relay.client.testpattern import TestPatternTrack, ToneTrack

# Statuses with which servers refuse an offer they cannot take (codec included).
REFUSED_OFFER = (400, 406, 415, 422, 488)
_BITRATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|b)?")


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not match or int(match[1]) % 2 or int(match[2]) % 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not an even WIDTHxHEIGHT such as 640x480")
    return int(match[1]), int(match[2])


def parse_bitrate(text: str) -> int:
    match = _BITRATE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a bitrate such as 800k, 1.5M or 600000")
    return round(float(match[1]) * {"": 1, "k": 1e3, "m": 1e6}[match[2].lower()])


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "publish", help="publish a media file or the test pattern to a WHIP endpoint",
        description="Publish to a WHIP endpoint until the file ends, --duration passes or Ctrl-C; "
        "the session is deleted on the way out.",
    )
    p.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/cam")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", metavar="PATH", help="media file to send (sent as it is when possible)")
    source.add_argument("--test-pattern", action="store_true",
                        help="stamped moving test pattern and a 440 Hz tone (see relay.testpattern)")
    p.add_argument("--loop", action="store_true", help="repeat the file endlessly")
    p.add_argument("--transcode", action="store_true",
                   help="re-encode the file even when the server takes its codecs")
    p.add_argument("--size", type=parse_size, help="test pattern size (default 640x480)")
    p.add_argument("--fps", type=positive, help="test pattern frame rate (default 30)")
    p.add_argument("--no-audio", action="store_true", help="test pattern without the tone")
    p.add_argument("--codec", type=str.upper, choices=["VP8", "H264"],
                   help="video codec to offer when encoding (default: let the server choose)")
    p.add_argument("--bitrate", type=parse_bitrate, help="video bitrate ceiling when encoding, e.g. 1.5M")
    p.add_argument("--gop", type=positive, metavar="SECONDS", help="keyframe interval when encoding")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds of media")
    p.add_argument("--data", metavar="FILE",
                   help="send each line of FILE ('-': standard input, as lines come) as a text message on the "
                   "data channel --data-label, to every viewer that opened one")
    p.add_argument("--data-label", default="data", metavar="LABEL",
                   help="label of the data channel --data sends on (default: data)")
    add_client_options(p)
    p.set_defaults(func=lambda args: run(publish, args))


def _check(args: argparse.Namespace) -> None:
    if args.data and args.data != "-" and not os.path.isfile(args.data):
        raise UsageError(f"--data {args.data}: no such file")
    if args.file and (args.size or args.fps or args.no_audio):
        raise UsageError("--size, --fps and --no-audio apply to --test-pattern")
    if args.test_pattern and (args.loop or args.transcode):
        raise UsageError("--loop and --transcode apply to --file")


async def bytes_sent(pc: RTCPeerConnection | None) -> int:
    """RTP payload bytes sent so far, from the standard stats."""
    if pc is None:
        return 0
    report = await pc.getStats()
    return sum(s.bytesSent for s in report.values() if s.type == "outbound-rtp")


def _client(args: argparse.Namespace, tracks: list[MediaStreamTrack], as_is: dict[str, str]) -> WhipClient:
    return WhipClient(
        args.url, tracks, video_codec=as_is.get("video", args.codec), audio_codec=as_is.get("audio"),
        packets=as_is.keys(), video_bitrate=args.bitrate, keyframe_interval=args.gop,
        data_channels=[args.data_label] if args.data else [], **client_options(args),
    )


DATA_BACKLOG = 64 * 1024  # bytes queued on the data channel before reading the next line


async def send_lines(client: WhipClient, label: str, path: str, sent: list[int]) -> None:
    """Each line of `path` (standard input for '-', as lines come) as one message, as fast as the channel takes them."""
    lines = await _line_reader(path)
    while line := await lines():
        while client.channels[label].buffered > DATA_BACKLOG:
            await asyncio.sleep(0.01)
        client.send(label, line.decode("utf-8", "replace").rstrip("\r\n"))
        sent[0] += 1


async def _line_reader(path: str) -> Callable[[], Awaitable[bytes]]:
    """An awaitable readline: a pipe or terminal without a thread (Ctrl-C must not wait for a line), a file at once."""
    if path == "-" and not stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return reader.readline
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    lines = iter(data.splitlines(keepends=True))

    async def next_line() -> bytes:
        return next(lines, b"")

    return next_line


async def _start_file(args: argparse.Namespace, stop: asyncio.Event,
                      status: StatusLine) -> tuple[WhipClient, FileSource, str]:
    try:
        info = inspect(args.file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    as_is = {} if args.transcode else dict(info.as_is)
    while True:
        source = FileSource(args.file, as_is.keys(), loop=args.loop)
        client = _client(args, list(source.tracks.values()), as_is)
        try:
            await interruptible(stop, client.start())
        except SessionError as exc:
            source.stop()
            if exc.status not in REFUSED_OFFER or not as_is:
                raise
            status.say(f"the server refused {' and '.join(as_is.values())} as they are "
                       f"({exc}); re-encoding")
            as_is = {}
            continue
        parts = [f"{kind} {info.codecs[kind]} " + ("as is" if kind in as_is else
                 f"re-encoded to {client.codecs.get(kind, '?')}") for kind in info.codecs]
        return client, source, ", ".join(parts)


async def publish(args: argparse.Namespace, stop: asyncio.Event) -> int:
    _check(args)
    status = StatusLine()
    source: FileSource | None = None
    if args.file:
        client, source, what = await _start_file(args, stop, status)
    else:
        width, height = args.size or (640, 480)
        tracks: list[MediaStreamTrack] = [TestPatternTrack(width, height, args.fps or 30)]
        if not args.no_audio:
            tracks.append(ToneTrack())
        client = _client(args, tracks, {})
        await interruptible(stop, client.start())
        what = f"test pattern {width}x{height} at {args.fps or 30:g} fps as {client.codecs.get('video', '?')}"
    try:
        await interruptible(stop, client.wait_connected())
        status.say(f"publishing {what} to {args.url}")
        lines = [0]
        if args.data:
            client.spawn(send_lines(client, args.data_label, args.data, lines))
        started = time.monotonic()
        last = (started, 0)
        file_ended = source.ended if source else asyncio.Event()
        while True:
            elapsed = time.monotonic() - started
            remaining = args.duration - elapsed if args.duration else None
            await until(stop, client.ended, file_ended, timeout=max(0.0, min(0.5, remaining or 0.5)))
            sent = await bytes_sent(client.pc)
            now = time.monotonic()
            kbps = (sent - last[1]) * 8 / max(now - last[0], 1e-3) / 1000
            last = (now, sent)
            loops = f"  loop {source.loops + 1}" if source and source.loop else ""
            data = f"  data {lines[0]} lines" if args.data else ""
            status.show(f"publish {now - started:6.1f} s  {sent / 1e6:7.2f} MB  {kbps:6.0f} kbps{loops}{data}")
            if stop.is_set() or file_ended.is_set() or (args.duration and now - started >= args.duration):
                break
            if client.ended.is_set():
                raise ClientError(f"the media connection to {args.url} was lost")
        status.done()
        if source and source.error:
            raise ClientError(source.error)
        data = f"; {lines[0]} lines on data channel {args.data_label!r}" if args.data else ""
        print(f"published {now - started:.1f} s to {args.url}: {sent / 1e6:.2f} MB, "
              f"{sent * 8 / max(now - started, 1e-3) / 1000:.0f} kbps{data}", file=sys.stdout, flush=True)
        return 0
    finally:
        status.done()
        await client.close()
        if source:
            source.stop()
