"""`relay cert`: a self-signed development certificate for `server.tls_cert` / `server.tls_key`.

Browsers give the camera only to https:// pages (or localhost), so trying
the publish page from another machine needs TLS. A real deployment uses a
certificate from a CA (docs/deploy.md); this one is for a LAN or a test.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


def _name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certificate(hosts: list[str], cert_path: Path, key_path: Path, days: int = VALID_DAYS) -> None:
    """Write a self-signed ECDSA P-256 certificate for `hosts` (names or IP addresses) and its key (mode 600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def cert(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    make_certificate(args.hosts, cert_path, key_path, args.days)
    print(f"relay: wrote {cert_path} and {key_path} for {', '.join(args.hosts)} (self-signed, {args.days} days)")
    print(f"relay: serve with --tls-cert {cert_path} --tls-key {key_path}", file=sys.stderr)
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("cert", help="write a self-signed development certificate (cert.pem, key.pem)")
    p.add_argument("hosts", nargs="+", metavar="HOST", help="host names or IP addresses the certificate is for")
    p.add_argument("--out", default=".", metavar="DIR", help="directory for cert.pem and key.pem (default: .)")
    p.add_argument("--days", type=int, default=VALID_DAYS, help=f"validity in days (default: {VALID_DAYS})")
    p.set_defaults(func=cert)
