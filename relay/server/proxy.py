"""Behind a reverse proxy: the client's address, and the path prefix Relay is served under.

Only a proxy listed in `server.trusted_proxies` is believed: its
`Forwarded` (RFC 7239) or `X-Forwarded-For` header names the client, so
the rate limiter and the per-address pending limit count clients, not the
proxy. The address is read from the right, skipping trusted proxies: the
first one that is not trusted is the client (anything left of it may be
forged). Its `X-Forwarded-Prefix` (or `server.base_path`) is the prefix that
Location and Link headers and the pages' links carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.config import BASE_PATH, ServerConfig

PREFIX = web.RequestKey("base_path", str)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a Forwarded `for=` or X-Forwarded-For entry: "[v6]:port", "v4:port" or bare."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated identifier (RFC 7239 §6.3), garbage


class TrustedProxies:
    def __init__(self, networks: list[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, address: str | None) -> bool:
        ip = _address(address or "")
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, request: web.Request) -> str | None:
        """The client's address by the trusted proxies' headers, or None to keep the peer's."""
        if not self.networks or not self.trusts(request.remote):
            return None
        if request.headers.get("Forwarded"):
            hops = [entry["for"] for entry in request.forwarded if "for" in entry]
        else:
            hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:
                return None  # cannot tell who it is: the proxy's own address stays
            if not self.trusts(str(ip)):
                return str(ip)
        return None


def proxy_middleware(server: ServerConfig) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The request as the client made it: its address and its path prefix."""
    proxies = TrustedProxies(server.trusted_proxies)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        prefix = server.base_path
        if proxies.trusts(request.remote):
            forwarded = request.headers.get("X-Forwarded-Prefix", "").rstrip("/")
            if BASE_PATH.fullmatch(forwarded):
                prefix = forwarded
            client = proxies.client(request)
            if client is not None:
                request = request.clone(remote=client)
        request[PREFIX] = prefix
        return await handler(request)

    return middleware


def base_path(request: web.Request) -> str:
    """The path prefix Relay is served under for this request ("" when none)."""
    return str(request.get(PREFIX, ""))
