"""Deterministic, self-describing test media, shared by tests, benchmarks and CLI.

Each video frame carries a stamp (counter, send time, CRC) drawn as large flat
luma cells that survive lossy codecs; the rest is a moving picture regenerated
from the counter alone, so a receiver can tell which frame it got, how late it
is and how faithfully it was decoded.
"""

from __future__ import annotations

import asyncio
import binascii
import math
import struct
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_CLOCK_RATE, AUDIO_SAMPLE_RATE, AUDIO_PTIME = 90000, 48000, 0.020
BLACK, WHITE, GUARD = 16, 235, 128
# 16 px cells: smaller ones get stale sub-blocks from aiortc's VP8 settings
# (denoiser + static-thresh) and break up in starved H.264.
CELL = 16
# XOR-ed over the stamp so a uniform (black, white, grey) picture never
# decodes to a valid stamp and the cell pattern stays balanced.
_WHITENING = np.frombuffer(bytes.fromhex("9e3779b97f4a7c15c2b2"), np.uint8)
_U32 = 1 << 32


@dataclass(frozen=True)
class Stamp:
    """What a frame says about itself: its counter and its send time."""

    counter: int
    sent_ms: int


def wall_ms() -> int:
    """Wall-clock milliseconds modulo 2**32, the clock used by stamps."""
    return int(time.time() * 1000) % _U32


def latency_ms(stamp: Stamp, now_ms: float | None = None) -> float:
    """Milliseconds since `stamp` was produced (same-machine clocks), wrap-safe."""
    now = wall_ms() if now_ms is None else now_ms
    diff = (now - stamp.sent_ms) % _U32
    return float(diff - _U32 if diff >= _U32 // 2 else diff)


@dataclass(frozen=True, eq=False)
class _Pattern:
    """Per-size layout and precomputed planes; a frame is slices of these."""

    width: int
    height: int
    cols: int
    rows: int
    bits_per_cell: int
    period: int
    step: int
    luma: np.ndarray = field(repr=False)
    chroma_u: np.ndarray = field(repr=False)
    chroma_v: np.ndarray = field(repr=False)

    @property
    def levels(self) -> np.ndarray:
        return np.linspace(BLACK, WHITE, 1 << self.bits_per_cell).round().astype(np.uint8)

    @property
    def stamp_shape(self) -> tuple[int, int]:
        """Rows and columns covered by the stamp plus its guard band."""
        return (self.rows + 1) * CELL, min(self.width, (self.cols + 1) * CELL)

    def picture(self, counter: int) -> np.ndarray:
        """The (H*3/2, W) yuv420p buffer for `counter`, stamp area grey."""
        w, h = self.width, self.height
        off = (counter * self.step) % self.period
        buf = np.empty(w * h * 3 // 2, np.uint8)
        y = buf[: w * h].reshape(h, w)
        y[:] = self.luma[:, off : off + w]
        bar = w // 12
        x0 = (counter * max(2, w // 90)) % (w - bar)
        y[:, x0 : x0 + bar] = WHITE - y[:, x0 : x0 + bar] // 4
        cw, ch = w // 2, h // 2
        chroma = buf[w * h :].reshape(2, ch, cw)
        coff = counter % cw
        chroma[0] = self.chroma_u[:, coff : coff + cw]
        chroma[1] = self.chroma_v[:, coff : coff + cw]
        sr, sc = self.stamp_shape
        y[:sr, :sc] = GUARD
        chroma[:, : sr // 2, : sc // 2] = 128
        return buf.reshape(h * 3 // 2, w)


@lru_cache(maxsize=8)
def _pattern(width: int, height: int) -> _Pattern:
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even, got {width}x{height}")
    # Binary cells are the most robust; frames too narrow for 16x5 of them
    # use 10x4 four-level cells instead (still fine above ~100 kbps).
    cols, rows, k = (16, 5, 1) if width >= 17 * CELL else (10, 4, 2)
    if cols * CELL > width or (rows + 1) * CELL > height:
        raise ValueError(f"{width}x{height} is too small for the stamp")
    unit = max(1, width // 320)
    period, step = 32 * unit, 5 * unit
    yy, xx = np.mgrid[0:height, 0 : width + period]
    # Diagonal sine stripes: codec-friendly, yet a shift of `step` pixels
    # changes almost every pixel, so neighbouring frames are far apart.
    luma = 126 + 80 * np.sin(2 * np.pi * (xx + yy) / period) + 20 * (yy / height - 0.5)
    cy, cx = np.mgrid[0 : height // 2, 0:width]
    phase = 2 * np.pi * cx / (width // 2)
    chroma_u = 128 + 60 * np.cos(phase) + 30 * (cy / (height // 2) - 0.5)
    chroma_v = 128 + 60 * np.sin(phase + 2 * np.pi * cy / (height // 2))
    planes = (np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (luma, chroma_u, chroma_v))
    return _Pattern(width, height, cols, rows, k, period, step, *planes)


def _stamp_bits(counter: int, sent_ms: int) -> np.ndarray:
    payload = struct.pack(">II", counter % _U32, sent_ms % _U32)
    raw = payload + struct.pack(">H", binascii.crc_hqx(payload, 0xFFFF))
    return np.unpackbits(np.frombuffer(raw, np.uint8) ^ _WHITENING)


def make_frame(counter: int, width: int, height: int, sent_ms: int) -> av.VideoFrame:
    """A yuv420p frame whose picture depends only on (counter, size) and
    whose stamp carries `counter` and `sent_ms` (both taken modulo 2**32)."""
    pat = _pattern(width, height)
    buf = pat.picture(counter)
    k = pat.bits_per_cell
    symbols = _stamp_bits(counter, sent_ms).reshape(-1, k) @ (1 << np.arange(k - 1, -1, -1))
    gray = symbols ^ (symbols >> 1)  # neighbouring levels differ in one bit
    cells = pat.levels[gray].reshape(pat.rows, pat.cols)
    buf[: pat.rows * CELL, : pat.cols * CELL] = np.kron(cells, np.ones((CELL, CELL), np.uint8))
    return av.VideoFrame.from_ndarray(buf, format="yuv420p")


def _luma(frame: av.VideoFrame) -> np.ndarray:
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    return frame.to_ndarray()[: frame.height]


def read_stamp(frame: av.VideoFrame) -> Stamp | None:
    """Decode the stamp from any decoded frame; None if absent or corrupt."""
    try:
        pat = _pattern(frame.width, frame.height)
    except ValueError:
        return None
    r, c, k, q = pat.rows, pat.cols, pat.bits_per_cell, CELL // 4
    grid = _luma(frame)[: r * CELL, : c * CELL].reshape(r, CELL, c, CELL)
    centres = grid[:, q : CELL - q, :, q : CELL - q].mean(axis=(1, 3)).ravel()
    levels = pat.levels.astype(np.float64)
    gray = np.digitize(centres, (levels[1:] + levels[:-1]) / 2)
    symbols = gray ^ (gray >> 1)  # inverse Gray code for k <= 2
    bits = (symbols[:, None] >> np.arange(k - 1, -1, -1)) & 1
    raw = (np.packbits(bits.astype(np.uint8).ravel()) ^ _WHITENING).tobytes()
    counter, sent_ms, crc = struct.unpack(">IIH", raw)
    if binascii.crc_hqx(raw[:8], 0xFFFF) != crc:
        return None
    return Stamp(counter, sent_ms)


def expected_luma(counter: int, width: int, height: int) -> np.ndarray:
    """The Y plane make_frame produces for `counter`, stamp area left grey."""
    return _pattern(width, height).picture(counter)[:height].copy()


def psnr(frame: av.VideoFrame, counter: int) -> float:
    """Luma PSNR (dB) of `frame` against the picture for `counter`, ignoring
    the stamp area, so a decode can be checked for being the right frame."""
    pat = _pattern(frame.width, frame.height)
    diff = _luma(frame).astype(np.float32) - pat.picture(counter)[: frame.height]
    sr, sc = pat.stamp_shape
    diff[:sr, :sc] = 0
    mse = float(np.square(diff).sum()) / (diff.size - sr * sc)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


class _Paced(MediaStreamTrack):
    """Releases item n at start + n * interval, so pacing never drifts."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.frames_sent = 0
        self._interval = interval
        self._start: float | None = None

    async def _next_index(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.frames_sent * self._interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.frames_sent += 1
        return self.frames_sent - 1


class TestPatternTrack(_Paced):
    """Real-time video track of stamped test-pattern frames."""

    __test__ = False
    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30) -> None:
        super().__init__(1 / fps)
        _pattern(width, height)  # reject bad sizes and precompute before the first recv
        self.width, self.height, self.fps = width, height, fps

    async def recv(self) -> av.VideoFrame:
        n = await self._next_index()
        frame = make_frame(n, self.width, self.height, wall_ms())
        frame.pts = round(n * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class ToneTrack(_Paced):
    """Real-time 48 kHz mono s16 sine tone in 20 ms frames."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__(AUDIO_PTIME)
        self.frequency, self.amplitude = frequency, amplitude
        self.samples = round(AUDIO_SAMPLE_RATE * AUDIO_PTIME)
        self._phase = 0.0

    async def recv(self) -> av.AudioFrame:
        n = await self._next_index()
        per_sample = self.frequency / AUDIO_SAMPLE_RATE
        cycles = self._phase + np.arange(self.samples) * per_sample
        # Keep the running phase in [0, 1) so precision holds on long runs.
        self._phase = (self._phase + self.samples * per_sample) % 1.0
        wave = self.amplitude * 32767 * np.sin(2 * np.pi * cycles)
        samples = wave.astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = n * self.samples
        frame.time_base = Fraction(1, AUDIO_SAMPLE_RATE)
        return frame
