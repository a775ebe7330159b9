"""RTP packets as the assembler reads aiortc's (after depayloading), for tests that build their own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Pkt:
    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes
    _data: bytes
