"""Rates and totals of what flows through a stream, cheap enough to run per packet."""

from __future__ import annotations

import time
from collections import deque


class RateMeter:
    """Bits per second over the last few seconds, in one-second buckets; also every byte and item."""

    def __init__(self, window: int = 3) -> None:
        self._buckets: deque[list[int]] = deque(maxlen=window + 1)
        self._closed_total = 0
        self.count = 0
        self.last_add: float | None = None  # time.monotonic() of the last add

    def add(self, nbytes: int) -> None:
        self.count += 1
        self.last_add = now = time.monotonic()
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            if self._buckets:  # once a second, so /metrics costs nothing per packet
                self._closed_total += self._buckets[-1][1]
            self._buckets.append([second, 0])
        self._buckets[-1][1] += nbytes

    @property
    def total(self) -> int:
        """Every byte ever added."""
        return self._closed_total + (self._buckets[-1][1] if self._buckets else 0)

    def bps(self) -> int:
        now = int(time.monotonic())
        full = [b for s, b in self._buckets if now - len(self._buckets) < s < now]
        return int(sum(full) * 8 / len(full)) if full else 0
