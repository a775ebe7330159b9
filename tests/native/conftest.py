"""Fixtures for native WebRTC stacks (GStreamer's webrtcbin) against an in-process Relay.

libnice gathers no candidate on loopback and will not pair with a remote 127.0.0.1,
so `native_relay` puts a veth pair with a documentation address (192.0.2.2/24) into
the test's network namespace and pins Relay's (and the test's aiortc peers') host
candidates to it. `gst_peer` runs tests/native/gst_peer.py with the system Python,
which has GStreamer's GI bindings. Without GStreamer, webrtcbin, `gi` or the right to
add an interface, the tests skip, or fail when RELAY_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from relay.media.aiortc_patch import restrict_host_addresses

from ..browser.conftest import _unavailable
from ..conftest import LOOPBACK, RunningRelay, relay_with

SYSTEM_PYTHON = "/usr/bin/python3"
GST_PEER = Path(__file__).with_name("gst_peer.py")
NATIVE_ADDRESS = "192.0.2.2"
INTERFACE = "relay-v0"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="session")
def gstreamer() -> None:
    """GStreamer with webrtcbin and the system Python's GI bindings, or skip/fail."""
    if not shutil.which("gst-inspect-1.0") or _run("gst-inspect-1.0", "webrtcbin").returncode:
        _unavailable("GStreamer's webrtcbin is not installed (gstreamer1.0-plugins-bad, gstreamer1.0-nice)")
    probe = "import gi; gi.require_version('GstWebRTC', '1.0'); from gi.repository import GstWebRTC"
    if not Path(SYSTEM_PYTHON).exists() or _run(SYSTEM_PYTHON, "-c", probe).returncode:
        _unavailable(f"{SYSTEM_PYTHON} cannot import GStreamer's GI bindings (python3-gi, gir1.2-gst-plugins-bad-1.0)")


@pytest.fixture
def veth() -> Iterator[str]:
    """A veth pair in this network namespace, NATIVE_ADDRESS on one end; removed afterwards."""
    if not shutil.which("ip"):
        _unavailable("no `ip` command (iproute2)")
    made = _run("ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", f"{INTERFACE}p")
    if made.returncode:
        _unavailable(f"cannot add a veth pair (run the tests in their network namespace): {made.stderr.strip()}")
    try:
        for command in (("ip", "addr", "add", f"{NATIVE_ADDRESS}/24", "dev", INTERFACE),
                        ("ip", "link", "set", INTERFACE, "up"), ("ip", "link", "set", f"{INTERFACE}p", "up")):
            subprocess.run(command, check=True, capture_output=True, timeout=30)
        yield NATIVE_ADDRESS
    finally:
        _run("ip", "link", "del", INTERFACE)


@pytest_asyncio.fixture
async def native_relay(gstreamer: None, veth: str) -> AsyncIterator[RunningRelay]:
    """Relay whose media sockets (and the test's own aiortc peers') use the veth address."""
    try:
        async with relay_with({"ice": {"host_addresses": [veth]}}) as running:
            yield running
    finally:
        restrict_host_addresses(LOOPBACK["ice"]["host_addresses"])


@dataclass
class GstRun:
    """What gst_peer.py said, one event per line, and how it exited."""

    returncode: int
    events: list[dict] = field(default_factory=list)
    stderr: str = ""

    def first(self, name: str) -> dict:
        found = [e for e in self.events if e["event"] == name]
        assert found, f"gst_peer.py never said {name!r}: {self.events} {self.stderr[-2000:]}"
        return found[0]

    def last(self, name: str) -> dict:
        self.first(name)
        return [e for e in self.events if e["event"] == name][-1]


async def gst_peer(*args: str, timeout: float = 60.0) -> GstRun:
    """Run gst_peer.py to its end (it DELETEs its session when its time is up)."""
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(GST_PEER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"gst_peer.py {' '.join(args)} did not finish: {err.decode()[-2000:]}") from None
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return GstRun(process.returncode or 0, events, err.decode())
