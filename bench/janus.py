"""Janus VideoRoom as a reference server, behind a WHIP/WHEP facade the bench's clients already speak.

The bench starts Janus (the Debian `janus` package) itself with a config it
writes into a temporary directory (removed on stop): only the VideoRoom plugin
and the HTTP transport on loopback, no session timeout, ICE restricted to the
veth end made by `bench.netns.veth` (libnice ignores loopback interfaces).
`event_loops` chooses Janus's threading: None keeps its default (a loop per
handle), 1 puts every handle on one loop.

The facade runs in the orchestrator and translates, per stream name, one
VideoRoom room (created on the first WHIP POST):
  WHIP POST offer   -> attach, `create` room, `joinandconfigure` (publisher) -> 201 answer
  WHEP POST offer   -> attach, `join` (subscriber, feed) -> 406 with Janus's offer
                       (WHEP §4.3.2 counter-offer; Janus subscribers are always offered to)
  PATCH answer      -> `start` with the viewer's answer
  DELETE            -> detach the handle
Signalling only: Janus's CPU is the janus process's, measured like Relay's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .netns import VETH_ADDRESS, veth
from .peers import LOOPBACK
from .proc import pinned

LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
PLUGIN = "libjanus_videoroom.so"
TRANSPORT = "libjanus_http.so"
SDP = "application/sdp"
EVENT_TIMEOUT = 20.0


class JanusError(RuntimeError):
    """Janus answered a request with an error, or not at all."""


def janus_binary() -> str | None:
    """The janus executable, if Janus and the plugin and transport the bench needs are installed."""
    binary = shutil.which("janus")
    if binary and (LIB / "plugins" / PLUGIN).exists() and (LIB / "transports" / TRANSPORT).exists():
        return binary
    return None


def write_config(directory: Path, http_port: int, interface: str, address: str, event_loops: int | None) -> Path:
    """Janus's config files (libconfig syntax) in `directory`; returns the main one."""
    for kind, library in (("plugins", PLUGIN), ("transports", TRANSPORT)):
        (directory / kind).mkdir()
        (directory / kind / library).symlink_to(LIB / kind / library)  # only what is loaded
    (directory / "none").mkdir()
    loops = f"\tevent_loops = {event_loops}\n" if event_loops else ""
    main = directory / "janus.jcfg"
    main.write_text(
        "general: {\n"
        f'\tconfigs_folder = "{directory}"\n'
        f'\tplugins_folder = "{directory}/plugins"\n'
        f'\ttransports_folder = "{directory}/transports"\n'
        f'\tevents_folder = "{directory}/none"\n'
        f'\tloggers_folder = "{directory}/none"\n'
        "\tdebug_level = 3\n"
        "\tsession_timeout = 0\n"
        f'\tinterface = "{address}"\n'  # Janus finds its own address by a route it does not have here
        f"{loops}"
        "}\n"
        "media: {\n\trtp_port_range = \"20000-40000\"\n}\n"
        f'nat: {{\n\tice_enforce_list = "{interface}"\n}}\n'
    )
    (directory / "janus.transport.http.jcfg").write_text(
        "general: {\n\tjson = \"plain\"\n\tbase_path = \"/janus\"\n\thttp = true\n"
        f"\tport = {http_port}\n\tip = \"{LOOPBACK}\"\n}}\n"
        "admin: {\n\tadmin_http = false\n}\n"
    )
    (directory / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return main


@contextlib.asynccontextmanager
async def janus_process(
    http_port: int, event_loops: int | None, core: int | None, log: Path,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Janus running with a temporary config on a veth address; stopped and cleaned up on exit."""
    binary = janus_binary()
    if binary is None:
        raise JanusError(f"Janus is not installed (apt-get install janus): no janus or no {LIB}/plugins/{PLUGIN}")
    with veth() as interface, tempfile.TemporaryDirectory(prefix="relay-bench-janus-") as tmp:
        config = write_config(Path(tmp), http_port, interface, VETH_ADDRESS, event_loops)
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *pinned(core, [binary, "-F", tmp, "-C", str(config), "--disable-colors"]),
                stdout=out, stderr=out,
            )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()


class JanusApi:
    """One Janus session over its HTTP API; events are read by a long poll and matched by transaction."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = 0
        self._http: aiohttp.ClientSession | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._ids = itertools.count()

    async def start(self) -> None:
        self._http = self._http or aiohttp.ClientSession()
        reply = await self._post(self.base, {"janus": "create"})
        self.session = reply["data"]["id"]
        self._poller = asyncio.create_task(self._poll())

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        body.setdefault("transaction", f"t{next(self._ids)}")
        async with self._http.post(url, json=body) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {reply['error']}")
        return reply

    async def _poll(self) -> None:
        assert self._http is not None
        while True:
            async with self._http.get(f"{self.base}/{self.session}", params={"maxev": "16"}) as response:
                events = await response.json(content_type=None)
            for event in events if isinstance(events, list) else [events]:
                waiting = self._waiting.pop(event.get("transaction", ""), None)
                if waiting and not waiting.done():
                    waiting.set_result(event)

    async def attach(self) -> int:
        reply = await self._post(f"{self.base}/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        return int(reply["data"]["id"])

    async def detach(self, handle: int) -> None:
        with contextlib.suppress(JanusError):
            await self._post(f"{self.base}/{self.session}/{handle}", {"janus": "detach"})

    async def message(self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A plugin request; waits for its asynchronous event when Janus only acknowledges it."""
        transaction = f"t{next(self._ids)}"
        event = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = event
        request: dict[str, Any] = {"janus": "message", "transaction": transaction, "body": body}
        if jsep:
            request["jsep"] = jsep
        try:
            reply = await self._post(f"{self.base}/{self.session}/{handle}", request)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(event, EVENT_TIMEOUT)
        finally:
            self._waiting.pop(transaction, None)
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']} ({data.get('error_code')})")
        return reply

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self._poller
        if self._http:
            with contextlib.suppress(aiohttp.ClientError, JanusError):
                await self._post(f"{self.base}/{self.session}", {"janus": "destroy"})
            await self._http.close()


@dataclass
class Room:
    id: int
    publisher: int | None = None  # the publisher's feed id
    publisher_handle: int | None = None


@dataclass
class Facade:
    """WHIP/WHEP in front of Janus's VideoRoom (see the module docstring)."""

    api: JanusApi
    rooms: dict[str, Room] = field(default_factory=dict)
    handles: dict[str, int] = field(default_factory=dict)  # session token -> Janus handle

    def _session(self, status: int, sdp: str, handle: int) -> web.Response:
        token = secrets.token_urlsafe(9)
        self.handles[token] = handle
        return web.Response(status=status, text=sdp, content_type=SDP, headers={"Location": f"/session/{token}"})

    async def whip(self, request: web.Request) -> web.Response:
        name = request.match_info["stream"]
        offer = await request.text()
        room = self.rooms.get(name) or Room(len(self.rooms) + 1000)
        handle = await self.api.attach()
        if name not in self.rooms:
            await self.api.message(handle, {
                "request": "create", "room": room.id, "publishers": 1, "permanent": False,
                "audiocodec": "opus", "videocodec": "vp8",
            })
            self.rooms[name] = room
        reply = await self.api.message(
            handle, {"request": "joinandconfigure", "room": room.id, "ptype": "publisher", "audio": True,
                     "video": True},
            {"type": "offer", "sdp": offer, "trickle": False},
        )
        room.publisher, room.publisher_handle = reply["plugindata"]["data"]["id"], handle
        return self._session(201, reply["jsep"]["sdp"], handle)

    async def whep(self, request: web.Request) -> web.Response:
        room = self.rooms.get(request.match_info["stream"])
        if room is None or room.publisher is None:
            raise web.HTTPConflict(text="not published", headers={"Retry-After": "1"})
        handle = await self.api.attach()
        try:
            reply = await self.api.message(handle, {
                "request": "join", "room": room.id, "ptype": "subscriber", "streams": [{"feed": room.publisher}],
            })
        except JanusError:
            await self.api.detach(handle)
            raise
        return self._session(406, reply["jsep"]["sdp"], handle)

    async def patch(self, request: web.Request) -> web.Response:
        handle = self.handles.get(request.match_info["session"])
        if handle is None:
            raise web.HTTPNotFound()
        await self.api.message(handle, {"request": "start"}, {"type": "answer", "sdp": await request.text()})
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        handle = self.handles.pop(request.match_info["session"], None)
        if handle is None:
            raise web.HTTPNotFound()
        for room in self.rooms.values():
            if room.publisher_handle == handle:
                room.publisher = room.publisher_handle = None
        await self.api.detach(handle)
        return web.Response()


@contextlib.asynccontextmanager
async def facade(janus_port: int, port: int) -> AsyncIterator[Facade]:
    """The WHIP/WHEP facade on LOOPBACK:`port`, once Janus answers on `janus_port`."""
    api = JanusApi(f"http://{LOOPBACK}:{janus_port}/janus")
    for _ in range(100):
        try:
            await api.start()
            break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    else:
        raise JanusError(f"Janus did not answer on port {janus_port}")
    front = Facade(api)
    app = web.Application()
    app.router.add_post("/whip/{stream}", front.whip)
    app.router.add_post("/whep/{stream}", front.whep)
    app.router.add_patch("/session/{session}", front.patch)
    app.router.add_delete("/session/{session}", front.delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, port).start()
        yield front
    finally:
        await runner.cleanup()
        await api.close()
