"""A stream's data: the publisher's messages to every viewer channel of the same label.

Viewers open the channels they want (label by label, in their WHEP offer);
the server never creates a channel. Every message the publisher sends on a
channel labelled L, and every `send(L, message)` (HTTP, bots), is delivered
to each open viewer channel labelled L and to each listener of L (HTTP
server-sent events), in the order it came. Delivery never waits: a channel
whose SCTP buffer already holds `buffer_bytes` unsent is skipped for that
message (counted as dropped), so one stalled viewer costs the others nothing
and its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from aiortc import RTCDataChannel
from aiortc.exceptions import InvalidStateError

log = logging.getLogger(__name__)

Message = str | bytes
LISTENER_QUEUE = 256  # messages an HTTP listener may lag behind before it misses some


def message_size(message: Message) -> int:
    return len(message.encode()) if isinstance(message, str) else len(message)


class Listener:
    """One HTTP reader of a label: a bounded queue; `None` from `get()` means the stream is gone."""

    def __init__(self, maxsize: int = LISTENER_QUEUE) -> None:
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize)
        self.closed = False

    def put(self, message: Message) -> bool:
        """Queue `message`; False (dropped) when the reader lags `maxsize` messages behind."""
        if self.closed or self._queue.full():
            return False
        self._queue.put_nowait(message)
        return True

    async def get(self) -> Message | None:
        return None if self.closed and self._queue.empty() else await self._queue.get()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if not self._queue.full():
                self._queue.put_nowait(None)


class StreamData:
    """Per-stream data fan-out: viewer channels and HTTP listeners by label, and what they were sent."""

    def __init__(self, buffer_bytes: int) -> None:
        self.buffer_bytes = buffer_bytes
        self._channels: defaultdict[str, set[RTCDataChannel]] = defaultdict(set)
        self._listeners: defaultdict[str, set[Listener]] = defaultdict(set)
        self.messages_in = 0
        self.messages_out = 0
        self.dropped = 0

    def send(self, label: str, message: Message) -> None:
        """Deliver `message` to every viewer channel and listener of `label`, as the publisher's own would be."""
        self.messages_in += 1
        for channel in tuple(self._channels.get(label, ())):
            self.deliver(channel, message)
        for listener in tuple(self._listeners.get(label, ())):
            self.count(listener.put(message))

    def deliver(self, channel: RTCDataChannel, message: Message) -> bool:
        """Send on one channel unless its buffer is full (then skipped and counted); never raises."""
        if channel.readyState != "open" or channel.bufferedAmount + message_size(message) > self.buffer_bytes:
            return self.count(False)
        try:
            channel.send(message)
        except (InvalidStateError, ValueError) as exc:  # closing under us; larger than the peer takes
            log.debug("data channel %r: message skipped: %s", channel.label, exc)
            return self.count(False)
        return self.count(True)

    def count(self, delivered: bool) -> bool:
        if delivered:
            self.messages_out += 1
        else:
            self.dropped += 1
        return delivered

    def add_publisher(self, channel: RTCDataChannel) -> None:
        """The publisher's channel: each message it receives goes to the viewers' channels of its label."""
        label = channel.label

        @channel.on("message")
        def on_message(message: Message) -> None:
            self.send(label, message)

    def add_viewer(self, channel: RTCDataChannel) -> None:
        """A viewer's channel: it receives its label's messages until it closes."""
        channels = self._channels[channel.label]
        channels.add(channel)

        @channel.on("close")
        def on_close() -> None:
            self.remove_viewer(channel)

    def remove_viewer(self, channel: RTCDataChannel) -> None:
        channels = self._channels.get(channel.label)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[channel.label]

    def listen(self, label: str) -> Listener:
        listener = Listener()
        self._listeners[label].add(listener)
        return listener

    def unlisten(self, label: str, listener: Listener) -> None:
        listeners = self._listeners.get(label)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[label]
        listener.close()

    def close(self) -> None:
        """The stream is gone: every listener ends (viewer channels close with their sessions)."""
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.close()
        self._listeners.clear()
        self._channels.clear()

    def describe(self) -> dict[str, Any]:
        return {"labels": {label: len(channels) for label, channels in sorted(self._channels.items())}}
