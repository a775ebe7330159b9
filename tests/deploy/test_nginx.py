"""Behind nginx terminating TLS under /relay/, with docs/deploy.md's nginx server block and config.

Chromium publishes from https://SERVER_IP:PORT/relay/publish/cam (with the doc's publish token)
and plays from /relay/watch/cam: the pages, WHIP, WHEP, their Location and Link headers and
both event streams (the viewer count, the dashboard) all go through the proxy, and Relay counts
the client's address from X-Forwarded-For, not nginx's.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.cli.cert import make_certificate

from ..browser.conftest import assert_playing, page_errors, wait_js
from ..conftest import free_port, merge, poll_until, relay_with
from .conftest import SERVER_IP, doc_config, doc_snippet, require

TOKEN = "change-this-token"  # docs/deploy.md's publish token (its sha256 is in the config snippet)
HARNESS = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{server}
}}
"""


@pytest.fixture
def nginx_for(tmp_path: Path) -> Iterator[Any]:
    """Call it with Relay's port: nginx with the doc's server block on https://SERVER_IP:PORT, until the test ends."""
    binary = require("nginx")
    processes: list[subprocess.Popen[bytes]] = []

    async def start(relay_port: int) -> str:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        make_certificate([SERVER_IP], cert, key)
        port = free_port()
        server = doc_snippet("nginx", {
            "listen 443 ssl;": f"listen {SERVER_IP}:{port} ssl;",
            "/etc/letsencrypt/live/relay.example.org/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/relay.example.org/privkey.pem": str(key),
            "127.0.0.1:8080": f"127.0.0.1:{relay_port}",
        })
        conf = tmp_path / "nginx.conf"
        conf.write_text(HARNESS.format(dir=tmp_path, server=server))
        run = subprocess.run([binary, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        processes.append(subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp_path)]))
        origin = f"https://{SERVER_IP}:{port}"
        async with aiohttp.ClientSession() as http:  # Relay runs on this loop: wait without blocking it
            for _ in range(100):
                try:
                    async with http.get(f"{origin}/relay/api/streams", ssl=False) as response:
                        assert response.status == 200
                        return origin
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        raise AssertionError((tmp_path / "error.log").read_text()[-2000:])

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


async def test_pages_whip_whep_and_events_through_nginx_under_a_prefix(
        test_network: None, nginx_for: Any, new_page: Any) -> None:
    settings = merge(doc_config("config"), {"ice": {"host_addresses": [SERVER_IP]}})
    async with relay_with(settings) as relay:
        origin = await nginx_for(relay.server.port)
        base = f"{origin}/relay"

        dashboard = await new_page()
        await dashboard.goto(f"{base}/")
        # The dashboard's event stream through nginx is up before anything happens on the stream.
        await wait_js(dashboard, "document.querySelector('#updates').dataset.state === 'events'")
        publisher = await new_page()
        await publisher.goto(f"{base}/publish/cam?token={TOKEN}")
        await publisher.click("#start")
        await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
        viewer = await new_page()
        await viewer.goto(f"{base}/watch/cam")
        await assert_playing(viewer)

        resource = await viewer.evaluate("window.relayWatch.session.resourceUrl")
        events = await viewer.evaluate("window.relayWatch.session.eventsUrl")
        assert resource.startswith(f"{base}/whep/cam/") and events == f"{base}/api/streams/cam/events"
        await wait_js(viewer, "document.querySelector('#viewers').textContent.trim() === '1'")  # SSE
        await wait_js(dashboard, "document.querySelector('tr[data-stream=\"cam\"][data-live=\"true\"]')")
        assert await dashboard.evaluate(  # the dashboard's links stay under the prefix
            "document.querySelector('tr[data-stream=\"cam\"] a').href") == f"{base}/watch/cam"
        # nginx connects from 127.0.0.1; the browser reached it from SERVER_IP (X-Forwarded-For)
        assert {session.address for session in relay.ctx.sessions} == {SERVER_IP}

        await publisher.click("#stop")
        await wait_js(viewer, "window.relayWatch.state === 'waiting'")
        await poll_until(lambda: len(relay.ctx.sessions) == 0, timeout=10)
        for page in (dashboard, publisher, viewer):
            assert page_errors(page) == []
