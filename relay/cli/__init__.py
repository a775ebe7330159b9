"""The `relay` command line: serve, publish, watch, probe, hash-token."""

from relay.cli.main import main

__all__ = ["main"]
