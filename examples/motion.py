"""Motion detector: tells viewers how much moves ({"motion": score}) and draws a box around it.

    relay bot examples.motion:bot --input http://127.0.0.1:8080/whep/cam --output http://127.0.0.1:8080/whip/cam-motion

The score is the share of 8x8 blocks whose mean brightness changed by more
than THRESHOLD since the previous frame. An event goes out when motion
starts, stops, or changes by more than 0.05, and at least every 2 s.
"""

import time

import numpy as np

from relay.client.bot import Bot

bot = Bot("motion")
BLOCK, THRESHOLD = 8, 12.0
RED = np.array([255, 0, 0], np.uint8)
state: dict[str, object] = {}


@bot.start
def reset() -> None:
    state.clear()


def blocks(rgb: np.ndarray) -> np.ndarray:
    """Mean luma per BLOCK x BLOCK block."""
    h, w = (rgb.shape[0] // BLOCK) * BLOCK, (rgb.shape[1] // BLOCK) * BLOCK
    luma = rgb[:h, :w] @ np.array([0.299, 0.587, 0.114])
    return luma.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))


def draw_box(rgb: np.ndarray, top: int, left: int, bottom: int, right: int, width: int = 3) -> None:
    rgb[top:top + width, left:right] = RED
    rgb[bottom - width:bottom, left:right] = RED
    rgb[top:bottom, left:left + width] = RED
    rgb[top:bottom, right - width:right] = RED


@bot.video(numpy="rgb24")
def detect(rgb: np.ndarray) -> np.ndarray:
    current = blocks(rgb)
    previous = state.get("blocks")
    state["blocks"] = current
    if not isinstance(previous, np.ndarray) or previous.shape != current.shape:
        return rgb
    moved = np.abs(current - previous) > THRESHOLD
    score = round(float(moved.mean()), 3)
    out = rgb.copy()
    if moved.any():
        rows, cols = np.nonzero(moved)
        draw_box(out, rows.min() * BLOCK, cols.min() * BLOCK, (rows.max() + 1) * BLOCK, (cols.max() + 1) * BLOCK)
    last_score, last_time = state.get("said", (None, 0.0))  # type: ignore[misc]
    now = time.monotonic()
    if last_score is None or abs(score - last_score) > 0.05 or (score > 0) != (last_score > 0) or now - last_time > 2:
        bot.say({"motion": score})
        state["said"] = (score, now)
    return out
