"""The naive design, for comparison: a WHIP/WHEP server built the way aiortc's examples are.

The publisher's tracks are decoded once and shared through `MediaRelay`;
each viewer's sender encodes them again with its own encoder (VP8 and Opus
from aiortc's defaults). One `MediaBlackhole` subscription keeps the decoder
running without viewers, as the examples' recorder does; viewers subscribe
unbuffered so a slow encoder drops frames instead of queueing them. Recording
is aiortc's `MediaRecorder` (it encodes again), one per kind: with audio and
video in one file, PyAV 18 opens the video encoder when the first audio
packet is muxed and the recorder's video task dies on "Cannot change width
after codec is open". It speaks just enough
WHIP/WHEP for the benchmark: POST an offer, DELETE the session, and Relay's
POST/DELETE /api/streams/{stream}/recording.

    python -m bench.baseline --port 8090 --recordings-dir /tmp/rec
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRecorder, MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from .peers import LOOPBACK, loopback_only


class Published:
    """One stream: the publisher's connection and its decoded tracks."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.blackhole = MediaBlackhole()
        self.recorders: list[MediaRecorder] = []


class Baseline:
    def __init__(self, recordings: Path) -> None:
        self.recordings = recordings
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

    def _published(self, request: web.Request) -> Published:
        published = self.streams.get(request.match_info["stream"])
        if published is None:
            raise web.HTTPNotFound()
        return published

    async def start_recording(self, request: web.Request) -> web.Response:
        published = self._published(request)
        if not published.recorders:
            self.recordings.mkdir(parents=True, exist_ok=True)
            for kind, track in published.tracks.items():
                recorder = MediaRecorder(str(self.recordings / f"{request.match_info['stream']}-{kind}.webm"))
                recorder.addTrack(published.relay.subscribe(track))
                await recorder.start()
                published.recorders.append(recorder)
        return web.json_response({"recording": True})

    async def stop_recording(self, request: web.Request) -> web.Response:
        published = self._published(request)
        for recorder in published.recorders:
            await recorder.stop()
        published.recorders.clear()
        return web.json_response({"recording": False})

    async def close(self, app: web.Application) -> None:
        for published in self.streams.values():
            await published.blackhole.stop()
            for recorder in published.recorders:
                await recorder.stop()
        await asyncio.gather(*(pc.close() for pc in self.sessions.values()))


def create_app(recordings: Path) -> web.Application:
    loopback_only()
    baseline = Baseline(recordings)
    app = web.Application()
    app.router.add_post("/whip/{stream}", baseline.whip)
    app.router.add_post("/whep/{stream}", baseline.whep)
    app.router.add_post("/api/streams/{stream}/recording", baseline.start_recording)
    app.router.add_delete("/api/streams/{stream}/recording", baseline.stop_recording)
    app.router.add_delete("/{kind}/{stream}/{session}", baseline.delete)
    app.on_shutdown.append(baseline.close)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--recordings-dir", type=Path, default=Path("recordings"))
    args = parser.parse_args()
    web.run_app(create_app(args.recordings_dir), host=LOOPBACK, port=args.port, print=None)


if __name__ == "__main__":
    main()
