"""Clock and score overlay: the wall-clock time and a running score drawn over the picture.

    relay bot examples.overlay:bot --input http://127.0.0.1:8080/whep/cam --output http://127.0.0.1:8080/whip/cam-live

The digits come from a 3x5 bitmap font scaled up: numpy only, no font file.
Set `score` from anywhere in the bot (e.g. another handler, a web hook).
"""

import time

import numpy as np

from relay.client.bot import Bot

bot = Bot("overlay")
score = {"home": 0, "away": 0}
FONT = {  # 3x5 glyphs, row by row
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ":": "000010000010000", "-": "000000111000000",
    " ": "000000000000000",
}


def draw_text(rgb: np.ndarray, text: str, top: int, left: int, scale: int = 6) -> None:
    """White glyphs on a dark band, clipped to the picture."""
    h, w = 5 * scale, (4 * len(text)) * scale
    band = rgb[top:top + h + 2 * scale, left:left + w + scale]
    band[:] = band // 3
    for i, char in enumerate(text):
        glyph = np.array([int(b) for b in FONT.get(char, FONT[" "])], bool).reshape(5, 3)
        mask = np.kron(glyph, np.ones((scale, scale), bool))
        y, x = top + scale, left + scale + i * 4 * scale
        area = rgb[y:y + mask.shape[0], x:x + mask.shape[1]]
        area[mask[:area.shape[0], :area.shape[1]]] = 255


@bot.video(numpy="rgb24")
def overlay(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    scale = max(2, rgb.shape[0] // 90)
    draw_text(out, time.strftime("%H:%M:%S"), out.shape[0] - 8 * scale, scale, scale)
    draw_text(out, f"{score['home']}-{score['away']}", out.shape[0] - 8 * scale, out.shape[1] // 2, scale)
    return out
