"""Benchmarks of Relay against the MediaRelay baseline; run `python -m bench`."""
