"""The syntax of names and tokens that come from URLs and config files.

A leaf: the settings, the server and the media path all check names here,
and it imports nothing of Relay's.
"""

from __future__ import annotations

import hashlib
import re

STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
STREAM_NAME_RULE = "1-64 letters, digits, '_' or '-'"

HASH_PREFIX = "sha256:"
_HEX = re.compile(r"[0-9a-f]{64}")


def valid_stream_name(name: str) -> bool:
    """Names become URL segments and file names: a strict alphabet, no dots."""
    return STREAM_NAME.fullmatch(name) is not None


def hash_token(token: str) -> str:
    """The `sha256:<hex>` form of a token, for config files that must hold no secret."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def token_problem(token: str | None) -> str | None:
    """Why a configured token is unusable, or None when it is fine (None means no token)."""
    if token is None:
        return None
    if not token or token != token.strip() or any(c.isspace() for c in token):
        return "a token must be non-empty and contain no spaces"
    if token.startswith(HASH_PREFIX) and not _HEX.fullmatch(token[len(HASH_PREFIX):]):
        return "a sha256: token must be followed by 64 lowercase hex digits (see `relay hash-token`)"
    return None
