"""WHIP and WHEP clients on aiortc, for scripts, robots and tests; they import nothing of the server."""

from relay.client.session import ClientError, SessionError
from relay.client.whep import WhepClient, start_when_live
from relay.client.whip import WhipClient

__all__ = ["ClientError", "SessionError", "WhepClient", "WhipClient", "start_when_live"]
