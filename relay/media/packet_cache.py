"""The last packets of a stream, by sequence number, to answer viewers' NACKs.

Bounded by count and by bytes, like Galene's packetcache: a NACK for a packet
older than what is kept can only be answered by a keyframe.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class CachedPacket(NamedTuple):
    """A publisher's packet as the forwarder keeps it (publisher sequence number and timestamp)."""

    seq: int
    ts: int
    marker: int
    payload: bytes


class PacketCache:
    def __init__(self, max_packets: int = 1024, max_bytes: int = 2 * 1024 * 1024) -> None:
        self._max_packets = max_packets
        self._max_bytes = max_bytes
        self._packets: dict[int, CachedPacket] = {}
        self._order: deque[int] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._packets)

    def put(self, packet: CachedPacket) -> None:
        if packet.seq in self._packets:
            return
        self._packets[packet.seq] = packet
        self._order.append(packet.seq)
        self.bytes += len(packet.payload)
        while len(self._order) > self._max_packets or self.bytes > self._max_bytes:
            self.bytes -= len(self._packets.pop(self._order.popleft()).payload)

    def get(self, seq: int) -> CachedPacket | None:
        return self._packets.get(seq)

    def evicted(self, seq: int) -> bool:
        """`seq` is older than every packet kept: it will never be answered from here.

        A missing packet newer than that was lost on the publisher's leg and may
        still come (Relay NACKs the publisher); it is then forwarded as it arrives.
        """
        if not self._order:
            return True
        return 0 < (self._order[0] - seq) & 0xFFFF < 0x8000

    def clear(self) -> None:
        self._packets.clear()
        self._order.clear()
        self.bytes = 0
