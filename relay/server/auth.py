"""Per-stream publish and view tokens (RFC 9725 §4.7, WHEP §4.9.1).

A stream's token is its own override from `auth.streams`, else the default
for all streams. The config may hold a token itself or `sha256:<hex>` of it,
so the file need not hold a secret. Presented tokens are hashed and compared
with `hmac.compare_digest`, so the time taken says nothing about the secret.

A stream's metadata (its name in `/api/streams`, `/api/events` and the labels
of `/metrics`) needs its view token too. `auth.metrics_token`, the operator's
token, shows every stream's metadata and metrics (it is no view or publish token).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger

from relay.config import AuthConfig
from relay.names import HASH_PREFIX
from relay.server.endpoint import stream_name
from relay.server.problems import Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TOKEN_QUERY = re.compile(r"([?&]token=)[^&#\s]*")
# Who may use each protocol: WHIP publishes, WHEP views.
ROLE = {"whip": "publish", "whep": "view"}


# The settings `refusal` checks against, handed over by `setup` (auth needs nothing else of the app).
AUTH = web.AppKey("auth", AuthConfig)


def setup(app: web.Application, auth: AuthConfig) -> None:
    app[AUTH] = auth


# A token the server made for its own children (bot processes): valid to publish and view any stream.
INTERNAL = web.AppKey("internal_token", str)


def add_internal_token(app: web.Application, token: str) -> None:
    app[INTERNAL] = token


def _digest(configured: str) -> bytes:
    if configured.startswith(HASH_PREFIX):
        return bytes.fromhex(configured[len(HASH_PREFIX):])
    return hashlib.sha256(configured.encode()).digest()


def required_token(auth: AuthConfig, stream: str, role: str) -> str | None:
    """The token configured for `role` ("publish" or "view") on `stream`, or None."""
    key = f"{role}_token"
    override = auth.streams.get(stream)
    own = getattr(override, key) if override else None
    return own if own is not None else getattr(auth, key)


def publishing_open(auth: AuthConfig) -> bool:
    """Whether some stream name can be published to without any token."""
    return auth.open_publish and auth.publish_token is None


def presented_token(request: web.Request) -> str | None:
    """`Authorization: Bearer x`, bare `Authorization: x`, or `?token=x`."""
    header = request.headers.get("Authorization", "").strip()
    if header:
        scheme, _, rest = header.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest.strip() else header
    return request.query.get("token") or None


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = 'Bearer realm="relay"' + (f', error="{error}"' if error else "")
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def refusal(request: web.Request, stream: str, role: str) -> Problem | None:
    """The 401/403 problem if the request may not `role` ("publish"/"view") `stream`, else None."""
    auth = request.app[AUTH]
    expected = required_token(auth, stream, role)
    internal, token = request.app.get(INTERNAL), presented_token(request)
    if internal is not None and token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), internal.encode()):
        return None
    if expected is None:
        if role == "view" or auth.open_publish:
            return None
        return Problem(403, "publishing-closed",
                       f"no publish token is configured for stream {stream!r} and auth.open_publish is false; "
                       "ask the operator to set auth.publish_token or auth.streams.<name>.publish_token")
    if token is None:
        return _unauthorized(f"stream {stream!r} needs a {role} token: send 'Authorization: Bearer <token>' "
                             "or add ?token=<token> to the URL")
    if not _matches(token, expected):
        return _unauthorized(f"the token is not valid to {role} stream {stream!r}", "invalid_token")
    return None


def _matches(token: str, configured: str) -> bool:
    presented = token.encode("utf-8", "surrogatepass")  # headers with invalid UTF-8 arrive with surrogates
    return hmac.compare_digest(hashlib.sha256(presented).digest(), _digest(configured))


def is_operator(request: web.Request) -> bool:
    """The request presents `auth.metrics_token`: it may see every stream's metadata and metrics."""
    expected, token = request.app[AUTH].metrics_token, presented_token(request)
    return expected is not None and token is not None and _matches(token, expected)


def visible_streams(request: web.Request) -> Callable[[str], bool]:
    """Whose metadata the request may see: the streams it may view, or all with the operator token."""
    if is_operator(request):
        return lambda stream: True
    return lambda stream: refusal(request, stream, "view") is None


def metrics_streams(request: web.Request) -> Callable[[str], bool]:
    """Whose per-stream series /metrics shows: the streams without a view token, or all with the operator token."""
    if is_operator(request):
        return lambda stream: True
    config = request.app[AUTH]
    return lambda stream: required_token(config, stream, "view") is None


def require(request: web.Request, stream: str, role: str) -> None:
    """Raise the 401/403 problem unless the request may `role` `stream`."""
    problem = refusal(request, stream, role)
    if problem is not None:
        raise problem


def protected(role: str) -> Callable[[Handler], Handler]:
    """Decorate a handler of a `{stream}` route so it runs only for holders of the `role` token."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            require(request, stream_name(request), role)
            return await handler(request)

        return guarded

    return wrap


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(text: str) -> str:
    """Hide `?token=` values, so access logs hold no secret."""
    return _TOKEN_QUERY.sub(r"\1***", text)


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log without the tokens some clients put in URLs (request line, Referer)."""

    def _format_line(self, request: web.BaseRequest, response: web.StreamResponse,
                     time: float) -> list[tuple[Any, Any]]:
        return [(key, redact(value) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)]
