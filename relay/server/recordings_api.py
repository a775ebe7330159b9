"""The recordings' HTTP API: switch a stream's recording, list, download and delete files.

Handlers only check who asks and translate: the policy is `Recordings`'s,
the files and their names the `Library`'s, whose refusals become problems.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from aiohttp import web

from relay.media.library import MEDIA_TYPES, BadRecordingName, Entry, RecordingActive, RecordingError, UnknownRecording
from relay.names import valid_stream_name
from relay.server import auth
from relay.server.context import Context
from relay.server.endpoint import stream_name
from relay.server.problems import Problem
from relay.server.proxy import base_path
from relay.server.recordings import Recordings

RECORDINGS = web.AppKey("recordings", Recordings)

PROBLEMS: dict[type[RecordingError], tuple[int, str, str]] = {
    BadRecordingName: (400, "bad-recording-name", "take names from GET /api/recordings"),
    UnknownRecording: (404, "unknown-recording", "take names from GET /api/recordings"),
    RecordingActive: (409, "recording-active", "stop it first with DELETE /api/streams/{stream}/recording"),
}


@contextmanager
def problems(stream: str) -> Iterator[None]:
    """Turn the library's refusals into problem responses that say what to do."""
    try:
        yield
    except RecordingError as exc:
        status, slug, hint = PROBLEMS[type(exc)]
        raise Problem(status, slug, f"{exc}; {hint.format(stream=stream)}") from None


def recordings(request: web.Request) -> Recordings:
    return request.app[RECORDINGS]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_json(entry: Entry, prefix: str = "") -> dict[str, object]:
    return {
        "stream": entry.stream,
        "file": entry.file,
        "url": f"{prefix}/api/recordings/{entry.stream}/{entry.file}",
        "media_type": entry.media_type,
        "start": iso(entry.start),
        "duration": entry.info.duration,
        "size": entry.size,
        "codecs": entry.info.codecs,
        "recording": entry.recording,
        "error": entry.error,
    }


async def start_recording(request: web.Request) -> web.Response:
    return web.json_response(recordings(request).switch(stream_name(request), True))


async def stop_recording(request: web.Request) -> web.Response:
    return web.json_response(recordings(request).switch(stream_name(request), False))


async def list_recordings(request: web.Request) -> web.Response:
    only = request.query.get("stream")
    if only is not None and not valid_stream_name(only):
        raise Problem(400, "bad-stream-name", f"?stream={only[:80]!r} is not a stream name")
    if only is not None:
        auth.require(request, only, "view")
    listed = [as_json(entry, base_path(request)) for entry in await recordings(request).catalogue(only)
              if not auth.refusal(request, entry.stream, "view")]
    return web.json_response({"recordings": listed})


async def download(request: web.Request) -> web.FileResponse:
    """The file itself, with Range support (a <video> element seeks with it)."""
    stream = stream_name(request)
    with problems(stream):
        path = recordings(request).library.file_path(stream, request.match_info["file"])
    return web.FileResponse(path, headers={"Content-Type": MEDIA_TYPES[path.suffix[1:]]})


async def delete(request: web.Request) -> web.Response:
    stream = stream_name(request)
    with problems(stream):
        recordings(request).delete(stream, request.match_info["file"])
    return web.Response(status=204)


def setup(app: web.Application, ctx: Context) -> Recordings:
    """Create the manager, hear every stream change, add the routes and the lifetime hooks.

    Call it after the sessions' shutdown hook is added: sessions close first
    (ending the recorders' streams), then the manager waits for the files.
    """
    manager = Recordings(ctx.config.recording, ctx.streams, ctx.config.server.shutdown_grace)
    app[RECORDINGS] = manager
    ctx.streams.listeners.append(manager.on_stream)
    publisher, viewer = auth.protected("publish"), auth.protected("view")
    app.router.add_post("/api/streams/{stream}/recording", publisher(start_recording))
    app.router.add_delete("/api/streams/{stream}/recording", publisher(stop_recording))
    app.router.add_get("/api/recordings", list_recordings)  # lists what the token may view
    app.router.add_get("/api/recordings/{stream}/{file}", viewer(download))
    app.router.add_delete("/api/recordings/{stream}/{file}", publisher(delete))

    async def start(_: web.Application) -> None:
        await manager.start()

    async def close(_: web.Application) -> None:
        await manager.close()

    app.on_startup.append(start)
    app.on_shutdown.append(close)
    return manager
