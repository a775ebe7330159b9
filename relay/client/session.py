"""What WHIP and WHEP clients share: the offer POST, the session URL, trickle, DELETE.

They speak the protocols only (RFC 9725, draft-ietf-wish-whep-04): nothing
here depends on Relay, so they work against any WHIP/WHEP server.

aiortc gathers every ICE candidate before it creates an offer, so the offer
carries them all and there is nothing left to trickle; for the same reason
STUN/TURN servers must be known before the POST. Unless it is given
`ice_servers`, a client asks the endpoint with `OPTIONS` first (RFC 9725
§4.6 lets a server list them there); servers listed only in the 201 arrive
too late for aiortc and are kept in `ice_servers` for the caller to reuse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from relay.client.channels import Channel, ChannelClosed, Message
from relay.media import aiortc_patch
from relay.media.peer import Tasks, new_peer_connection
from relay.sdp import SDP, SDPFRAG

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
SHORT_TIMEOUT = 3.0  # for the optional OPTIONS, and the DELETE on the way out (Ctrl-C must be quick)
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')
_PARAM = re.compile(r';\s*([\w-]+)\s*=\s*"?([^";]*)"?')


class ClientError(Exception):
    """A session could not be set up or was lost; the message is one readable line."""


class SessionError(ClientError):
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


def negotiated_codecs(sdp: str) -> dict[str, dict[int, str]]:
    """Payload type -> codec name ("VP8", "opus", ...) per mid, from an SDP."""
    return {
        str(media.rtp.muxId): {
            c.payloadType: c.mimeType.split("/")[1] for c in media.rtp.codecs if c.payloadType is not None
        }
        for media in SessionDescription.parse(sdp).media
    }


def first_codec(codecs: dict[int, str]) -> str | None:
    return next((name for name in codecs.values() if name.lower() != "rtx"), None)


def problem_error(status: int, reason: str, headers: Any, text: str) -> SessionError:
    title, detail = reason, " ".join(text.split())[:500]
    if headers.get("Content-Type", "").split(";")[0].strip() == "application/problem+json":
        try:
            body = json.loads(text)
            title, detail = str(body.get("title", title)), str(body.get("detail", ""))
        except (ValueError, AttributeError):
            pass
    retry = headers.get("Retry-After", "")
    return SessionError(status, title, detail, float(retry) if retry.isdigit() else None)


@dataclass
class Reply:
    status: int
    reason: str
    url: str
    headers: Any
    body: str


class Client:
    """What WHIP and WHEP clients share: the offer POST, the session URL, DELETE."""

    protocol = "WHIP"
    counter_offer_statuses: tuple[int, ...] = ()
    # Refusals the POST is retried on when they carry Retry-After, within `timeout`.
    retry_statuses: tuple[int, ...] = (429, 503)

    def __init__(
        self,
        url: str,
        token: str | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        timeout: float = 10.0,
        data_channels: Collection[str] = (),
        unix_socket: str | None = None,
    ) -> None:
        self.url = url
        self.unix_socket = unix_socket  # reach the server through this Unix socket (`url` names the path)
        self._labels = list(dict.fromkeys(data_channels))
        # The data channels this client opens, by label (see relay.client.channels).
        self.channels: dict[str, Channel] = {}
        self.token = token
        self.timeout = timeout
        self.location: str | None = None
        self.etag: str | None = None
        self.links: list[str] = []
        self.accept_patch: str | None = None
        self.ice_servers_used: list[RTCIceServer] = []
        self.pc: RTCPeerConnection | None = None
        self.codecs: dict[str, str] = {}  # kind -> negotiated codec name ("VP8", "opus", ...)
        self.posted_at: float | None = None  # time.monotonic() of the offer POST
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()  # the media connection failed or closed
        self._given_ice_servers = ice_servers
        self._http: aiohttp.ClientSession | None = None
        self._tasks = Tasks()
        self._closing = False

    @property
    def ice_servers(self) -> list[RTCIceServer]:
        """The STUN/TURN servers the server advertised in its 201."""
        return parse_ice_server_links(self.links)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
            if content_type == SDPFRAG and self.etag:
                headers["If-Match"] = self.etag
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _request(self, method: str, url: str, body: str | None = None, content_type: str | None = None,
                       timeout: float | None = None, also_ok: Collection[int] = ()) -> Reply:
        """One request, following 307/308 (RFC 9725 §4.5); errors become ClientError/SessionError."""
        assert self._http is not None
        limit = timeout or self.timeout
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._http.request(
                    method, url, data=body, headers=self._headers(content_type), allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as response:
                    text = await response.text(errors="replace")
                    reply = Reply(response.status, response.reason or "", url, response.headers, text)
            except aiohttp.ClientConnectionError as exc:
                raise ClientError(f"cannot reach {url}: {exc}") from None
            except TimeoutError:
                raise ClientError(f"{url} did not answer {method} within {limit:g} s") from None
            target = reply.headers.get("Location")
            if reply.status in (307, 308) and target:
                url = urljoin(url, target)
                continue
            if 300 <= reply.status < 400:
                raise SessionError(reply.status, "Redirect", f"{url} redirects with {reply.status}; "
                                   "WHIP/WHEP redirects must be 307 or 308 (RFC 9725 §4.5)")
            if reply.status >= 400 and reply.status not in also_ok:
                raise problem_error(reply.status, reply.reason, reply.headers, reply.body)
            return reply
        raise ClientError(f"{self.url}: more than {MAX_REDIRECTS} redirects")

    async def _discover_ice_servers(self) -> list[RTCIceServer]:
        try:
            reply = await self._request("OPTIONS", self.url, timeout=min(self.timeout, SHORT_TIMEOUT))
        except SessionError as exc:
            log.debug("OPTIONS %s: %s; using no STUN/TURN server", self.url, exc)
            return []
        return parse_ice_server_links(reply.headers.getall("Link", []))

    def _new_peer_connection(self) -> RTCPeerConnection:
        if self._labels:
            aiortc_patch.enlarge_receive_buffers()  # bursts of data channel messages (see there)
        pc = new_peer_connection(self.ice_servers_used)

        def on_state() -> None:
            if pc is not self.pc:
                return
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self.ended.set()

        pc.on("connectionstatechange", on_state)
        return pc

    def _prepare(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Negotiate: OPTIONS (unless `ice_servers` was given), POST the offer, apply the answer.

        Whatever goes wrong, including cancellation, a session the server
        created is deleted before the exception propagates.
        """
        connector = aiohttp.UnixConnector(path=self.unix_socket) if self.unix_socket else None
        self._http = aiohttp.ClientSession(connector=connector)
        try:
            given = self._given_ice_servers
            self.ice_servers_used = list(given) if given is not None else await self._discover_ice_servers()
            self.pc = self._new_peer_connection()
            self._prepare()
            for label in self._labels:  # after the transceivers: BUNDLE's first m= section carries media
                self.channels[label] = Channel(self.pc.createDataChannel(label))
            await self.pc.setLocalDescription(await self.pc.createOffer())
            reply = await self._post_offer(self.pc.localDescription.sdp)
            if reply.status in self.counter_offer_statuses:
                await self._accept_counter_offer(reply.body)
            else:
                await self._apply_answer(reply.body)
            if self.ice_servers and not self.ice_servers_used:
                log.warning("%s lists STUN/TURN servers only in its 201, after aiortc gathered its "
                            "candidates; pass ice_servers= to use them", self.url)
        except BaseException:
            await self.close()
            raise

    async def _post_offer(self, offer: str) -> Reply:
        """POST the offer; if cancelled meanwhile, still learn the session URL so it can be deleted."""
        task = asyncio.ensure_future(self._post(offer))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task], timeout=self.timeout)
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: the cancellation is what propagates
            raise

    async def _post(self, offer: str) -> Reply:
        deadline = time.monotonic() + self.timeout
        while True:
            self.posted_at = time.monotonic()
            try:
                reply = await self._request("POST", self.url, offer, SDP, also_ok=self.counter_offer_statuses)
                break
            except SessionError as exc:
                wait = exc.retry_after
                if exc.status not in self.retry_statuses or wait is None or time.monotonic() + wait > deadline:
                    raise
                log.info("POST %s: %s; retrying after %g s (Retry-After)", self.url, exc, wait)
                await asyncio.sleep(wait)
        location = reply.headers.get("Location")
        if reply.status in self.counter_offer_statuses and not self._counter_offer_ok(reply):
            raise problem_error(reply.status, reply.reason, reply.headers, reply.body)
        if reply.status not in (201, *self.counter_offer_statuses):
            raise SessionError(reply.status, "Unexpected answer",
                               f"the POST of the offer got {reply.status}; a {self.protocol} endpoint answers 201")
        if not location:
            raise SessionError(reply.status, "No Location", f"the {reply.status} carried no Location header")
        self.location = urljoin(reply.url, location)
        self.etag = reply.headers.get("ETag")
        self.links = reply.headers.getall("Link", [])
        self.accept_patch = reply.headers.get("Accept-Patch")
        return reply

    def _counter_offer_ok(self, reply: Reply) -> bool:
        return False

    async def _accept_counter_offer(self, offer: str) -> None:
        raise NotImplementedError

    async def _apply_answer(self, answer: str) -> None:
        assert self.pc is not None
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        except Exception as exc:
            raise ClientError(f"the answer from {self.url} cannot be used: {exc}") from None
        self._learn_codecs(answer)

    def _learn_codecs(self, sdp: str) -> None:
        assert self.pc is not None
        by_mid = negotiated_codecs(sdp)
        for transceiver in self.pc.getTransceivers():
            name = first_codec(by_mid.get(str(transceiver.mid), {}))
            if name:
                self.codecs[transceiver.kind] = name

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until ICE and DTLS are up; ClientError if they fail or take too long."""
        limit = timeout or self.timeout
        connected = asyncio.ensure_future(self.connected.wait())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait([connected, ended], timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            ended.cancel()
        if not self.connected.is_set():
            state = self.pc.connectionState if self.pc else "closed"
            raise ClientError(
                f"the media connection to {self.url} is {state} after {limit:g} s: ICE/DTLS did not "
                "complete (is UDP to the server blocked? does it need a TURN server?)"
            )
        for channel in self.channels.values():
            if not await channel.wait_open(limit):
                raise ClientError(f"data channel {channel.label!r} to {self.url} did not open within {limit:g} s "
                                  "(does the server answer data channels?)")

    def send(self, label: str, message: Message) -> None:
        """Send on the data channel `label` (opened with `data_channels=`); ClientError if it is not open."""
        channel = self.channels.get(label)
        if channel is None:
            raise ClientError(f"no data channel {label!r}: open it with data_channels=[{label!r}, ...]")
        try:
            channel.send(message)
        except ChannelClosed as exc:
            raise ClientError(str(exc)) from None

    async def recv(self, label: str) -> Message:
        """The next message on the data channel `label`; ClientError once it closed."""
        try:
            return await self.channels[label].recv()
        except ChannelClosed as exc:
            raise ClientError(str(exc)) from None

    async def trickle(self, candidates: list[str], end: bool = True) -> bool:
        """PATCH extra candidates (RFC 8840 lines such as "candidate:...") to the session.

        aiortc puts every candidate into the offer, so this is only needed for
        candidates found elsewhere. Returns False, sending nothing, when the
        server did not advertise trickle ICE in the 201's Accept-Patch.
        """
        if not self.location or SDPFRAG not in (self.accept_patch or ""):
            return False
        assert self.pc is not None
        local = self.pc.localDescription.sdp
        ice = [line for line in local.splitlines() if line.startswith(("a=ice-ufrag:", "a=ice-pwd:"))]
        media = next(m for m in SessionDescription.parse(local).media)
        lines = ice[:2] + [f"m={media.kind} 9 {media.profile} {' '.join(str(f) for f in media.fmt)}",
                           f"a=mid:{media.rtp.muxId}"]
        lines += [c if c.startswith("a=") else f"a={c}" for c in candidates]
        if end:
            lines.append("a=end-of-candidates")
        await self._request("PATCH", self.location, "\r\n".join(lines) + "\r\n", SDPFRAG)
        return True

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a task that lives as long as the client."""
        self._tasks.spawn(coro)

    async def close(self) -> None:
        """DELETE the session (if any) and release the peer connection; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        location, self.location = self.location, None
        try:
            if location and self._http is not None:
                try:
                    async with self._http.delete(
                        location, headers=self._headers(),
                        timeout=aiohttp.ClientTimeout(total=min(self.timeout, SHORT_TIMEOUT)),
                    ) as response:
                        if response.status >= 300 and response.status != 404:
                            log.warning("DELETE %s: HTTP %d", location, response.status)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    log.warning("DELETE %s failed: %s", location, exc or type(exc).__name__)
        finally:
            self._tasks.cancel()
            if self.pc is not None:
                await self.pc.close()
            self.ended.set()
            if self._http is not None:
                await self._http.close()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


