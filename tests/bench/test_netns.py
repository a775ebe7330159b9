"""The bench's packet loss: iptables' statistic match drops UDP in the namespace, and is removed after.

Fails instead of skipping without iptables when RELAY_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from bench.netns import loss_rules, packet_loss


def _unavailable(reason: str) -> None:
    if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (RELAY_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


def delivered(count: int) -> int:
    """How many of `count` UDP datagrams sent over loopback arrive."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(0.2)
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big"), rx.getsockname())
        received = 0
        try:
            while True:
                rx.recv(16)
                received += 1
        except TimeoutError:
            return received


def test_loss_drops_a_share_of_udp_and_leaves_nothing_behind() -> None:
    if not shutil.which("iptables"):
        _unavailable("the bench's loss needs iptables (apt-get install iptables)")
    assert not loss_rules(), "a loss rule is already installed in this namespace"
    with packet_loss(0.5):
        assert len(loss_rules()) == 1
        arrived = delivered(400)
    assert 100 < arrived < 300, f"{arrived} of 400 datagrams arrived with 50 % loss"
    assert not loss_rules()
    assert delivered(200) == 200


def test_no_loss_installs_no_rule() -> None:
    with packet_loss(0.0):
        assert not loss_rules()
