"""WHIP and WHEP clients on aiortc, for scripts, robots and tests.

They speak the protocols only (RFC 9725, draft-ietf-wish-whep-04): nothing
here depends on Relay, so they work against any WHIP/WHEP server.
"""

from __future__ import annotations

import asyncio
import json
import re
from types import TracebackType
from urllib.parse import urljoin

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

SDP = "application/sdp"
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')
_PARAM = re.compile(r';\s*([\w-]+)\s*=\s*"?([^";]*)"?')


class SessionError(Exception):
    """The server refused the request; carries its RFC 9457 problem detail."""

    def __init__(self, status: int, title: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {title}: {detail}" if detail else f"HTTP {status} {title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.retry_after = retry_after


def parse_ice_server_links(values: list[str]) -> list[RTCIceServer]:
    """RTCIceServers from `Link: <url>; rel="ice-server"; ...` headers (RFC 9725 §4.6)."""
    servers = []
    for value in values:
        for url, params in _LINK.findall(value):
            attrs = {k.lower(): v for k, v in _PARAM.findall(params)}
            if attrs.get("rel") == "ice-server":
                servers.append(RTCIceServer(url, attrs.get("username"), attrs.get("credential")))
    return servers


async def _problem(response: aiohttp.ClientResponse) -> SessionError:
    text = await response.text()
    title, detail = response.reason or "", text.strip()[:500]
    if response.content_type == "application/problem+json":
        try:
            body = json.loads(text)
            title, detail = str(body.get("title", title)), str(body.get("detail", ""))
        except (ValueError, AttributeError):
            pass
    retry = response.headers.get("Retry-After")
    return SessionError(response.status, title, detail, float(retry) if retry and retry.isdigit() else None)


class _Client:
    """What WHIP and WHEP clients share: the offer POST, the session URL, DELETE."""

    direction = "sendonly"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token
        self.location: str | None = None
        self.etag: str | None = None
        self.links: list[str] = []
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_servers or [], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @property
    def ice_servers(self) -> list[RTCIceServer]:
        """The STUN/TURN servers the server advertised in its 201."""
        return parse_ice_server_links(self.links)

    def _prepare(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        try:
            self._prepare()
            await self.pc.setLocalDescription(await self.pc.createOffer())
            async with self._http.post(
                self.url, data=self.pc.localDescription.sdp, headers=self._headers(SDP)
            ) as response:
                if response.status != 201:
                    raise await _problem(response)
                answer = await response.text()
                location = response.headers.get("Location")
                if not location:
                    raise SessionError(response.status, "No Location", "the 201 carried no Location header")
                self.location = urljoin(str(response.url), location)
                self.etag = response.headers.get("ETag")
                self.links = response.headers.getall("Link", [])
            await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """DELETE the session (if any) and release the peer connection; safe to call twice."""
        location, self.location = self.location, None
        try:
            if location and not self._http.closed:
                async with self._http.delete(location, headers=self._headers()):
                    pass
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        finally:
            await self.pc.close()
            await self._http.close()

    async def __aenter__(self) -> _Client:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class WhipClient(_Client):
    """Publishes aiortc tracks to a WHIP endpoint."""

    def __init__(
        self, url: str, tracks: list[MediaStreamTrack], video_codec: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(url, **kwargs)  # type: ignore[arg-type]
        self._tracks = tracks
        self._video_codec = video_codec

    def _prepare(self) -> None:
        for track in self._tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video" and self._video_codec:
                wanted = f"video/{self._video_codec}".lower()
                transceiver.setCodecPreferences(
                    [c for c in RTCRtpSender.getCapabilities("video").codecs
                     if c.mimeType.lower() in (wanted, "video/rtx")]
                )


class WhepClient(_Client):
    """Receives a stream from a WHEP endpoint; `tracks` holds what arrived, by kind."""

    def __init__(self, url: str, kinds: tuple[str, ...] = ("video", "audio"), **kwargs: object) -> None:
        super().__init__(url, **kwargs)  # type: ignore[arg-type]
        self._kinds = kinds
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.pc.on("track", lambda track: self.tracks.__setitem__(track.kind, track))

    def _prepare(self) -> None:
        for kind in self._kinds:
            self.pc.addTransceiver(kind, direction="recvonly")
