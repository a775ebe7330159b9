"""TURN through a real coturn: a Chromium viewer allowed only relay candidates plays through it.

Relay hands its `ice.servers` to clients in `Link: <turn:...>; rel="ice-server"; username=...;
credential=...; credential-type="password"` headers (RFC 9725 §4.6); the watch page's `?ice=relay`
reads them with an OPTIONS before it gathers, as a relay-only peer must.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.proc import stop_process
from relay.client import WhipClient
from relay.client.testpattern import TestPatternTrack, ToneTrack

from ..browser.conftest import assert_playing, page_errors
from ..conftest import merge, poll_until, relay_with, request
from .conftest import SERVER_IP, doc_config, doc_snippet, require

TURN_PORT = 3478
USER, PASSWORD = "relay", "change-this-secret"  # as docs/deploy.md has them
TURN_URL = f"turn:{SERVER_IP}:{TURN_PORT}?transport=udp"

SELECTED_PAIR_JS = """
async () => {
  const stats = [...(await window.relayWatch.pc.getStats()).values()];
  const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport && stats.find((s) => s.id === transport.selectedCandidatePairId);
  const local = pair && stats.find((s) => s.id === pair.localCandidateId);
  return local ? [local.candidateType, local.address || local.ip] : null;
}
"""


def udp_listening(port: int) -> bool:
    return any(line.split()[1].endswith(f":{port:04X}") for line in Path("/proc/net/udp").read_text().splitlines()[1:])


@pytest.fixture
def coturn(test_network: None, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Debian's turnserver on SERVER_IP with docs/deploy.md's turnserver.conf (one static user)."""
    binary = require("turnserver")
    conf = tmp_path / "turnserver.conf"
    conf.write_text(doc_snippet("turnserver") + "\n".join([  # where this test's files go
        "log-file=stdout", "simple-log", f"userdb={tmp_path / 'turndb'}", f"pidfile={tmp_path / 'turn.pid'}", ""]))
    log = (tmp_path / "turnserver.log").open("wb")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if udp_listening(TURN_PORT) or process.poll() is not None:
                break
            time.sleep(0.1)
        assert udp_listening(TURN_PORT), (tmp_path / "turnserver.log").read_text()[-2000:]
        yield process
    finally:
        stop_process(process)
        log.close()


async def test_a_relay_only_viewer_plays_through_coturn(coturn: Any, new_page: Any, tmp_path: Path) -> None:
    settings = merge(doc_config("config-turn"), {"ice": {"host_addresses": [SERVER_IP]}})
    assert settings["ice"]["servers"] == [{"urls": [TURN_URL], "username": USER, "credential": PASSWORD}]
    async with relay_with(settings) as relay:
        link = (f'<{TURN_URL}>; rel="ice-server"; username="{USER}"; credential="{PASSWORD}"; '
                'credential-type="password"')
        response, _ = await request("OPTIONS", relay.url("/whep/cam"))
        assert response.headers.getall("Link") == [link]
        async with WhipClient(relay.url("/whip/cam"), [TestPatternTrack(320, 240), ToneTrack()]) as publisher:
            assert link in publisher.links  # the 201 carries it too
            viewer = await new_page()
            await viewer.goto(relay.url("/watch/cam?ice=relay"))
            await assert_playing(viewer)
            selected = await viewer.evaluate(SELECTED_PAIR_JS)
            assert selected is not None and selected[0] == "relay", selected
            offer = (await viewer.evaluate("window.relayWatch.pc.localDescription.sdp")).splitlines()
            candidates = [line for line in offer if line.startswith("a=candidate:")]
            assert candidates and all(" typ relay " in line for line in candidates), candidates
            assert page_errors(viewer) == []
        await poll_until(lambda: len(relay.ctx.sessions) == 0, timeout=10)
