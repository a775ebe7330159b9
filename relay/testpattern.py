"""Kept so `from relay.testpattern import ...` in existing scripts still works; it lives in `relay.client`."""

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

__all__ = ["Stamp", "TestPatternTrack", "ToneTrack", "expected_luma", "latency_ms", "make_frame", "psnr",
           "read_stamp", "wall_ms"]
