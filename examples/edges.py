"""Grayscale edge filter: the output stream shows the input's edges, white on black.

    relay bot examples.edges:bot --input http://127.0.0.1:8080/whep/cam --output http://127.0.0.1:8080/whip/cam-edges
"""

import numpy as np

from relay.client.bot import Bot

bot = Bot("edges")


@bot.video(numpy="gray")
def edges(gray: np.ndarray) -> np.ndarray:
    """Gradient magnitude (a Sobel-like central difference), scaled to 0-255."""
    g = gray.astype(np.int16)
    dx = np.zeros_like(g)
    dy = np.zeros_like(g)
    dx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    dy[1:-1, :] = g[2:, :] - g[:-2, :]
    return np.clip(np.abs(dx) + np.abs(dy), 0, 255).astype(np.uint8)
