"""A data channel a WHIP or WHEP client opened: what arrives on it, in order, and `send()`.

Clients open their channels themselves, by label, before the offer (so the
offer carries an m=application section); Relay creates none. Received
messages queue up (at most `MAX_QUEUED`, oldest kept, newer dropped and
counted) until `recv()` or `async for` takes them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiortc import RTCDataChannel

Message = str | bytes
CHAT_LABEL = "chat"  # the label of a stream's chat (Relay's relay.media.chat)
MAX_QUEUED = 100_000


class ChannelClosed(Exception):
    """The channel is closed (or not open yet): nothing more comes or goes."""


class Channel:
    def __init__(self, channel: RTCDataChannel) -> None:
        self.label = channel.label
        self.channel = channel
        self.opened = asyncio.Event()
        self.dropped = 0
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        channel.on("open", self.opened.set)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._queue.put_nowait(None))

    def _on_message(self, message: Message) -> None:
        if self._queue.qsize() >= MAX_QUEUED:
            self.dropped += 1
        else:
            self._queue.put_nowait(message)

    async def wait_open(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.opened.wait()
        except TimeoutError:
            return False
        return True

    async def recv(self) -> Message:
        """The next message; ChannelClosed once the channel closed and everything was read."""
        message = await self._queue.get()
        if message is None:
            self._queue.put_nowait(None)  # every later recv() ends too
            raise ChannelClosed(f"data channel {self.label!r} closed")
        return message

    async def __aiter__(self) -> AsyncIterator[Message]:
        try:
            while True:
                yield await self.recv()
        except ChannelClosed:
            return

    def send(self, message: Message) -> None:
        if self.channel.readyState != "open":
            raise ChannelClosed(f"data channel {self.label!r} is {self.channel.readyState}, not open")
        self.channel.send(message)

    @property
    def buffered(self) -> int:
        """Bytes sent but not yet handed to the network (to pace a fast sender)."""
        return self.channel.bufferedAmount


def chat_join(name: str) -> str:
    """What to send on the `chat` channel to join under a display name."""
    return json.dumps({"name": name})


def chat_text(text: str) -> str:
    """What to send on the `chat` channel to say something."""
    return json.dumps({"text": text})


def chat_line(message: Message) -> str | None:
    """A chat message from the server as one line for people ("12:00:01 Alice: hi"); None if not shown."""
    try:
        body: Any = json.loads(message)
    except (ValueError, TypeError):
        return None
    if not isinstance(body, dict):
        return None
    if body.get("type") == "message":
        clock = str(body.get("time", ""))[11:19]
        host = " (publisher)" if body.get("role") == "publisher" else ""
        return f"{clock} {body.get('from')}{host}: {body.get('text')}"
    if body.get("type") == "error":
        return f"chat error: {body.get('detail')}"
    if body.get("type") == "cleared":
        return "chat cleared by the publisher"
    return None
