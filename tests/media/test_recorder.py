"""The recorder and its writer thread, fed stand-in frames: no server, no network."""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import pytest

from relay.media import writer
from relay.media.assembler import EncodedFrame, VideoAssembler
from relay.media.fanout import FanOut, MediaFrame
from relay.media.recorder import Recorder
from relay.media.writer import FileSpec, MediaWriter, OutputFile, Queued
from relay.sdp import FFMPEG_CODECS

from ..conftest import files, poll_until
from .samples import av1_stream, encode_av1, encode_vp9, vp9_stream


def vp8_frame(n: int, keyframe: bool) -> MediaFrame:
    """A stand-in VP8 frame: a real keyframe header (320x240), filler after it."""
    data = (b"\x00\x00\x00\x9d\x01\x2a" + (320).to_bytes(2, "little") + (240).to_bytes(2, "little")
            if keyframe else b"\x01") + bytes(200)
    packet = av.Packet(data)
    packet.pts = packet.dts = n * 3000
    packet.time_base = Fraction(1, 90000)
    return MediaFrame(packet, keyframe, len(data))


async def test_a_full_writer_queue_drops_to_the_next_keyframe(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    entered, gate = threading.Event(), threading.Event()
    real_open = writer.open_container
    monkeypatch.setattr(writer, "open_container", lambda spec: (entered.set(), gate.wait(10), real_open(spec))[2])
    requests: list[str] = []
    stream = SimpleNamespace(name="cam", tracks={"video": SimpleNamespace(codec="VP8")},
                             fanouts={"video": FanOut("video"), "audio": FanOut("audio")},
                             request_keyframe=requests.append)
    recorder = Recorder(stream, tmp_path)  # type: ignore[arg-type]
    recorder.start()
    stream.fanouts["video"].push(vp8_frame(0, True))
    assert await asyncio.to_thread(entered.wait, 10)
    for n in range(1, writer.MAX_QUEUE + 10):  # the disk is stuck: the queue fills up
        stream.fanouts["video"].push(vp8_frame(n, False))
    assert recorder.overflows == 1 and recorder.waiting_keyframe
    assert requests == ["recorder queue overflow"]
    assert stream.fanouts["video"].any_waiting(), "the stream's requester must keep asking"
    gate.set()
    await poll_until(lambda: not recorder.backlog)
    n = writer.MAX_QUEUE + 10
    stream.fanouts["video"].push(vp8_frame(n, False))  # still waiting: dropped
    for k in range(1, 4):
        stream.fanouts["video"].push(vp8_frame(n + k, k == 1))
    assert not recorder.waiting_keyframe and recorder.overflows == 1
    recorder.stop()
    assert await asyncio.to_thread(recorder.join, 10)
    (path,) = files(tmp_path, "cam")
    with av.open(str(path)) as container:
        packets = [p for p in container.demux() if p.size]
    written = writer.MAX_QUEUE  # the writer took the file's opening off the queue, then stuck
    assert len(packets) == written + 3
    assert [p.is_keyframe for p in packets[written - 1:written + 2]] == [False, True, False]
    assert packets[0].is_keyframe


def test_the_writer_anchors_on_arrival_keeps_tracks_monotonic_and_survives_a_bad_file(tmp_path: Path) -> None:
    tb = Fraction(1, 90000)
    media = MediaWriter("test-writer")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    media.open(OutputFile(FileSpec(blocked / "lost.webm", "webm", "VP8", (320, 240), False), 0.0))
    assert media.write("video", vp8_frame(0, True).packet, 0, tb, True, 0.0) is Queued.YES
    good = OutputFile(FileSpec(tmp_path / "good.webm", "webm", "VP8", (320, 240), False), 100.0)
    media.open(good)
    rtp = 7_000_000  # any RTP start: the first frame, 0.5 s after the file's start, is anchored at 0.5 s
    for n in range(30):
        frame = vp8_frame(n, n == 0)
        assert media.write("video", frame.packet, rtp + n * 3000, tb, n == 0, 100.5 + n / 30) is Queued.YES
    assert media.write("video", vp8_frame(30, False).packet, rtp + 29 * 3000, tb, False, 101.5) is Queued.STALE
    media.stop()
    assert media.join(10)
    assert media.write_errors == 1 and media.error is not None and "lost.webm" in media.error
    assert abs(good.duration - (0.5 + 29 / 30)) < 1e-3
    with av.open(str(good.path)) as container:
        assert [s.codec_context.name for s in container.streams] == ["vp8"]
        packets = [p for p in container.demux() if p.size]
    assert len(packets) == 30 and packets[0].is_keyframe
    times = [float(p.pts * p.time_base) for p in packets]
    assert abs(times[0] - 0.5) < 0.002 and abs(times[-1] - (0.5 + 29 / 30)) < 0.002, times
    assert media.bytes_written == sum(p.size for p in packets)


PACKETIZED = {
    "VP9": lambda: vp9_stream(encode_vp9(160, 120, 30), (160, 120), flexible=True),
    "AV1": lambda: av1_stream(encode_av1(160, 120, 30)),
}


@pytest.mark.parametrize("codec", ["VP9", "AV1"])
async def test_rtp_packets_of_a_forwarded_only_codec_are_recorded_to_webm(tmp_path: Path, codec: str) -> None:
    """Packets as a browser sends them, assembled as the tap does, make a WebM that decodes at its size and length."""
    stream = SimpleNamespace(name="cam", tracks={"video": SimpleNamespace(codec=codec)},
                             fanouts={"video": FanOut("video"), "audio": FanOut("audio")},
                             request_keyframe=lambda reason: None)
    recorder = Recorder(stream, tmp_path)  # type: ignore[arg-type]
    recorder.start()
    tb = Fraction(1, 90000)

    def push(frame: EncodedFrame) -> None:
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = frame.timestamp
        packet.time_base = tb
        stream.fanouts["video"].push(MediaFrame(packet, frame.keyframe, len(frame.data)))

    assembler = VideoAssembler(codec, push, lambda: None)
    for packet in PACKETIZED[codec]():
        assembler.add(packet)
    recorder.stop()
    assert await asyncio.to_thread(recorder.join, 10)
    (path,) = files(tmp_path, "cam")
    assert path.suffix == ".webm"
    with av.open(str(path)) as container:
        (video,) = container.streams
        assert FFMPEG_CODECS[video.codec_context.name] == codec
        assert container.duration is not None and abs(container.duration / 1e6 - 30 / 30) < 0.05
        decoded = list(container.decode(video))
    assert len(decoded) == 30 and (decoded[0].width, decoded[0].height) == (160, 120)
