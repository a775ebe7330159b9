"""Thousands of malformed requests: never a 5xx, every error a problem+json body, nothing left behind.

Hypothesis draws batches of requests (garbage and mutated SDP, wrong content
types, oversize bodies, bad PATCH fragments, unknown sessions, bad tokens,
path tricks in stream names) and sends them to one in-process server over
real HTTP. A few offers are valid, so real sessions are made and unmade too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from relay.config import load_config
from relay.names import hash_token
from relay.server.app import create_app
from relay.server.context import CONTEXT, Context

from .conftest import LOOPBACK, merge
from .test_http_errors import make_offer
from .test_lifecycle import assert_nothing_left

BATCHES = 100
BATCH = 20  # BATCHES x BATCH >= 2,000 requests
MAX_BODY = 4096
TOKENS = {"publish": "pub-token", "view": "view-token"}
SETTINGS = {
    "server": {"max_body_bytes": MAX_BODY},
    "limits": {"requests_per_second": 0},  # test_limits covers 429; here every request reaches a handler
    "auth": {"streams": {"locked": {"publish_token": hash_token(TOKENS["publish"]), "view_token": TOKENS["view"]}}},
}

STREAM_NAMES = ["cam", "locked", "a" * 64, "a" * 65, "..", "%2e%2e", ".", "a.b", "a%2Fb", "a%00b", "%C3%BC",
                "-", "_x_", "%20", "CON", "cam%3Ftoken=x", "cam;x=1", "~root", "a" * 500, "%25"]
SDP_LINES = ["v=0", "v=1", "o=- 1 1 IN IP4 0.0.0.0", "o=", "s=-", "t=0 0", "c=IN IP4 0.0.0.0",
             "m=video 9 UDP/TLS/RTP/SAVPF 96", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 0 RTP/AVP 96",
             "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "m=video x y z", "m=",
             "a=rtpmap:96 VP8/90000", "a=rtpmap:96 H264/90000", "a=rtpmap:111 opus/48000/2", "a=rtpmap:x",
             "a=fmtp:96 packetization-mode=1", "a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv",
             "a=mid:0", "a=mid:", "a=group:BUNDLE 0 1", "a=ice-ufrag:abcd", "a=ice-pwd:0123456789012345678901",
             "a=fingerprint:sha-256 00:11", "a=setup:actpass", "a=setup:bogus", "a=rtcp-mux",
             "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "a=ssrc:1 cname:x", "a=msid:- x"]
FRAGMENT_LINES = ["a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "a=candidate:garbage",
                  "a=candidate:1 0 udp 1 ::1 9 typ host", "a=candidate:1 1 udp 1 [::1] 9 typ host",
                  "a=candidate:1 1 tcp 1 127.0.0.1 9 typ host tcptype active", "a=candidate:",
                  "a=end-of-candidates", "a=ice-ufrag:abcd", "a=ice-pwd:0123456789012345678901",
                  "m=audio 9 RTP/AVP 0", "a=mid:0", "a=mid:7", "x", ""]
CONTENT_TYPES = [None, "application/sdp", "application/trickle-ice-sdpfrag", "text/plain", "application/json",
                 "application/sdp; charset=utf-8", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
OTHER_PATHS = ["/api/streams", "/api/streams/{s}", "/api/recordings", "/api/recordings?stream={s}",
               "/api/recordings/{s}/20250101T000000.000Z.webm", "/api/recordings/{s}/..%2F..%2Fetc%2Fpasswd",
               "/api/streams/{s}/recording", "/api/streams/{s}/events", "/api/streams/{s}/events/nokey",
               "/metrics", "/healthz", "/readyz", "/api/openapi.json", "/static/..%2F..%2Fetc%2Fpasswd",
               "/watch/{s}", "/publish/{s}", "/", "/nothing", "//whip//", "/whip", "/whep/"]


@dataclass
class Req:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    live_session: bool = False  # PATCH/DELETE a session made earlier in the batch
    raw_authorization: bytes | None = None  # not UTF-8: sent over a raw socket, as no HTTP client would

    def __repr__(self) -> str:  # what a failure report shows
        body = self.body if self.body is None or len(self.body) < 120 else self.body[:120] + b"..."
        return (f"Req({self.method} {self.path} {self.headers} live={self.live_session} "
                f"raw={self.raw_authorization!r} {body!r})")


@dataclass
class Offers:
    whip: str
    whep: str


def mutate(offer: str, data: st.DataObject) -> str:
    lines = offer.split("\r\n")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        how = data.draw(st.sampled_from(["drop", "replace", "truncate", "duplicate"]))
        if how == "drop":
            del lines[i]
        elif how == "replace":
            lines[i] = data.draw(st.sampled_from(SDP_LINES) | st.text(max_size=40))
        elif how == "truncate":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
        else:
            lines.insert(i, lines[i])
        if not lines:
            lines = [""]
    return "\r\n".join(lines)


@st.composite
def bodies(draw: st.DrawFn, offers: Offers, kind: str) -> bytes:
    choice = draw(st.sampled_from(["valid", "mutated", "mutated", "lines", "lines", "text", "binary", "huge", "empty"]))
    offer = offers.whip if kind == "whip" else offers.whep
    if choice == "valid" and draw(st.integers(0, 3)) == 0:  # real peer connections: keep them few
        return offer.encode()
    if choice in ("valid", "mutated"):
        return mutate(offer, draw(st.data())).encode()
    if choice == "lines":
        lines = draw(st.lists(st.sampled_from(SDP_LINES), max_size=15))
        return draw(st.sampled_from(["\r\n", "\n"])).join(lines).encode()
    if choice == "text":
        return draw(st.text(max_size=200)).encode()
    if choice == "binary":
        return draw(st.binary(max_size=200))
    if choice == "huge":
        return b"v=0\r\n" + b"a=x\r\n" * draw(st.integers(MAX_BODY // 5, MAX_BODY))
    return b""


@st.composite
def auth_headers(draw: st.DrawFn, role: str) -> tuple[dict[str, str], str]:
    """Headers and a query string carrying a good, bad or missing token in one of the accepted forms."""
    token = draw(st.sampled_from([TOKENS[role], TOKENS["view" if role == "publish" else "publish"], "",
                                  "x" * 300, hash_token(TOKENS[role]), "bad token", "\u00e9",
                                  "\udcff\udcfe"]))  # raw bytes that are not UTF-8
    form = draw(st.sampled_from(["none", "bearer", "bare", "query", "basic"]))
    if form == "none":
        return {}, ""
    if form == "query":
        return {}, "?token=" + quote(token, safe="", errors="surrogateescape")
    value = {"bearer": f"Bearer {token}", "bare": token, "basic": f"Basic {token}"}[form]
    return {"Authorization": value}, ""


# Header bytes HTTP allows (obs-text included) but that need not be UTF-8.
HEADER_BYTES = st.binary(min_size=1, max_size=30).map(lambda b: bytes(c if c >= 0x20 and c != 0x7F else 0x41 for c in b))


@st.composite
def requests(draw: st.DrawFn, offers: Offers) -> Req:
    if draw(st.integers(0, 9)) == 0:  # raw header bytes, on a stream that checks tokens
        req = draw(requests_to(offers, "locked"))
        req.raw_authorization = draw(st.sampled_from([b"Bearer ", b"", b"Basic "])) + draw(HEADER_BYTES)
        req.headers.pop("Authorization", None)
        return req
    return draw(requests_to(offers, draw(st.sampled_from(STREAM_NAMES))))


@st.composite
def requests_to(draw: st.DrawFn, offers: Offers, stream: str) -> Req:
    kind = draw(st.sampled_from(["whip", "whep"]))
    headers, query = draw(auth_headers("publish" if kind == "whip" else "view"))
    what = draw(st.sampled_from(["post", "post", "post", "patch", "patch", "session", "other", "method"]))
    right = "application/trickle-ice-sdpfrag" if what == "patch" else "application/sdp"
    content_type = draw(st.sampled_from([right, right] + CONTENT_TYPES))  # mostly right, to reach the parsers
    if content_type:
        headers["Content-Type"] = content_type
    if what == "post":
        return Req("POST", f"/{kind}/{stream}{query}", draw(bodies(offers, kind)), headers)
    if what == "patch":
        lines = draw(st.lists(st.sampled_from(FRAGMENT_LINES), max_size=8))
        if draw(st.booleans()):
            headers["If-Match"] = draw(st.sampled_from(["*", '"stale"', "garbage", '""']))
        session = draw(st.sampled_from(["nosuch", "A" * 24, "..", "%2e"]))
        return Req("PATCH", f"/{kind}/{stream}/{session}{query}", "\r\n".join(lines).encode(), headers,
                   live_session=draw(st.booleans()))
    if what == "session":
        method = draw(st.sampled_from(["DELETE", "GET", "HEAD", "OPTIONS", "PUT", "POST"]))
        return Req(method, f"/{kind}/{stream}/nosuch{query}", None, headers, live_session=draw(st.booleans()))
    if what == "other":
        path = draw(st.sampled_from(OTHER_PATHS)).format(s=stream)
        method = draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]))
        body = draw(st.sampled_from([None, b"[]", b'["active"]', b"{}", b"not json", b'["nope"]']))
        return Req(method, path, body, headers)
    # Not CONNECT: aiohttp's HTTP parser (below the app) takes what follows as tunnel bytes.
    method = draw(st.sampled_from(["PUT", "TRACE", "DELETE", "GET", "HEAD", "PROPFIND"]))
    return Req(method, f"/{kind}/{stream}{query}", draw(bodies(offers, kind)), headers)


class Harness:
    """One server on its own loop, a client session, and what the batches saw."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.sent = 0
        self.statuses: dict[int, int] = {}

    async def start(self) -> None:
        config = load_config(data=merge(merge(LOOPBACK, SETTINGS), {"recording": {"dir": str(self.tmp_path)}}))
        app = create_app(config)
        self.ctx: Context = app[CONTEXT]
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        self.offers = Offers(await make_offer("sendonly", "video/VP8"), await make_offer("recvonly"))

    async def stop(self) -> None:
        await self.http.close()
        await self.server.close()

    def token_for(self, location: str) -> dict[str, str]:
        role = "publish" if location.startswith("/whip/") else "view"
        return {"Authorization": f"Bearer {TOKENS[role]}"}

    async def send(self, req: Req, live: list[str]) -> None:
        path = req.path
        if req.live_session and live:
            path = live[-1] + path[path.find("?"):] if "?" in path else live[-1]
        if req.raw_authorization is None:
            url = URL(str(self.server.make_url("/")).rstrip("/") + path, encoded=True)
            async with self.http.request(req.method, url, data=req.body, headers=req.headers,
                                         allow_redirects=False) as response:
                body = await response.read()
                status, content_type = response.status, response.content_type
                location = response.headers.get("Location", "")
        else:
            status, content_type, location, body = await self.send_raw(req, path)
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        where = f"{req!r} to {path}"
        assert status < 500, f"{status} for {where}: {body[:300]!r}"
        if status >= 400:
            assert content_type == "application/problem+json", f"{status} {where}"
            if req.method != "HEAD":
                problem = json.loads(body)
                assert problem["status"] == status and problem["detail"], where
                assert problem["type"].startswith("urn:relay:problem:") and problem["title"], where
        if status == 201 and location.startswith(("/whip/", "/whep/")):
            live.append(location)

    async def send_raw(self, req: Req, path: str) -> tuple[int, str, str, bytes]:
        """One request written byte for byte; status, content type, Location and body of the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        body = req.body or b""
        head = [f"{req.method} {path} HTTP/1.1", "Host: relay", "Connection: close", f"Content-Length: {len(body)}",
                *(f"{name}: {value}" for name, value in req.headers.items())]
        writer.write("\r\n".join(head).encode() + b"\r\nAuthorization: " + (req.raw_authorization or b"")
                     + b"\r\n\r\n" + body)
        answer = await reader.read()
        writer.close()
        head_bytes, _, payload = answer.partition(b"\r\n\r\n")
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), fields.get("content-type", "").split(";")[0], fields.get("location", ""), payload

    async def batch(self, reqs: list[Req]) -> None:
        live: list[str] = []
        try:
            for req in reqs:
                await self.send(req, live)
        finally:
            for location in reversed(live):  # viewers first, then their publisher
                async with self.http.delete(self.server.make_url(location), headers=self.token_for(location)):
                    pass

    async def assert_clean(self) -> None:
        await asyncio.sleep(0.2)
        assert_nothing_left(self)


def test_malformed_requests(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    harness = Harness(tmp_path)
    loop.run_until_complete(harness.start())
    try:
        @settings(max_examples=BATCHES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.lists(requests(harness.offers), min_size=BATCH, max_size=BATCH + 5))
        def run(reqs: list[Req]) -> None:
            loop.run_until_complete(harness.batch(reqs))

        run()
        assert harness.sent >= BATCHES * BATCH
        assert harness.statuses.get(201, 0) > 0, f"no valid offer got through: {harness.statuses}"
        assert sum(n for s, n in harness.statuses.items() if 400 <= s < 500) > harness.sent // 2
        print(f"{harness.sent} requests: {sorted(harness.statuses.items())}")
        loop.run_until_complete(harness.assert_clean())
    finally:
        loop.run_until_complete(harness.stop())
        loop.close()
