"""What the bench changes in its private network namespace: a veth pair for Janus, and packet loss.

Both need root in the namespace (`unshare -n` as root, or `unshare -rn`),
which `python -m bench` arranges; both undo themselves on exit so a test or a
later experiment finds the namespace as it was.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

VETH = ("rbench0", "rbench1")
# RFC 5737 documentation addresses: never routed, so nothing can leave through them.
VETH_ADDRESS = "192.0.2.2"  # Janus's end
VETH_PEER_ADDRESS = "192.0.2.1"  # the clients' end
VETH_PREFIX = 24


class NamespaceError(RuntimeError):
    """A tool the bench needs is missing or refused (not root in the namespace?)."""


def _run(*argv: str) -> None:
    if not shutil.which(argv[0]):
        raise NamespaceError(f"the bench needs `{argv[0]}` ({'iproute2' if argv[0] == 'ip' else argv[0]})")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise NamespaceError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def veth() -> Iterator[str]:
    """A veth pair, VETH_ADDRESS on the first end (yielded) and VETH_PEER_ADDRESS on the other.

    libnice (Janus's ICE) skips loopback interfaces, so Janus gathers nothing in
    a loopback-only namespace, and its checks to a peer's 127.0.0.1 candidate
    never succeed. Both addresses are local to the namespace: packets between
    them go through the loopback device like everything else (the veth itself
    carries nothing), so Janus's media takes the same kernel path as Relay's.
    """
    if _link_exists(VETH[0]):  # someone else in this namespace made it: use it, leave it
        yield VETH[0]
        return
    _run("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
    try:
        _run("ip", "addr", "add", f"{VETH_ADDRESS}/{VETH_PREFIX}", "dev", VETH[0])
        _run("ip", "addr", "add", f"{VETH_PEER_ADDRESS}/{VETH_PREFIX}", "dev", VETH[1])
        for name in VETH:
            # libnice sends out of the veth (its socket is tied to the interface), so the far end
            # sees its own namespace's address as the source: accept it instead of dropping a martian.
            Path(f"/proc/sys/net/ipv4/conf/{name}/accept_local").write_text("1\n")
            _run("ip", "link", "set", name, "up")
        yield VETH[0]
    finally:
        _run("ip", "link", "del", VETH[0])  # deletes its peer too


def loss_rule(probability: float) -> list[str]:
    """Drop this fraction of the UDP datagrams delivered in the namespace (both legs of every hop)."""
    return ["INPUT", "-p", "udp", "-m", "statistic", "--mode", "random",
            "--probability", f"{probability:g}", "-j", "DROP"]


@contextlib.contextmanager
def packet_loss(probability: float) -> Iterator[None]:
    """Random UDP loss on every datagram delivered in this namespace, while inside (0: nothing)."""
    if probability <= 0:
        yield
        return
    rule = loss_rule(probability)
    _run("iptables", "-A", *rule)
    try:
        yield
    finally:
        _run("iptables", "-D", *rule)


def loss_rules() -> list[str]:
    """The statistic DROP rules now installed (to check that none was left behind)."""
    if not shutil.which("iptables"):
        return []
    listing = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True, check=False).stdout
    return [line for line in listing.splitlines() if "statistic" in line and "DROP" in line]
