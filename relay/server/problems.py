"""RFC 9457 problem details: every error a client can cause says what to fix."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from aiohttp import web

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class Problem(web.HTTPException):
    """An HTTP error with a problem+json body; raise it from any handler."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        self.status_code = status
        super().__init__(headers=headers)
        self.slug = slug
        body = {
            "type": f"urn:relay:problem:{slug}",
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        }
        self.text = json.dumps(body)
        self.content_type = PROBLEM_TYPE


_AIOHTTP_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turns aiohttp's own errors and any crash into problem bodies; a crash is a 500, logged."""
    try:
        return await handler(request)
    except Problem:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {
            404: f"there is no resource at {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is too large",
        }.get(exc.status, exc.reason)
        raise Problem(exc.status, _AIOHTTP_SLUGS.get(exc.status, "http-error"), detail,
                      headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}) from None
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        raise Problem(500, "internal-error", "Relay failed to handle this request; see the server log") from None
