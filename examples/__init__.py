"""Example media bots: `relay bot examples.edges:bot --input ... --output ...` (numpy only)."""
