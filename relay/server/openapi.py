"""The OpenAPI 3.1 description of every HTTP route, served at /api/openapi.json.

tests/server/test_openapi.py compares it with the app's router: a route added
without its entry here (or an entry whose route is gone) fails the suite.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import __version__
from relay.names import STREAM_NAME
from relay.sdp import SDP, SDPFRAG
from relay.server.problems import PROBLEM_TYPE

Doc = dict[str, Any]

PROBLEM = PROBLEM_TYPE

STATUS_TEXT = {
    400: "Bad request (the problem's detail says what to fix)",
    401: "Missing or wrong token (`WWW-Authenticate: Bearer realm=\"relay\"`)",
    403: "Publishing is closed for this stream (no token configured, auth.open_publish false)",
    404: "No such resource",
    409: "Conflict with the current state",
    412: "If-Match does not match the session's ETag",
    413: "Body larger than server.max_body_bytes",
    415: "Wrong Content-Type",
    422: "Understood but not possible (codec, ICE restart)",
    429: "Too many POST/PATCH requests from this address (Retry-After)",
    503: "Full or shutting down (Retry-After)",
}


def problems(*statuses: int) -> Doc:
    return {str(s): {"$ref": f"#/components/responses/{s}"} for s in statuses}


def ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Doc, description: str) -> Doc:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text(content_type: str, description: str) -> Doc:
    return {"description": description, "content": {content_type: {"schema": {"type": "string"}}}}


def common(name: str) -> Doc:
    """A parameter from components: stream, session or token."""
    return {"$ref": f"#/components/parameters/{name}"}


def path_param(name: str, description: str) -> Doc:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


PARAMETERS: Doc = {
    "stream": {"name": "stream", "in": "path", "required": True,
               "description": "Stream name: 1-64 letters, digits, '_' or '-'",
               "schema": {"type": "string", "pattern": f"^{STREAM_NAME.pattern}$"}},
    "session": {"name": "session", "in": "path", "required": True,
                "description": "Session id from the Location of the 201", "schema": {"type": "string"}},
    "token": {"name": "token", "in": "query", "required": False,
              "description": "The stream's token, for clients that cannot send Authorization",
              "schema": {"type": "string"}},
}
# Optional: only when a token is configured for the stream.
TOKEN: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"query": []}]
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}


def protocol(kind: str) -> Doc:
    """WHIP (RFC 9725) or WHEP (draft-ietf-wish-whep-04): the same resources, opposite directions."""
    publish = kind == "whip"
    role = "publish" if publish else "view"
    what = "Publish a stream (WHIP)" if publish else "Watch a stream (WHEP)"
    offered = "sendonly" if publish else "recvonly"
    created = {
        "description": "Session created; the body is the SDP answer with all of Relay's candidates",
        "headers": {
            "Location": {"schema": {"type": "string"}, "description": "The session URL (PATCH, DELETE)"},
            "ETag": {"schema": {"type": "string"}},
            "Accept-Patch": {"schema": {"type": "string", "const": SDPFRAG}},
            "Link": {"schema": {"type": "string"},
                     "description": 'STUN/TURN servers as rel="ice-server"' + (
                         "" if publish else "; the server-sent-events extension")},
        },
        "content": {SDP: {"schema": {"type": "string"}}},
    }
    post_errors = (400, 401, 403, 409, 413, 415, 422, 429, 503) if publish else (400, 401, 409, 413, 415, 422, 429, 503)
    endpoint = {
        "parameters": [common("stream"), common("token")],
        "post": {
            "summary": f"{what}: POST an SDP offer ({offered})",
            "operationId": f"{kind}Offer",
            "tags": [kind.upper()],
            "security": TOKEN,
            "requestBody": {"required": True, "content": {SDP: {"schema": {"type": "string"}}}},
            "responses": {"201": created, **problems(*post_errors)},
            "description": f"Needs the stream's {role} token when one is configured."
            + ("" if publish else " 409 with Retry-After while nobody publishes."),
        },
        "options": {"summary": "CORS preflight; Accept-Post", "operationId": f"{kind}Options", "tags": [kind.upper()],
                    "responses": {"204": {"description": "Allowed", "headers": {
                        "Accept-Post": {"schema": {"type": "string", "const": SDP}}}}}},
        "get": {"summary": "2xx with no content (RFC 9725 §4.1)", "operationId": f"{kind}Get", "tags": [kind.upper()],
                "responses": {"204": {"description": "No content"}}},
        "head": {"summary": "Discovery: 200 with Content-Type application/sdp (WHEP §4.2)",
                 "operationId": f"{kind}Head", "tags": [kind.upper()],
                 "responses": {"200": {"description": "A WHIP/WHEP endpoint"}}},
    }
    session = {
        "parameters": [common("stream"), common("session"), common("token")],
        "patch": {
            "summary": "Trickle ICE candidates (an ICE restart gets 422)",
            "operationId": f"{kind}Trickle", "tags": [kind.upper()], "security": TOKEN,
            "parameters": [{"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {SDPFRAG: {"schema": {"type": "string"}}}},
            "responses": {"204": {"description": "Candidates taken (lines aiortc cannot use are skipped)"},
                          **problems(400, 401, 404, 412, 413, 415, 422, 429)},
        },
        "delete": {"summary": "End the session", "operationId": f"{kind}Delete", "tags": [kind.upper()],
                   "security": TOKEN,
                   "responses": {"200": {"description": "Ended (also for a session that already ended)"},
                                 **problems(401, 404)}},
        "get": {"summary": "2xx with no content while the session exists", "operationId": f"{kind}SessionGet",
                "tags": [kind.upper()], "security": TOKEN,
                "responses": {"204": {"description": "The session exists"}, **problems(401, 404)}},
        "options": {"summary": "CORS preflight; Accept-Patch", "operationId": f"{kind}SessionOptions",
                    "tags": [kind.upper()], "responses": {"204": {"description": "Allowed"}}},
    }
    return {f"/{kind}/{{stream}}": endpoint, f"/{kind}/{{stream}}/{{session}}": session}


def get(summary: str, operation: str, tag: str, ok: Doc, *errors: int, **extra: Any) -> Doc:
    return {"get": {"summary": summary, "operationId": operation, "tags": [tag],
                    "responses": {"200": ok, **problems(*errors)}, **extra}}


def page(name: str, operation: str, with_stream: bool) -> Doc:
    doc = get(f"The {name} page (HTML)", operation, "Pages", text("text/html", "The page"),
              *((400,) if with_stream else ()))
    if with_stream:
        doc["parameters"] = [common("stream")]
    return doc


def data_paths(sse: Doc) -> Doc:
    """Data channels and the chat over HTTP (relay/server/data_api.py)."""
    label = path_param("label", "Data channel label (not `chat`)")
    chat_message = {"type": "object", "required": ["name", "text"], "properties": {
        "name": {"type": "string", "description": "Display name: 1-32 letters, digits, spaces, . _ -"},
        "text": {"type": "string", "description": "At most chat.max_length characters"}}}
    return {
        "/api/streams/{stream}/data/{label}": {
            "parameters": [common("stream"), label, common("token")],
            "post": {"summary": "Send a message to every viewer channel of the label, as the publisher (publish token)",
                     "operationId": "sendData", "tags": ["Data"], "security": TOKEN,
                     "requestBody": {"required": True, "content": {
                         "text/plain": {"schema": {"type": "string"}}, "application/json": {},
                         "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                     "responses": {"204": {"description": "Sent to every viewer channel of the label"},
                                   **problems(400, 401, 403, 404, 409, 413, 415, 429)}},
            **get("The label's messages as server-sent events (`message`; `binary` in base64)", "readData",
                  "Data", sse, 400, 401, 404, security=TOKEN)},
        "/api/streams/{stream}/chat": {
            "parameters": [common("stream"), common("token")],
            **get("The chat as server-sent events of stamped JSON messages, the history first", "readChat",
                  "Data", sse, 400, 401, 404, security=TOKEN),
            "post": {"summary": "Say something in the chat (view token); the same limits as on the data channel",
                     "operationId": "sayChat", "tags": ["Data"], "security": TOKEN,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": chat_message}}},
                     "responses": {"200": json_body({"type": "object"}, "The message as everyone got it"),
                                   **problems(400, 401, 403, 404, 409, 413, 415, 429)}},
            "delete": {"summary": "Clear the chat's history (publish token)", "operationId": "clearChat",
                       "tags": ["Data"], "security": TOKEN,
                       "responses": {"204": {"description": "Cleared"}, **problems(400, 401, 403, 404)}},
        },
    }


def document() -> Doc:
    stream_path = {"parameters": [common("stream")]}
    recording_file = {"parameters": [
        common("stream"), path_param("file", "Recording file name, e.g. 20250102T030405.678Z.webm"), common("token")]}
    sse = text("text/event-stream", "Server-sent events until the client goes away")
    paths: Doc = {
        **protocol("whip"),
        **protocol("whep"),
        "/api/streams": get("Every stream Relay knows, live or recently offline, that the token may view "
                            "(auth.metrics_token: all)", "listStreams", "Streams",
                            json_body({"type": "object", "properties": {"streams": {
                                "type": "array", "items": ref("Stream")}}}, "The streams"),
                            parameters=[common("token")], security=TOKEN),
        "/api/streams/{stream}": {"parameters": [common("stream"), common("token")], **get(
            "One stream (its view token or auth.metrics_token needed when it has one)", "getStream", "Streams",
            json_body(ref("Stream"), "The stream"), 400, 401, 404, security=TOKEN)},
        "/api/events": get("The list of streams the token may view whenever it changes (event `streams`), "
                           "for dashboards", "streamEvents", "Events", sse,
                           parameters=[common("token")], security=TOKEN),
        "/api/streams/{stream}/events": {**stream_path, "post": {
            "summary": "Subscribe to a stream's events (WHEP server-sent-events extension)",
            "operationId": "subscribe", "tags": ["Events"], "security": TOKEN,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "array", "items": {"type": "string", "enum": ["active", "inactive", "viewercount"]}}}}},
            "responses": {"201": {"description": "Subscribed", "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The event stream to GET"}}},
                **problems(400, 401, 429)}}},
        "/api/streams/{stream}/events/{key}": {
            "parameters": [common("stream"), path_param("key", "Subscription key from the Location")],
            **get("A stream's events: active, inactive, viewercount", "streamEventsOf", "Events", sse, 400, 404)},
        "/api/streams/{stream}/recording": {
            "parameters": [common("stream"), common("token")],
            "post": {"summary": "Start recording the stream (now, and whenever it is live until stopped)",
                     "operationId": "startRecording", "tags": ["Recordings"], "security": TOKEN,
                     "responses": {"200": json_body(ref("RecordingState"), "The stream's recording state"),
                                   **problems(400, 401, 403, 429)}},
            "delete": {"summary": "Stop recording the stream", "operationId": "stopRecording",
                       "tags": ["Recordings"], "security": TOKEN,
                       "responses": {"200": json_body(ref("RecordingState"), "The stream's recording state"),
                                     **problems(400, 401, 403)}},
        },
        "/api/recordings": get(
            "Recording files the token may view, newest first", "listRecordings", "Recordings",
            json_body({"type": "object", "properties": {"recordings": {"type": "array", "items": ref("Recording")}}},
                      "The files"), 400, 401,
            parameters=[{"name": "stream", "in": "query", "required": False, "schema": {"type": "string"}},
                        common("token")], security=TOKEN),
        "/api/recordings/{stream}/{file}": {
            **recording_file,
            **get("Download a recording (Range requests for seeking)", "downloadRecording", "Recordings",
                  {"description": "The file", "content": {"video/webm": {}, "video/mp4": {}}},
                  400, 401, 404, security=TOKEN),
            "delete": {"summary": "Delete a finished recording", "operationId": "deleteRecording",
                       "tags": ["Recordings"], "security": TOKEN,
                       "responses": {"204": {"description": "Deleted"}, **problems(400, 401, 403, 404, 409)}},
        },
        **data_paths(sse),
        "/healthz": get("Alive", "healthz", "Operations", json_body({"type": "object"}, "Alive")),
        "/readyz": get("Taking new sessions (503 while shutting down)", "readyz", "Operations",
                       json_body({"type": "object"}, "Ready"), 503),
        "/metrics": get("Prometheus metrics; per-stream series of streams with a view token only with "
                        "auth.metrics_token", "metrics", "Operations", text("text/plain", "Text exposition format"),
                        parameters=[common("token")], security=TOKEN),
        "/api/openapi.json": get("This document", "openapi", "Operations", json_body({"type": "object"}, "OpenAPI")),
        "/": page("dashboard", "dashboardPage", False),
        "/publish/{stream}": page("publish", "publishPage", True),
        "/watch/{stream}": page("watch", "watchPage", True),
        "/static/{file}": {"parameters": [path_param("file", "File in web/")],
                           **get("The pages' scripts, styles and icons", "static", "Pages",
                                 {"description": "The file"}, 404)},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Relay",
            "version": __version__,
            "description": "WebRTC broadcast relay: WHIP in, WHEP out, forwarded without re-encoding. "
                           "Every error is an RFC 9457 application/problem+json body.",
        },
        "paths": paths,
        "components": {
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "The stream's publish or view token; a bare Authorization value works too"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "responses": {str(status): {
                "description": description,
                "headers": RETRY_AFTER if status in (409, 429, 503) else {},
                "content": {PROBLEM: {"schema": ref("Problem")}},
            } for status, description in STATUS_TEXT.items()},
            "schemas": SCHEMAS,
        },
    }


SCHEMAS: Doc = {
    "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
        "type": {"type": "string", "description": "urn:relay:problem:<slug>"},
        "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What to fix"}}},
    "Stream": {"type": "object", "properties": {
        "name": {"type": "string"}, "live": {"type": "boolean"},
        "since": {"type": ["string", "null"], "format": "date-time"},
        "uptime_s": {"type": "number"},
        "video": {"type": ["object", "null"], "properties": {
            "codec": {"type": "string"}, "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]}}},
        "audio": {"type": ["object", "null"], "properties": {"codec": {"type": "string"}}},
        "bitrate_in": {"type": "integer"}, "bitrate_out": {"type": "integer"},
        "viewers": {"type": "integer"},
        "recording": {"type": "boolean", "description": "A file is being written"},
        "recording_error": {"type": ["string", "null"],
                            "description": "Why recording last failed (e.g. a full disk), until a file works again"},
        "bots": {"type": "array", "description": "The media bots on this stream (config `bots:`)", "items": {
            "type": "object", "properties": {
                "name": {"type": "string"}, "output": {"type": ["string", "null"]},
                "state": {"type": "string", "enum": ["starting", "running", "crashed", "stopped"]},
                "frames": {"type": "integer"}, "drops": {"type": "integer",
                                                         "description": "Frames missed while busy"},
                "crashes": {"type": "integer"}, "messages": {"type": "integer"}, "fps": {"type": "number"},
                "lag_ms": {"type": ["number", "null"], "description": "Frame decoded to bot done"},
                "last_error": {"type": ["string", "null"]}}}},
        "bot_process": {"type": "object", "description": "The process running this stream's bots", "properties": {
            "pid": {"type": ["integer", "null"]}, "running": {"type": "boolean"},
            "restarts": {"type": "integer"}, "last_exit": {"type": ["integer", "null"]}}},
        "made_by": {"type": "object", "description": "This stream is a bot's output",
                    "properties": {"bot": {"type": "string"}, "stream": {"type": "string"}}},
        "chat": {"type": "object", "properties": {
            "enabled": {"type": "boolean"}, "participants": {"type": "array", "items": {"type": "string"},
                                                             "description": "Display names of who joined"},
            "readers": {"type": "integer", "description": "Chat channels and HTTP readers"}}},
        "data": {"type": "object", "properties": {"labels": {
            "type": "object", "additionalProperties": {"type": "integer"},
            "description": "Viewer data channels open, by label"}}}}},
    "RecordingState": {"type": "object", "properties": {
        "stream": {"type": "string"}, "enabled": {"type": "boolean"}, "live": {"type": "boolean"},
        "recording": {"type": "boolean"}, "error": {"type": ["string", "null"]},
        "file": {"type": ["string", "null"]}}},
    "Recording": {"type": "object", "properties": {
        "stream": {"type": "string"}, "file": {"type": "string"}, "url": {"type": "string"},
        "media_type": {"type": "string"}, "start": {"type": "string", "format": "date-time"},
        "duration": {"type": ["number", "null"]}, "size": {"type": "integer"},
        "codecs": {"type": "object"}, "recording": {"type": "boolean"},
        "error": {"type": ["string", "null"], "description": "Why writing this file failed (it is cut short)"}}},
}

DOCUMENT = web.AppKey("openapi", dict)


async def serve(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOCUMENT])


def add_routes(app: web.Application) -> None:
    app[DOCUMENT] = document()
    app.router.add_get("/api/openapi.json", serve)
