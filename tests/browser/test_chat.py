"""The chat in real Chromium: a publish page and watch pages talk over their sessions' data channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..conftest import relay_with
from .conftest import page_errors, wait_js

CHAT = {"chat": {"messages_per_second": 1.0, "burst": 3}}


async def chat_state(page: Any, state: str) -> None:
    await wait_js(page, f"document.querySelector('#chat').dataset.state === '{state}'")


async def join(page: Any, name: str) -> None:
    await chat_state(page, "open")
    await page.fill("#chat-name", name)
    await page.click("#chat-join")
    await chat_state(page, "joined")


async def say(page: Any, text: str) -> None:
    await page.fill("#chat-text", text)
    await page.press("#chat-text", "Enter")


async def shows(page: Any, text: str) -> None:
    await wait_js(page, "[...document.querySelectorAll('#chat-messages li')]"
                        f".some(li => li.textContent.includes({text!r}))")


async def test_watch_pages_and_the_publish_page_chat(new_page: Any, artifacts_dir: Path) -> None:
    async with relay_with(CHAT) as relay:
        publisher = await new_page()
        await publisher.goto(relay.url("/publish/show"))
        await publisher.click("#start")
        await wait_js(publisher, "window.relayPublish && window.relayPublish.state === 'live'")
        alice, bob = await new_page(), await new_page()
        for page in (alice, bob):
            await page.goto(relay.url("/watch/show"))
            await wait_js(page, "window.relayWatch.state === 'live'")
        await join(alice, "Alice")
        await join(bob, "Bob")
        await join(publisher, "Host")

        await say(alice, "hello from Alice")
        for page in (alice, bob, publisher):
            await shows(page, "hello from Alice")
        await say(publisher, "welcome")
        await shows(bob, "welcome")
        assert await bob.evaluate(
            "document.querySelector('#chat-messages li:last-child').dataset.role") == "publisher"

        late = await new_page()
        # Another host name: Chromium opens at most 6 connections per host, and the open pages' event
        # streams hold them all (HTTP/1.1; a proxy with HTTP/2 in front of Relay lifts that).
        await late.goto(relay.url("/watch/show").replace("127.0.0.1", "localhost"))
        await shows(late, "hello from Alice")  # the history, before joining
        await shows(late, "welcome")
        await chat_state(late, "open")
        await late.fill("#chat-name", "alice")
        await late.click("#chat-join")
        await wait_js(late, "document.querySelector('#chat-error').textContent.includes('already in this chat')")
        await late.screenshot(path=artifacts_dir / "watch-chat-name-taken.png")

        await bob.evaluate("""() => {  // faster than the limit, through the form: the burst passes, then an error
          for (let n = 0; n < 6; n++) {
            document.querySelector('#chat-text').value = `flood ${n}`;
            document.querySelector('#chat-form').requestSubmit();
          }
        }""")
        await wait_js(bob, "!document.querySelector('#chat-error').hidden"
                           " && document.querySelector('#chat-error').textContent.includes('wait')")
        await shows(alice, "flood 2")
        await bob.screenshot(path=artifacts_dir / "watch-chat-limit.png")
        await alice.screenshot(path=artifacts_dir / "watch-chat.png")
        await publisher.screenshot(path=artifacts_dir / "publish-chat.png", full_page=True)
        await alice.set_viewport_size({"width": 390, "height": 844})
        await alice.screenshot(path=artifacts_dir / "watch-chat-phone.png", full_page=True)
        assert relay.ctx.streams.get("show").chat.names == ["Alice", "Bob", "Host"]

        await publisher.click("#chat-clear")
        await wait_js(alice, "document.querySelectorAll('#chat-messages li').length === 0")

        await publisher.click("#stop")  # the stream ends; the watch page reconnects by itself once it is back
        await wait_js(alice, "window.relayWatch.state === 'waiting'")
        await publisher.click("#start")
        await wait_js(alice, "window.relayWatch.state === 'live'")
        await chat_state(alice, "joined")  # re-joined under the name chosen before
        await chat_state(publisher, "joined")
        await say(alice, "back again")
        await shows(publisher, "back again")
        for page in (alice, bob, late, publisher):
            assert page_errors(page) == []
