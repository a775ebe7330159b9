"""Behind a reverse proxy: whose X-Forwarded-For/Forwarded is believed, and the path prefix.

Only `server.trusted_proxies` are believed; the client is the rightmost address that is not
a trusted proxy (what is left of it may be forged). The prefix (X-Forwarded-Prefix from a
trusted proxy, or server.base_path) is in Location, Link and the pages' <base>.
"""

from __future__ import annotations

from typing import Any

import pytest

from relay.config import ConfigError, load_config

from ..conftest import make_offer, relay_with, request

SDP = {"Content-Type": "application/sdp"}


async def publish_from(settings: dict[str, Any], **headers: str) -> tuple[set[str], str, str]:
    """POST a WHIP offer with `headers`; the addresses the server saw, the Location and its Link."""
    async with relay_with(settings) as relay:
        response, _ = await request("POST", relay.url("/whip/cam"), await make_offer(), **SDP, **headers)
        assert response.status == 201
        addresses = {session.address for session in relay.ctx.sessions}
        viewer, _ = await request("POST", relay.url("/whep/nobody"), await make_offer("recvonly"), **SDP, **headers)
        return addresses, response.headers["Location"], viewer.headers["Link"]


@pytest.mark.parametrize("trusted,headers,client", [
    ([], {"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1"),  # not a trusted proxy: its header is ignored
    (["127.0.0.1"], {"X-Forwarded-For": "203.0.113.9"}, "203.0.113.9"),
    (["127.0.0.0/8"], {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}, "203.0.113.9"),  # the left may be forged
    (["127.0.0.1", "10.0.0.0/8"], {"X-Forwarded-For": "203.0.113.9, 10.1.2.3"}, "203.0.113.9"),  # two proxies
    (["127.0.0.1"], {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'}, "2001:db8::7"),
    (["127.0.0.1"], {"X-Forwarded-For": "unknown"}, "127.0.0.1"),  # unreadable: the proxy's address stays
])
async def test_only_trusted_proxies_name_the_client(trusted: list[str], headers: dict[str, str], client: str) -> None:
    addresses, _, _ = await publish_from({"server": {"trusted_proxies": trusted}}, **headers)
    assert addresses == {client}


async def test_the_rate_limiter_counts_clients_behind_a_trusted_proxy() -> None:
    settings = {"server": {"trusted_proxies": ["127.0.0.1"]},
                "limits": {"request_burst": 1, "requests_per_second": 0.1}}
    async with relay_with(settings) as relay:
        statuses = []
        for client in ("203.0.113.1", "203.0.113.2", "203.0.113.2"):
            response, _ = await request("POST", relay.url("/whip/x"), "x", **SDP, **{"X-Forwarded-For": client})
            statuses.append(response.status)
        assert statuses == [400, 400, 429]  # a bad offer each, then the second client's burst is spent


@pytest.mark.parametrize("settings,headers,prefix", [
    ({}, {"X-Forwarded-Prefix": "/relay"}, ""),  # from anyone: ignored
    ({"server": {"trusted_proxies": ["127.0.0.1"]}}, {"X-Forwarded-Prefix": "/relay/"}, "/relay"),
    ({"server": {"trusted_proxies": ["127.0.0.1"]}}, {"X-Forwarded-Prefix": "/x\"><script>"}, ""),  # not a path
    ({"server": {"base_path": "/live/relay"}}, {}, "/live/relay"),
])
async def test_locations_links_and_pages_carry_the_prefix(
        settings: dict[str, Any], headers: dict[str, str], prefix: str) -> None:
    _, location, link = await publish_from(settings, **headers)
    assert location.startswith(f"{prefix}/whip/cam/")
    assert link.startswith(f"<{prefix}/api/streams/nobody/events>")
    async with relay_with(settings) as relay:
        for page in ("/", "/watch/cam", "/publish/cam"):
            response, html = await request("GET", relay.url(page), **headers)
            assert response.status == 200 and f'<base href="{prefix}/">' in html
            rest = html.replace(f'<base href="{prefix}/">', "")
            assert 'href="/' not in rest and 'src="/' not in rest  # every link is relative to the base


@pytest.mark.parametrize("data,key", [
    ({"server": {"trusted_proxies": ["10.0.0.0/33"]}}, "server.trusted_proxies[0]"),
    ({"server": {"base_path": "relay/"}}, "server.base_path"),
    ({"server": {"tls_cert": "cert.pem"}}, "server.tls_key"),
    ({"ice": {"public_addresses": ["relay.example.org"]}}, "ice.public_addresses[0]"),
    ({"ice": {"port_range": [50000]}}, "ice.port_range"),
    ({"ice": {"port_range": [50010, 50000]}}, "ice.port_range"),
])
def test_bad_deployment_settings_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(data=data)
