"""Data channels and the chat over plain HTTP, for scripts without WebRTC data channels.

    POST /api/streams/{stream}/data/{label}   send as the publisher (publish token): 204
    GET  /api/streams/{stream}/data/{label}   that label's messages as server-sent events (view token)
    GET  /api/streams/{stream}/chat           the chat (history first) as server-sent events (view token)
    POST /api/streams/{stream}/chat           {"name", "text"}: say something (view token), same limits
    DELETE /api/streams/{stream}/chat         clear the history (publish token)

A text message is one event (`data:` lines; event `binary` carries a binary
message in base64). Readers that fall behind miss messages rather than
hold memory (see relay.media.datachannels).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math

from aiohttp import web

from relay.media.chat import CHAT_LABEL, ChatError
from relay.media.datachannels import Listener, Message
from relay.media.stream import Stream
from relay.server import auth
from relay.server.context import CONTEXT, context
from relay.server.endpoint import read_bytes, stream_name
from relay.server.events import open_event_stream
from relay.server.problems import Problem

TEXT_TYPES = ("text/plain", "application/json")
BINARY_TYPE = "application/octet-stream"
MAX_LABEL = 128
KEEPALIVE = 15.0  # seconds between comments on an idle event stream, so a gone reader is noticed
CHAT_BODY_BYTES = 8 * 1024
CHAT_STATUS = {"too-fast": 429, "name-taken": 409, "chat-off": 403}


def label_of(request: web.Request) -> str:
    label = request.match_info["label"]
    if not label or len(label) > MAX_LABEL or not label.isprintable():
        raise Problem(400, "bad-label", f"a data channel label is 1-{MAX_LABEL} printable characters")
    if label == CHAT_LABEL:
        raise Problem(400, "chat-label", f"the {CHAT_LABEL!r} label is the chat: use /api/streams/{{stream}}/chat")
    return label


def existing_stream(request: web.Request) -> Stream:
    name = stream_name(request)
    stream = context(request).streams.get(name)
    if stream is None:
        raise Problem(404, "unknown-stream", f"stream {name!r} is not live and has no viewers")
    return stream


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"the message is larger than {limit} bytes; send a smaller one")


async def post_data(request: web.Request) -> web.Response:
    label = label_of(request)
    stream = existing_stream(request)
    if not stream.live:
        raise Problem(409, "stream-offline", f"stream {stream.name!r} has no live publisher: nobody would get it")
    if request.content_type not in (*TEXT_TYPES, BINARY_TYPE):
        raise Problem(415, "unsupported-media-type",
                      f"send text as {' or '.join(TEXT_TYPES)}, binary as {BINARY_TYPE} "
                      f"(got {request.content_type or 'none'!r})")
    config = context(request).config
    body = await read_bytes(request, config.data.max_message_bytes, config.server.body_timeout, _too_large)
    message: Message = body
    if request.content_type != BINARY_TYPE:
        try:
            message = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(400, "bad-encoding", f"a text message is UTF-8; send bytes as {BINARY_TYPE}") from None
    stream.data.send(label, message)
    return web.Response(status=204)


def sse(event: str, data: str) -> bytes:
    """One server-sent event; a message with line breaks becomes several `data:` lines."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


async def _stream_events(request: web.Request, listener: Listener) -> web.StreamResponse:
    response = await open_event_stream(request)
    try:
        while True:
            try:
                message = await asyncio.wait_for(listener.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if message is None:
                break
            if isinstance(message, bytes):
                await response.write(sse("binary", base64.b64encode(message).decode()))
            else:
                await response.write(sse("message", message))
    except ConnectionError:
        pass
    return response


async def get_data(request: web.Request) -> web.StreamResponse:
    label = label_of(request)
    stream = existing_stream(request)
    listener = stream.data.listen(label)
    try:
        return await _stream_events(request, listener)
    finally:
        stream.data.unlisten(label, listener)


async def get_chat(request: web.Request) -> web.StreamResponse:
    stream = existing_stream(request)
    listener = stream.chat.listen()
    try:
        return await _stream_events(request, listener)
    finally:
        stream.chat.unlisten(listener)


async def post_chat(request: web.Request) -> web.Response:
    stream = existing_stream(request)
    if request.content_type != "application/json":
        raise Problem(415, "unsupported-media-type",
                      'send Content-Type: application/json and a body like {"name": "bot", "text": "hello"}')
    body = await read_bytes(request, CHAT_BODY_BYTES, context(request).config.server.body_timeout, _too_large)
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError):
        sent = None
    if not isinstance(sent, dict):
        raise Problem(400, "not-json", 'send a JSON object like {"name": "bot", "text": "hello"}')
    try:
        message = stream.chat.say_http(request.remote or "unknown", sent.get("name"), sent.get("text"))
    except ChatError as exc:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else None
        raise Problem(CHAT_STATUS.get(exc.code, 400), f"chat-{exc.code}", str(exc), headers=headers) from None
    return web.json_response(message)


async def clear_chat(request: web.Request) -> web.Response:
    existing_stream(request).chat.clear()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/streams/{stream}/data/{label}", auth.protected("publish")(post_data))
    app.router.add_get("/api/streams/{stream}/data/{label}", auth.protected("view")(get_data))
    app.router.add_get("/api/streams/{stream}/chat", auth.protected("view")(get_chat))
    app.router.add_post("/api/streams/{stream}/chat", auth.protected("view")(post_chat))
    app.router.add_delete("/api/streams/{stream}/chat", auth.protected("publish")(clear_chat))

    async def end_readers(app: web.Application) -> None:
        for stream in app[CONTEXT].streams:
            stream.data.close()
            stream.chat.close()

    app.on_shutdown.append(end_readers)
