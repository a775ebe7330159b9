"""Playwright harness for Relay's browser tests (headless Debian Chromium, fake camera/mic).

Fixtures:
  chromium_browser  a Playwright BrowserContext of /usr/bin/chromium with a fresh profile in tmp_path
  new_page          async factory: ``page = await new_page()``; collects JS errors (see page_errors)
  page              one page from new_page
  artifacts_dir     tests/artifacts/ (created, git-ignored): screenshots and other leftovers
  video_pixels, video_frames_decoded, page_errors   the helpers below, as fixtures

Helpers (module functions):
  await video_pixels(page, "#video")   -> 32x24 luma samples (0..255) of the <video>'s current frame
  await video_frames_decoded(page)     -> framesDecoded of window.relayWatch.pc's inbound video
  await wait_js(page, "expression")     until the expression is true in the page
  page_errors(page)                    -> uncaught exceptions and console errors so far
                                          (failed HTTP requests only with include_network=True)

Without /usr/bin/chromium or the playwright package the browser tests are skipped, or fail when
RELAY_REQUIRE_BROWSER=1. RELAY_CHROMIUM overrides the browser path.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

CHROMIUM = os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium")

# Exactly these flags. Playwright also adds its own (including --headless and --user-data-dir,
# which launch() refuses in args; hence launch_persistent_context). Chromium reads the last
# --headless switch, and both forms mean the new headless mode since Chromium 132.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"

_ERRORS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def _unavailable(reason: str) -> None:
    if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (RELAY_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def artifacts_dir() -> Path:
    """tests/artifacts/, created on demand."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest_asyncio.fixture
async def chromium_browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A persistent BrowserContext of Debian Chromium with a fresh --user-data-dir."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM}")

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            user_data_dir=str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
            color_scheme="light",
        )
        try:
            yield context
        finally:
            await context.close()


def _track_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console.error: {msg.text} ({msg.location.get('url', '')})")
        if msg.type == "error"
        else None,
    )
    _ERRORS[page] = errors
    return errors


def page_errors(page: Any, include_network: bool = False) -> list[str]:
    """Uncaught exceptions and console errors so far of a page made by ``new_page``.

    Chromium also logs every non-2xx fetch ("Failed to load resource: ... 409 (Conflict)"), which
    is normal while a viewer waits for a publisher; those are left out unless ``include_network``.
    """
    errors = _ERRORS.get(page, [])
    return [e for e in errors if include_network or "Failed to load resource" not in e]


@pytest_asyncio.fixture
async def new_page(chromium_browser: Any) -> Callable[[], Awaitable[Any]]:
    """Async factory for pages in the shared browser context: ``page = await new_page()``."""
    unused = [p for p in chromium_browser.pages if p.url == "about:blank"]

    async def make() -> Any:
        page = unused.pop() if unused else await chromium_browser.new_page()
        page.set_default_timeout(15_000)
        _track_errors(page)
        return page

    return make


@pytest_asyncio.fixture
async def page(new_page: Callable[[], Awaitable[Any]]) -> Any:
    """A single page (see ``new_page`` for more)."""
    return await new_page()


_PIXELS_JS = """
([selector, width, height]) => {
  const video = document.querySelector(selector);
  if (!video) throw new Error(`no element ${selector}`);
  if (!video.videoWidth || video.readyState < 2) return [];
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height).data;
  const luma = [];
  for (let i = 0; i < data.length; i += 4) {
    luma.push(Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]));
  }
  return luma;
}
"""

_FRAMES_JS = """
async () => {
  const pc = window.relayWatch && window.relayWatch.pc;
  if (!pc || pc.connectionState === "closed") return 0;
  let frames = 0;
  for (const s of (await pc.getStats()).values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") frames = Math.max(frames, s.framesDecoded || 0);
  }
  return frames;
}
"""


async def wait_js(page: Any, expression: str, timeout: float = 20_000) -> None:
    """Wait until the JavaScript `expression` is true in `page`."""
    await page.wait_for_function(expression, timeout=timeout)


async def video_pixels(page: Any, selector: str = "#video", width: int = 32, height: int = 24) -> list[int]:
    """Draw the <video> into a canvas and return width*height grayscale values (row by row).

    Returns [] while the video has no frame yet.
    """
    return await page.evaluate(_PIXELS_JS, [selector, width, height])


async def video_frames_decoded(page: Any) -> int:
    """framesDecoded of the inbound video of ``window.relayWatch.pc`` (0 when there is none)."""
    return int(await page.evaluate(_FRAMES_JS))


@pytest.fixture(name="video_pixels")
def _video_pixels_fixture() -> Callable[..., Awaitable[list[int]]]:
    return video_pixels


@pytest.fixture(name="video_frames_decoded")
def _video_frames_decoded_fixture() -> Callable[[Any], Awaitable[int]]:
    return video_frames_decoded


@pytest.fixture(name="page_errors")
def _page_errors_fixture() -> Callable[..., list[str]]:
    return page_errors
