"""The media path, with no HTTP: publisher taps, streams, fan-out, viewers' tracks, recording.

Imports nothing from `relay.server`, `relay.client` or `relay.cli` (checked by import-linter).
"""
