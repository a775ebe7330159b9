"""Relay: a headless WebRTC broadcast relay. WHIP in, WHEP out, no re-encoding."""

__version__ = "0.1.0"
