"""A bounded queue of frames that starts, and after an overflow resumes, on a keyframe."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from aiortc.mediastreams import MediaStreamError

T = TypeVar("T")


class GatedQueue(Generic[T]):
    """A bounded frame queue that starts, and after an overflow resumes, on a keyframe.

    A reader too slow to keep up is flushed and waits for the next keyframe
    (`on_overflow` asks for one) instead of growing memory. Audio has no
    keyframes to wait for: its queue is only flushed.
    """

    def __init__(self, video: bool, max_items: int, on_overflow: Callable[[], None]) -> None:
        self.waiting_keyframe = video
        self.overflows = 0
        self.closed = False
        self._video = video
        self._max_items = max_items
        self._limit = max_items
        self._on_overflow = on_overflow
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def push(self, item: T, keyframe: bool) -> bool:
        """Queue `item`; False if it was dropped."""
        if self.waiting_keyframe:
            if not keyframe:
                return False
            self.waiting_keyframe = False
        if len(self._items) >= self._limit:
            self._items.clear()
            self._limit = self._max_items
            self.overflows += 1
            if self._video:
                self.waiting_keyframe = True
                self._on_overflow()
                return False
        self._items.append(item)
        self._ready.set()
        return True

    def prefill(self, items: list[T]) -> None:
        """Queue a replay (starting with a keyframe) on top of the usual bound."""
        self._items.extend(items)
        self._limit = self._max_items + len(self._items)
        self.waiting_keyframe = False
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> T:
        """The next item; MediaStreamError once closed and drained."""
        while not self._items:
            if self.closed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if len(self._items) <= self._max_items:
            self._limit = self._max_items  # the replay is drained
        return self._items.popleft()

    def close(self, discard: bool = False) -> None:
        self.closed = True
        if discard:
            self._items.clear()
        self._ready.set()
