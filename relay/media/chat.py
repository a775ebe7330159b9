"""A stream's live chat: the data channel labelled `chat`, and the same chat over HTTP.

What a participant sends on its `chat` channel is JSON text:

    {"name": "Alice"}      join under a display name (once per session, first)
    {"text": "hello"}      a message
    {"clear": true}        clear the history (the publisher only)

What everyone on the chat receives is JSON the server stamps, never trusted
from the sender: `{"type": "message", "id", "from", "role", "text", "time"}`
(`role`: publisher, viewer or http), `{"type": "joined", "name"}` (to the
joiner), `{"type": "cleared"}`, and `{"type": "error", "error", "detail"}`
for a message that broke a rule (too long, too fast, not JSON, binary, bad
name...): the session stays connected. A channel gets the last `history`
messages as soon as it opens, before it joins, so a reader sees the chat at once.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiortc import RTCDataChannel

from relay.config import ChatConfig
from relay.media.datachannels import Listener, Message, StreamData

CHAT_LABEL = "chat"
NAME_RULE = "letters, digits, spaces, '.', '_' and '-', starting with a letter or digit"
_NAME = re.compile(r"[^\W_][\w .-]*", re.UNICODE)
OVERHEAD = 200  # bytes of JSON around a message's text that a sender may use


class ChatError(Exception):
    """A chat rule broken: `code` for programs, the message for people."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.retry_after = retry_after


class Bucket:
    """A token bucket: `rate` messages a second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._last = float(burst), clock()

    def take(self) -> float:
        """0.0 if a message may go now, else seconds until one may."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


@dataclass
class Participant:
    """One session on the chat: its channel (None over HTTP), its name once joined, its rate."""

    key: str
    role: str
    channel: RTCDataChannel | None
    bucket: Bucket
    name: str | None = None
    joined_at: float = field(default_factory=time.monotonic)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Chat:
    """One stream's chat: participants, history and limits; delivery through the stream's data fan-out."""

    def __init__(self, stream: str, config: ChatConfig, data: StreamData) -> None:
        override = config.streams.get(stream)
        self.enabled = override.enabled if override else config.enabled
        self.config = config
        self._data = data
        self._participants: dict[str, Participant] = {}
        self._http: dict[str, Participant] = {}  # HTTP senders by client, for their rate
        self._listeners: set[Listener] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=config.history)
        self._next_id = 1

    @property
    def names(self) -> list[str]:
        return sorted(p.name for p in self._participants.values() if p.name)

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "participants": self.names,
                "readers": len(self._participants) + len(self._listeners)}

    # --- data channels ------------------------------------------------------------------------------

    def add(self, channel: RTCDataChannel, key: str, role: str) -> None:
        """A session's `chat` channel opened: send it the history, then take what it says."""
        if key in self._participants:
            self._send_error(channel, ChatError("one-chat-per-session", "this session has a chat channel already"))
            channel.close()
            return
        participant = Participant(key, role, channel, Bucket(self.config.messages_per_second, self.config.burst))
        self._participants[key] = participant
        if not self.enabled:
            self._send_error(channel, self._off())
        for message in self.history:
            self._data.deliver(channel, json.dumps(message))

        @channel.on("message")
        def on_message(message: Message) -> None:
            try:
                self.receive(participant, message)
            except ChatError as exc:
                self._send_error(channel, exc)

        @channel.on("close")
        def on_close() -> None:
            self.remove(key)

    def remove(self, key: str) -> None:
        self._participants.pop(key, None)

    def receive(self, participant: Participant, message: Message) -> None:
        """One message from a participant's channel; ChatError says what was wrong with it."""
        if isinstance(message, bytes):
            raise ChatError("binary", 'chat messages are JSON text, e.g. {"text": "hello"}; binary is not taken')
        limit = self.config.max_length * 4 + OVERHEAD  # every character may take 4 bytes of UTF-8
        if len(message) > limit:
            raise ChatError("too-long", f"the message has {len(message)} characters; "
                                        f"a chat text is at most {self.config.max_length}")
        try:
            body = json.loads(message)
        except (ValueError, RecursionError):
            raise ChatError("not-json", 'send JSON: {"name": "..."} to join, then {"text": "..."}') from None
        if not isinstance(body, dict):
            raise ChatError("not-json", 'send a JSON object: {"name": "..."} to join, then {"text": "..."}')
        if not self.enabled:
            raise self._off()
        if "name" in body:
            self.join(participant, body["name"])
        elif body.get("clear") is True:
            if participant.role != "publisher":
                raise ChatError("forbidden", "only the publisher (or the publish token's holder) clears the chat")
            self.clear()
        elif "text" in body:
            if participant.name is None:
                raise ChatError("join-first", 'choose a display name first: send {"name": "..."}')
            self.say(participant, body["text"])
        else:
            raise ChatError("unknown", 'send {"name": "..."} to join or {"text": "..."} to say something')

    def join(self, participant: Participant, name: object) -> None:
        if participant.name is not None:
            raise ChatError("already-joined", f"this session chats as {participant.name!r}; "
                                              "a display name is chosen once, at join")
        participant.name = self.check_name(name, participant.key)
        if participant.channel is not None:
            self._data.deliver(participant.channel, json.dumps({"type": "joined", "name": participant.name}))

    def check_name(self, name: object, key: str | None = None) -> str:
        """The name as it will show, or ChatError: rules, and not in use by another participant."""
        most = self.config.max_name_length
        if not isinstance(name, str) or not name.strip():
            raise ChatError("bad-name", f"a display name is text of 1-{most} characters: {NAME_RULE}")
        name = " ".join(name.split())
        if len(name) > most or not _NAME.fullmatch(name):
            raise ChatError("bad-name", f"display name {name[:most + 10]!r} is not allowed: use 1-{most} "
                                        f"characters, {NAME_RULE}")
        folded = name.casefold()
        if any(p.name and p.name.casefold() == folded and p.key != key for p in self._participants.values()):
            raise ChatError("name-taken", f"{name!r} is already in this chat; choose another display name")
        return name

    def say(self, participant: Participant, text: object) -> dict[str, Any]:
        """Stamp, keep and fan out one message; ChatError if it breaks a limit."""
        if not isinstance(text, str) or not text.strip():
            raise ChatError("empty", 'a chat message is {"text": "..."} with some text')
        text = text.strip()
        if len(text) > self.config.max_length:
            raise ChatError("too-long", f"the message has {len(text)} characters; "
                                        f"a chat text is at most {self.config.max_length}")
        wait = participant.bucket.take()
        if wait:
            raise ChatError("too-fast", f"at most {self.config.burst} messages at once and "
                                        f"{self.config.messages_per_second:g} a second; wait {wait:.1f} s",
                            retry_after=wait)
        assert participant.name is not None
        message = {"type": "message", "id": self._next_id, "from": participant.name, "role": participant.role,
                   "text": text, "time": now_iso()}
        self._next_id += 1
        self.history.append(message)
        self._broadcast(message)
        return message

    def clear(self) -> None:
        self.history.clear()
        self._broadcast({"type": "cleared"})

    # --- HTTP ---------------------------------------------------------------------------------------

    def say_http(self, client: str, name: object, text: object) -> dict[str, Any]:
        """A message POSTed by `client` (its address): same rules; the name must not be a present participant's."""
        if not self.enabled:
            raise self._off()
        sender = self._http.get(client)
        if sender is None:
            while len(self._http) >= 1024:  # bounded: the oldest sender only gets a full bucket back
                self._http.pop(next(iter(self._http)))
            sender = self._http[client] = Participant(
                f"http:{client}", "http", None, Bucket(self.config.messages_per_second, self.config.burst))
        sender.name = self.check_name(name)
        return self.say(sender, text)

    def listen(self) -> Listener:
        """An HTTP reader: the history, then every message, as JSON text."""
        listener = Listener()
        for message in self.history:
            listener.put(json.dumps(message))
        self._listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self._listeners.discard(listener)
        listener.close()

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._participants.clear()

    # --- delivery -----------------------------------------------------------------------------------

    def _broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        self._data.messages_in += 1
        for participant in tuple(self._participants.values()):
            if participant.channel is not None:
                self._data.deliver(participant.channel, text)
        for listener in tuple(self._listeners):
            self._data.count(listener.put(text))

    def _send_error(self, channel: RTCDataChannel, error: ChatError) -> None:
        body: dict[str, Any] = {"type": "error", "error": error.code, "detail": str(error)}
        if error.retry_after is not None:
            body["retry_after"] = round(error.retry_after, 1)
        self._data.deliver(channel, json.dumps(body))

    def _off(self) -> ChatError:
        return ChatError("chat-off", "the chat is turned off for this stream")
