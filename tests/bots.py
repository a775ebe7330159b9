"""Bots the tests run, in process and through `relay bot` / `relay serve --bot` (as tests.bots:NAME)."""

from __future__ import annotations

import time

import numpy as np

from relay.client.bot import Bot

invert = Bot("invert")


@invert.video(numpy="yuv420p")
def inverted(planes: np.ndarray) -> np.ndarray:
    """Every plane inverted: the stamp reads back only after inverting again."""
    return 255 - planes


flaky = Bot("flaky")
seen = {"frames": 0}


@flaky.video(numpy="yuv420p")
def raises_every_tenth(planes: np.ndarray) -> np.ndarray:
    seen["frames"] += 1
    if seen["frames"] % 10 == 0:
        raise RuntimeError(f"frame {seen['frames']}: every tenth frame fails")
    return 255 - planes


slow = Bot("slow")


@slow.video(numpy="yuv420p")
def sleeps(planes: np.ndarray) -> np.ndarray:
    time.sleep(0.2)  # a sync handler runs in its own thread: it stalls nobody else
    return 255 - planes


passive = Bot("passive")


@passive.video
async def looks(frame: object) -> None:
    return None
