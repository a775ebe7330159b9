"""Tests for relay.testpattern, including real VP8/H.264 round trips."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from relay.client.testpattern import (
    Stamp,
    TestPatternTrack,
    ToneTrack,
    expected_luma,
    latency_ms,
    make_frame,
    psnr,
    read_stamp,
    wall_ms,
)

SIZES = [(160, 120), (200, 150), (320, 240), (640, 480), (1280, 720), (1920, 1080)]


def _uniform(width: int, height: int, luma: int) -> av.VideoFrame:
    buf = np.full((height * 3 // 2, width), 128, np.uint8)
    buf[:height] = luma
    return av.VideoFrame.from_ndarray(buf, format="yuv420p")


def _encoder(name: str, width: int, height: int, bitrate: int) -> av.CodecContext:
    """An encoder configured like aiortc's own VP8 / H.264 encoders."""
    ctx = av.CodecContext.create(name, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.bit_rate = width, height, "yuv420p", bitrate
    ctx.framerate, ctx.time_base = Fraction(30), Fraction(1, 30)
    if name == "libvpx":
        ctx.gop_size, ctx.qmin, ctx.qmax = 3000, 2, 56
        ctx.options = {
            "bufsize": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "noise-sensitivity": "4",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
    else:
        ctx.options = {"level": "31", "tune": "zerolatency"}
        ctx.profile = "Baseline"
    return ctx


def _round_trip(
    encoder: str, decoder: str, width: int, height: int, bitrate: int, sent: list[int]
) -> list[av.VideoFrame]:
    enc = _encoder(encoder, width, height, bitrate)
    dec = av.CodecContext.create(decoder, "r")
    decoded: list[av.VideoFrame] = []
    for i, sent_ms in enumerate(sent):
        frame = make_frame(i, width, height, sent_ms)
        frame.pts, frame.time_base = i, Fraction(1, 30)
        for packet in enc.encode(frame):
            decoded += dec.decode(packet)
    for packet in enc.encode(None):
        decoded += dec.decode(packet)
    decoded += dec.decode(None)
    return decoded


@pytest.mark.parametrize("width,height", SIZES)
def test_lossless_stamp_and_picture(width: int, height: int) -> None:
    for counter, sent_ms in [(0, 0), (1, 123456), (77, 2**32 - 1), (2**32 - 1, 42)]:
        frame = make_frame(counter, width, height, sent_ms)
        assert (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
        assert read_stamp(frame) == Stamp(counter, sent_ms)
        assert psnr(frame, counter) == float("inf")
    # Counter and send time wrap modulo 2**32 in the stamp.
    assert read_stamp(make_frame(2**32 + 5, width, height, 2**32 + 9)) == Stamp(5, 9)


def test_picture_is_deterministic_moving_and_coloured() -> None:
    w, h = 320, 240
    a = make_frame(10, w, h, 1).to_ndarray()
    b = make_frame(10, w, h, 999_999).to_ndarray()
    c = make_frame(11, w, h, 1).to_ndarray()
    # Only the stamp differs between send times; the picture depends on counter only.
    assert not np.array_equal(a[:96, :272], b[:96, :272])
    assert np.array_equal(a[96:], b[96:]) and np.array_equal(a[:h, 272:], b[:h, 272:])
    assert np.array_equal(expected_luma(10, w, h)[96:], a[96:h])
    moved = np.mean(a[96:h] != c[96:h])
    assert moved > 0.8, f"only {moved:.0%} of pixels changed between frames"
    u, v = a[h : h + h // 4].ravel(), a[h + h // 4 :].ravel()
    assert u.std() > 15 and v.std() > 15, "chroma is grey"


def test_psnr_tells_frames_apart() -> None:
    frame = make_frame(5, 320, 240, 0)
    assert psnr(frame, 5) == float("inf")
    for other in (4, 6, 7, 100):
        assert psnr(frame, other) < 16
    assert psnr(_uniform(320, 240, 16), 5) < 10


@pytest.mark.parametrize("width,height", [(160, 120), (320, 240), (1280, 720)])
def test_blank_and_foreign_frames_have_no_stamp(width: int, height: int) -> None:
    for luma in (0, 16, 128, 235, 255):
        assert read_stamp(_uniform(width, height, luma)) is None
    rgb_black = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")
    assert read_stamp(rgb_black) is None
    unstamped = np.full((height * 3 // 2, width), 128, np.uint8)
    unstamped[:height] = expected_luma(3, width, height)
    assert read_stamp(av.VideoFrame.from_ndarray(unstamped, format="yuv420p")) is None


def test_corrupted_stamp_is_rejected() -> None:
    buf = make_frame(1234, 320, 240, 5678).to_ndarray()
    buf[4:12, 4:12] = 251 - buf[4:12, 4:12]  # flip the first cell
    assert read_stamp(av.VideoFrame.from_ndarray(buf, format="yuv420p")) is None


def test_unusable_sizes() -> None:
    with pytest.raises(ValueError):
        make_frame(0, 321, 240, 0)
    with pytest.raises(ValueError):
        make_frame(0, 128, 96, 0)
    assert read_stamp(_uniform(64, 48, 16)) is None


def test_read_stamp_accepts_other_pixel_formats() -> None:
    frame = make_frame(42, 640, 480, 987654).reformat(format="rgb24")
    assert read_stamp(frame) == Stamp(42, 987654)


def test_latency_ms_handles_wrap() -> None:
    assert latency_ms(Stamp(0, 1000), now_ms=1250) == 250.0
    assert latency_ms(Stamp(0, 2**32 - 10), now_ms=5) == 15.0
    assert latency_ms(Stamp(0, 20), now_ms=10) == -10.0
    assert 0 <= latency_ms(Stamp(0, wall_ms())) < 50


@pytest.mark.parametrize(
    "encoder,decoder,width,height,bitrate,min_psnr",
    [
        ("libvpx", "vp8", 160, 120, 150_000, 25),
        ("libvpx", "vp8", 320, 240, 300_000, 25),
        ("libvpx", "vp8", 640, 480, 1_000_000, 25),
        ("libx264", "h264", 320, 240, 300_000, 22),
        ("libx264", "h264", 640, 480, 1_000_000, 25),
    ],
)
def test_codec_round_trip(
    encoder: str, decoder: str, width: int, height: int, bitrate: int, min_psnr: float
) -> None:
    count = 45
    sent = [(2**32 - 700 + 33 * i) % 2**32 for i in range(count)]  # crosses the wrap
    decoded = _round_trip(encoder, decoder, width, height, bitrate, sent)
    assert len(decoded) == count
    first = read_stamp(decoded[0])
    assert first in (None, Stamp(0, sent[0]))
    for i, frame in enumerate(decoded[1:], start=1):
        assert read_stamp(frame) == Stamp(i, sent[i]), f"frame {i}"
        right = psnr(frame, i)
        assert right > min_psnr, f"frame {i}: {right:.1f} dB"
        assert psnr(frame, i + 1) < right - 8
        assert psnr(frame, i - 1) < right - 8


async def test_pattern_track_paces_and_stamps() -> None:
    track = TestPatternTrack(320, 240, fps=30)
    assert track.kind == "video"
    start = time.monotonic()
    frames = [await track.recv() for _ in range(30)]
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed <= 1.5, elapsed
    assert track.frames_sent == 30
    stamps = [read_stamp(f) for f in frames]
    assert [s.counter for s in stamps if s] == list(range(30))
    assert [f.pts for f in frames] == [3000 * i for i in range(30)]
    assert all(f.time_base == Fraction(1, 90000) for f in frames)
    sent = [s.sent_ms for s in stamps if s]
    gaps = np.diff(sent)
    assert 25 <= float(np.median(gaps)) <= 42, gaps
    assert 0 <= latency_ms(stamps[-1]) < 100
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


@pytest.mark.asyncio
async def test_pattern_track_does_not_drift() -> None:
    track = TestPatternTrack(160, 120, fps=50)
    start = time.monotonic()
    for _ in range(10):
        await track.recv()
        await asyncio.sleep(0.012)  # consumer work must not add up
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed <= 0.3, elapsed


@pytest.mark.asyncio
async def test_tone_track() -> None:
    track = ToneTrack()
    assert track.kind == "audio"
    start = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - start
    assert 0.14 <= elapsed <= 0.5, elapsed
    assert track.frames_sent == 10
    for i, frame in enumerate(frames):
        assert (frame.samples, frame.sample_rate, frame.format.name) == (960, 48000, "s16")
        assert frame.pts == 960 * i and frame.time_base == Fraction(1, 48000)
    signal = np.concatenate([f.to_ndarray().ravel() for f in frames]).astype(np.float64)
    assert np.abs(signal).max() > 5000
    spectrum = np.abs(np.fft.rfft(signal))
    peak_hz = np.argmax(spectrum) * 48000 / len(signal)
    assert abs(peak_hz - 440) <= 5, peak_hz
    # Phase is continuous across frame boundaries: no jumps bigger than one step.
    assert np.abs(np.diff(signal)).max() < 0.3 * 32767 * 2 * np.pi * 440 / 48000 + 2
