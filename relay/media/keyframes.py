"""When to ask the publisher for a keyframe.

libwebrtc ignores a keyframe request that comes within 300 ms of the last
one, so requests are spaced by `min_interval`; one that comes too soon is
deferred, never dropped; and while any viewer still waits for a keyframe the
request is repeated every `retry_interval`, in case a PLI was lost. A request
that cannot be sent yet (the publisher's video SSRC is not known before its
first packet) stays pending and does not start the spacing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

UNSENT_RETRY = 0.05


class KeyframeRequester:
    def __init__(
        self,
        send: Callable[[], Awaitable[bool]],
        waiting: Callable[[], bool],
        min_interval: float = 0.5,
        retry_interval: float = 1.0,
    ) -> None:
        self._send = send
        self._waiting = waiting
        self._min_interval = min_interval
        self._retry_interval = retry_interval
        self._pending = False
        self._last = -float("inf")
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        self.sent = 0
        self.reasons: Counter[str] = Counter()

    def request(self, reason: str) -> None:
        self.reasons[reason] += 1
        self._pending = True
        self._wake.set()

    def keyframe_arrived(self) -> None:
        """A keyframe came: it serves every request still pending (one keyframe, every waiting viewer)."""
        self._pending = False

    def close(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if not self._pending and self._waiting() and now - self._last >= self._retry_interval:
                self._pending = True
                self.reasons["retry"] += 1
            if self._pending:
                delay = self._last + self._min_interval - now
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                try:
                    sent = await self._send()
                except ConnectionError as exc:
                    log.debug("keyframe request not sent: %s", exc)
                    sent = True  # the connection is going away; do not spin
                if sent:
                    self._pending = False
                    self._last = now
                    self.sent += 1
                else:
                    await asyncio.sleep(UNSENT_RETRY)
                continue
            self._wake.clear()
            timeout = self._retry_interval if self._waiting() else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
