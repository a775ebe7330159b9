"""The HTTP server (aiohttp): WHIP, WHEP, sessions, API, events, pages, recordings, metrics."""
