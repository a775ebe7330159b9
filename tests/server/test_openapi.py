"""/api/openapi.json describes exactly the routes the app registers, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from openapi_spec_validator import validate

from relay.server.openapi import document

from ..conftest import RunningRelay

METHODS = {"get", "head", "post", "put", "patch", "delete", "options", "trace"}


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(path template, method) for every route the app registers."""
    return {(route.resource.canonical, route.method.lower()) for route in app.router.routes()}


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in METHODS}


async def test_the_document_matches_the_router(relay: RunningRelay) -> None:
    routes, doc = routed(relay.server.app), documented(document())
    # aiohttp adds HEAD to every GET: that HEAD is implied by the documented GET.
    implied = {(path, "head") for path, method in doc if method == "get"}
    assert sorted(routes - doc - implied) == [], "routes missing from relay/server/openapi.py"
    assert sorted(doc - routes) == [], "relay/server/openapi.py documents routes the app does not have"


async def test_the_document_is_valid_and_served(relay: RunningRelay) -> None:
    doc = document()
    validate(doc)
    async with aiohttp.ClientSession() as http, http.get(relay.url("/api/openapi.json")) as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.json() == doc
    whip = doc["paths"]["/whip/{stream}"]["post"]
    assert {"201", "401", "413", "415", "429", "503"} <= set(whip["responses"])
    assert doc["components"]["responses"]["401"]["content"]["application/problem+json"]
