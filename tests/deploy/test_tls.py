"""HTTPS: `relay cert` makes a certificate, `relay serve --tls-cert/--tls-key` serves it, and
Chromium publishes its camera from the https:// publish page on a non-loopback address
(a secure context; over http:// from another machine the camera is refused) to a viewer page.
"""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path
from typing import Any

from cryptography import x509

from relay.cli.main import main

from ..browser.conftest import assert_playing, page_errors, wait_js
from ..conftest import spawn_relay
from .conftest import SERVER_IP, doc_snippet


def make_cert(tmp_path: Path, *hosts: str) -> tuple[Path, Path]:
    assert main(["cert", *hosts, "--out", str(tmp_path / "tls")]) == 0
    return tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"


def test_cert_names_every_host_and_keeps_its_key_private(tmp_path: Path) -> None:
    cert_path, key_path = make_cert(tmp_path, "relay.example.org", SERVER_IP)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["relay.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(SERVER_IP)]
    assert key_path.stat().st_mode & 0o077 == 0


def test_serve_refuses_a_key_that_is_not_the_certificates(tmp_path: Path, capsys: Any) -> None:
    cert_path, _ = make_cert(tmp_path / "a", "a.example")
    _, other_key = make_cert(tmp_path / "b", "b.example")
    assert main(["serve", "--tls-cert", str(cert_path), "--tls-key", str(other_key)]) == 2
    assert "server.tls_cert" in capsys.readouterr().err
    assert main(["serve", "--tls-cert", str(cert_path)]) == 2  # a certificate without its key
    assert "give both" in capsys.readouterr().err


async def test_chromium_publishes_over_https_and_a_viewer_plays(
        tmp_path: Path, test_network: None, new_page: Any) -> None:
    """The two commands of docs/deploy.md's "dev-tls" snippet, on SERVER_IP."""
    tls = tmp_path / "tls"
    snippet = doc_snippet("dev-tls", {"192.168.1.20": SERVER_IP, "--out tls": f"--out {tls}", " tls/": f" {tls}/"})
    cert_command, serve_command = (shlex.split(line) for line in snippet.splitlines())
    assert cert_command[:2] == ["relay", "cert"] and serve_command[:2] == ["relay", "serve"]
    assert main(cert_command[1:]) == 0
    server = spawn_relay(tmp_path, {"ice": {"host_addresses": [SERVER_IP]}}, args=serve_command[2:])
    assert server.scheme == "https"
    try:
        origin = f"https://{SERVER_IP}:{server.port}"
        publisher = await new_page()
        await publisher.goto(f"{origin}/publish/cam")
        assert await publisher.evaluate("window.isSecureContext")
        await publisher.click("#start")
        await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
        viewer = await new_page()
        await viewer.goto(f"{origin}/watch/cam")
        await assert_playing(viewer)
        assert page_errors(publisher) == [] and page_errors(viewer) == []
    finally:
        assert server.stop() == 0
