"""A deployment in miniature, inside the suite's private network namespace.

Native stacks (Chromium, coturn) ignore loopback, so `test_network` adds a
veth pair with documentation addresses (RFC 5737): SERVER_IP on one end,
CLIENT_IP on the other, and removes it (and any iptables rule a test added)
afterwards. Tools (iptables, turnserver, nginx, Chromium) are required: a
test without one is skipped, or fails under RELAY_REQUIRE_BROWSER=1 (CI).

Helpers:
  require(tool)                  the tool's path, or skip/fail
  run(*command)                  a command that must succeed
  doc_snippet(name, {old: new})  a fenced block of docs/deploy.md, by the marker above it, the doc's
                                 example addresses and paths replaced by the test's
  pin_host_addresses(address)    this process's aiortc peers gather on `address` until the test ends
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import load_config
from relay.media.aiortc_patch import restrict_host_addresses, set_port_range
from tests.browser.conftest import _unavailable, chromium_browser, new_page  # noqa: F401  (fixtures)

from ..conftest import LOOPBACK

SERVER_IP = "192.0.2.1"
CLIENT_IP = "192.0.2.2"
DEPLOY_DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def require(tool: str) -> str:
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        _unavailable(f"{tool} is not installed (Debian: apt-get install {tool})")
    assert path is not None
    return path


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr.strip()}"
    return result.stdout


def _private_namespace() -> bool:
    """Only loopback (and what earlier tests left) here: not the machine's own network."""
    names = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    return all(name == "lo" or name.startswith("rly") for name in names)


NETWORK_SETTLE = 2.0  # seconds: Chromium's network change notifier debounces about one second


@pytest.fixture
def test_network() -> Iterator[None]:
    """veth rly0 (SERVER_IP) <-> rly1 (CLIENT_IP); iptables rules flushed after the test."""
    require("ip")
    if not _private_namespace():
        _unavailable("these tests change interfaces and iptables: run them inside `unshare -n` (scripts/test.sh)")
    run("ip", "link", "add", "rly0", "type", "veth", "peer", "name", "rly1")
    try:
        run("ip", "addr", "add", f"{SERVER_IP}/24", "dev", "rly0")
        run("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "rly1")
        run("ip", "link", "set", "rly0", "up")
        run("ip", "link", "set", "rly1", "up")
        # A running Chromium (the suite shares one) notices the new interfaces a moment later and
        # aborts whatever it has in flight then (net::ERR_NETWORK_CHANGED, an event stream too):
        # let that happen before the test's first request.
        time.sleep(NETWORK_SETTLE)
        yield
    finally:
        subprocess.run(["ip", "link", "del", "rly0"], capture_output=True, timeout=30)
        if shutil.which("iptables") or os.path.exists("/usr/sbin/iptables"):
            for table in ("filter", "nat", "raw"):
                subprocess.run([require("iptables"), "-t", table, "-F"], capture_output=True, timeout=30)


@pytest.fixture
def pin_host_addresses() -> object:
    """Call it with an address: this process's aiortc peers gather only there, until the test ends."""
    return lambda address: restrict_host_addresses([address])


# The doc's example host: its public and private addresses, as the tests' network has them.
DOC_ADDRESSES = {"203.0.113.10": SERVER_IP, "10.0.0.5": SERVER_IP}


def doc_snippet(name: str, replace: dict[str, str] | None = None) -> str:
    """The fenced code block after `<!-- snippet: name -->` in docs/deploy.md (what the doc shows is what runs).

    Each key of `replace` (and of DOC_ADDRESSES) must occur in it: a doc that changed fails the test.
    """
    text = DEPLOY_DOC.read_text()
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"docs/deploy.md has no snippet {name!r}"
    snippet = match.group(1)
    for old, new in (replace or {}).items():
        assert old in snippet, f"docs/deploy.md snippet {name!r} no longer has {old!r}"
        snippet = snippet.replace(old, new)
    for old, new in DOC_ADDRESSES.items():
        snippet = snippet.replace(old, new)
    return snippet


def doc_config(name: str, replace: dict[str, str] | None = None) -> dict[str, Any]:
    """A YAML snippet of docs/deploy.md as settings (checked by the config loader)."""
    data = yaml.safe_load(doc_snippet(name, replace))
    load_config(data=data)
    return dict(data)


@pytest.fixture(autouse=True)
def _process_wide_ice_settings() -> Iterator[None]:
    """An in-process Relay sets aioice's host addresses and port range for the whole process: undo it."""
    yield
    restrict_host_addresses(LOOPBACK["ice"]["host_addresses"])
    set_port_range([])
