"""The naive design, for comparison: a WHIP/WHEP server built the way aiortc's examples are.

The publisher's tracks are decoded once and shared through `MediaRelay`;
each viewer's sender encodes them again with its own encoder (VP8 and Opus
from aiortc's defaults). One `MediaBlackhole` subscription keeps the decoder
running without viewers, as the examples' recorder does; viewers subscribe
unbuffered so a slow encoder drops frames instead of queueing them. It speaks
just enough WHIP/WHEP for the benchmark: POST an offer, DELETE the session.

    python -m bench.baseline --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from .peers import LOOPBACK, loopback_only


class Published:
    """One stream: the publisher's connection and its decoded tracks."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.blackhole = MediaBlackhole()


class Baseline:
    def __init__(self) -> None:
        self.streams: dict[str, Published] = {}
        self.sessions: dict[str, RTCPeerConnection] = {}

    def _session(self, kind: str, name: str, pc: RTCPeerConnection, answer: str) -> web.Response:
        session = secrets.token_urlsafe(12)
        self.sessions[session] = pc
        return web.Response(
            status=201, text=answer, content_type="application/sdp",
            headers={"Location": f"/{kind}/{name}/{session}"},
        )

    async def whip(self, request: web.Request) -> web.Response:
        name = request.match_info["stream"]
        pc = RTCPeerConnection()
        published = Published(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            published.tracks[track.kind] = track
            published.blackhole.addTrack(published.relay.subscribe(track))

        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await published.blackhole.start()
        self.streams[name] = published
        return self._session("whip", name, pc, pc.localDescription.sdp)

    async def whep(self, request: web.Request) -> web.Response:
        name = request.match_info["stream"]
        published = self.streams.get(name)
        if published is None:
            raise web.HTTPConflict(text=f"stream {name!r} is not published", headers={"Retry-After": "1"})
        pc = RTCPeerConnection()
        for track in published.tracks.values():
            pc.addTrack(published.relay.subscribe(track, buffered=False))
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._session("whep", name, pc, pc.localDescription.sdp)

    async def delete(self, request: web.Request) -> web.Response:
        pc = self.sessions.pop(request.match_info["session"], None)
        if pc is None:
            raise web.HTTPNotFound()
        await pc.close()
        return web.Response()

    async def close(self, app: web.Application) -> None:
        for published in self.streams.values():
            await published.blackhole.stop()
        await asyncio.gather(*(pc.close() for pc in self.sessions.values()))


def create_app() -> web.Application:
    loopback_only()
    baseline = Baseline()
    app = web.Application()
    app.router.add_post("/whip/{stream}", baseline.whip)
    app.router.add_post("/whep/{stream}", baseline.whep)
    app.router.add_delete("/{kind}/{stream}/{session}", baseline.delete)
    app.on_shutdown.append(baseline.close)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(create_app(), host=LOOPBACK, port=args.port, print=None)


if __name__ == "__main__":
    main()
