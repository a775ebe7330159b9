"""Candidates announced with public addresses (`ice.public_addresses`), for servers behind 1:1 NAT.

A cloud VM or a container owns only a private address; the NAT forwards its
public one to it unchanged in port. Like Janus's `nat_1_1_mapping`, each host
candidate of the answer is announced with the public address of its family,
instead of the private one or (`ice.keep_private_candidates`) after it. The
sockets do not change: a client's checks to the public address reach them
through the NAT, and so does the media.
"""

from __future__ import annotations

import hashlib
import ipaddress

from relay.config import IceConfig


def _family(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:  # an mDNS name: not ours to map
        return 0


def _mapped(line: str, public: str, foundation: str, priority: int) -> str:
    fields = line.split(" ")
    fields[0] = f"a=candidate:{foundation}"
    fields[3], fields[4] = str(priority), public
    return " ".join(fields)


def announce_public(sdp: str, ice: IceConfig) -> str:
    """The answer `sdp` with its host candidates (and connection lines) mapped to `ice.public_addresses`."""
    if not ice.public_addresses:
        return sdp
    out = []
    for line in sdp.splitlines():
        fields = line.split(" ")
        if line.startswith("a=candidate:") and len(fields) >= 8 and fields[7] == "host":
            private = fields[4]
            publics = [p for p in ice.public_addresses if _family(p) == _family(private)]
            if publics and ice.keep_private_candidates:
                out.append(line)
            for i, public in enumerate(publics):
                # Its own foundation (RFC 8445 §5.1.1.3: a different base address) and, when the
                # private one stays, a slightly lower priority so the two never tie.
                foundation = hashlib.md5(f"host|{fields[2]}|{public}".encode()).hexdigest()
                priority = int(fields[3]) - (i + 1 if ice.keep_private_candidates else i)
                out.append(_mapped(line, public, foundation, priority))
            if not publics:
                out.append(line)
        elif line.startswith("c=IN IP") and not ice.keep_private_candidates:
            private = fields[2]
            mapped = next((p for p in ice.public_addresses if _family(p) == _family(private)), None)
            out.append(f"c=IN IP{_family(mapped)} {mapped}" if mapped else line)
        else:
            out.append(line)
    return "\r\n".join(out) + "\r\n"
