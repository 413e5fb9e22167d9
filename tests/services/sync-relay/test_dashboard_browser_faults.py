"""The dashboard in a real browser when things go wrong or someone lies: a write the relay
refuses (the page stops instead of resending it on every reconnect, says why, marks the
action refused and disables its controls), a token that expires, a value longer than the
lexicon takes, a controller announcing itself as someone else, one dating its intents in the
future, markup in what the device sends; and the live regions change only the rows that
changed (a MutationObserver counts)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map
from test_dashboard_browser import SESSION, StandInDevice, _now, dashboard_url

from kikitest.node.browser import Browser, chromium
from kikitest.sync_fixtures import DeviceRelay, YClient, eventually

pytestmark = pytest.mark.interop

ALL_CONTROLS = (
    "[...document.querySelectorAll('#screen button, #screen input, #media-section button')]"
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    # Small messages, so one long value is a write the relay refuses (1009).
    device = DeviceRelay(Path(tmp_path_factory.mktemp("relay")), max_message="4096")
    device.start()
    yield device
    device.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium()
    b = Browser()
    try:
        yield b
    finally:
        b.close()


async def _open(browser: Browser, page: str, url: str) -> None:
    await browser.call("open", page=page, url=url)
    await browser.call("waitText", page=page, selector="#connection", text="Live")
    await browser.call("waitText", page=page, selector="#screen", text="Ada Lovelace")


def test_a_refused_write_stops_the_page_instead_of_wedging_it(
    relay: DeviceRelay, browser: Browser
) -> None:
    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(
            await YClient.join(relay.url(SESSION, relay.token(SESSION, "device")))
        )
        device.publish()
        async with device.running():
            await _open(browser, "alice", dashboard_url(relay, "controller", "alice"))
            joined = relay.health()["counters"]["websocket_connections"]
            # 8000 characters: within the lexicon's 16384, beyond the relay's 4096 bytes.
            await browser.call("fill", page="alice", label="Name", value="x" * 8000)
            await browser.call("click", page="alice", role="button", name="Save")
            await browser.call(
                "waitText", page="alice", selector="#connection", text="Refused by the relay"
            )
            shown = await browser.call("text", page="alice", selector="#connection")
            assert "larger than the relay takes" in shown, shown
            # The write that never reached the device is marked so, not left waiting.
            await browser.call(
                "waitText", page="alice", selector="#activity", text="not delivered: refused"
            )
            statuses = await browser.call(
                "evaluate",
                page="alice",
                expression="[...document.querySelectorAll('#activity li[data-status]')]"
                ".map((li) => li.dataset.status)",
            )
            assert "pending" not in statuses, statuses
            assert "refused" in statuses, statuses
            assert await browser.call(
                "evaluate", page="alice", expression=f"{ALL_CONTROLS}.every((c) => c.disabled)"
            )
            # It stays stopped: no reconnect resending the refused update.
            await asyncio.sleep(2.0)
            after = relay.health()["counters"]["websocket_connections"]
            assert after == joined, (joined, after)
            assert await browser.call("text", page="alice", selector="#connection") == shown
            # Rejoining is a fresh page (a fresh document, without the refused update).
            await browser.call("click", page="alice", role="button", name="Rejoin")
            await browser.call("waitText", page="alice", selector="#connection", text="Live")
            assert await browser.call("controls", page="alice", role="button", name="Save") == [
                False
            ]
        await device.client.close()
        assert browser.errors() == []

    asyncio.run(go())


def test_controls_are_disabled_once_the_token_expires(relay: DeviceRelay, browser: Browser) -> None:
    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(
            await YClient.join(relay.url(SESSION, relay.token(SESSION, "device")))
        )
        device.publish()
        token = relay.token(SESSION, "controller", sub="alice", ttl=4)
        url = f"http://127.0.0.1:{relay.port}/dashboard/#session={SESSION}&token={token}"
        await _open(browser, "alice", url)
        assert await browser.call("controls", page="alice", role="button", name="Save") == [False]
        await browser.call("waitText", page="alice", selector="#connection", text="expired")
        assert await browser.call(
            "evaluate", page="alice", expression=f"{ALL_CONTROLS}.every((c) => c.disabled)"
        )
        await device.client.close()
        assert browser.errors() == []

    asyncio.run(go())


def test_a_value_is_capped_at_the_lexicons_length(tmp_path: Path, browser: Browser) -> None:
    big = DeviceRelay(tmp_path)  # the relay's default message size takes it
    big.start()

    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(await YClient.join(big.url(SESSION, big.token(SESSION, "device"))))
        device.publish()
        async with device.running():
            await _open(browser, "alice", dashboard_url(big, "controller", "alice"))
            await browser.call("fill", page="alice", label="Name", value="y" * 20000)
            await browser.call("click", page="alice", role="button", name="Save")
            await eventually(lambda: any(i["input"].get("action") == "press" for i in device.seen))
            values = [i["input"]["value"] for i in device.seen if "value" in i["input"]]
            assert [len(v) for v in values] == [16384]
        await device.client.close()
        assert browser.errors() == []

    try:
        asyncio.run(go())
    finally:
        big.close()


def test_presence_and_order_cannot_be_faked(relay: DeviceRelay, browser: Browser) -> None:
    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(
            await YClient.join(relay.url(SESSION, relay.token(SESSION, "device")))
        )
        device.publish()
        async with device.running():
            await _open(browser, "bob", dashboard_url(relay, "controller", "bob"))
            # Mallory's token says mallory; her awareness says alice, the device.
            mallory = await YClient.join(
                relay.url(SESSION, relay.token(SESSION, "controller", sub="mallory"))
            )
            mallory.set_awareness({"user": {"name": "alice", "role": "device"}})
            await browser.call("waitText", page="bob", selector="#presence", text="alice")
            rows: list[dict[str, Any]] = await browser.call(
                "evaluate",
                page="bob",
                expression="[...document.querySelectorAll('#presence li[data-client]')]"
                ".map((li) => ({text: li.textContent, verified: li.dataset.verified}))",
            )
            faked = [r for r in rows if "alice" in r["text"]]
            assert faked == [{"text": "“alice” · device (self-declared)", "verified": "false"}], (
                rows
            )
            assert {"text": "bob (you) · controller", "verified": "true"} in rows, rows

            # An intent dated far in the future does not sit on top of later ones.
            intents = mallory.doc.get("intents", type=Map)
            intents["pinned"] = {
                "id": "pinned", "tool": "dev.kiki.media.next", "input": {"player": "mpv"},
                "by": "mallory", "createdAt": "9999-12-31T23:59:59Z",
                "deadline": "9999-12-31T23:59:59Z",
            }  # fmt: skip
            await eventually(lambda: "pinned" in device.results)
            await browser.call("click", page="bob", role="button", name="Play/Pause")
            await browser.call("waitText", page="bob", selector="#activity", text="playPause")
            await eventually(lambda: any(i["by"] == "bob" for i in device.seen))
            await browser.call("waitText", page="bob", selector="#activity li", text="ok")
            first = await browser.call(
                "evaluate",
                page="bob",
                expression="(async () => { for (let i = 0; i < 100; i++) {"
                " const li = document.querySelector('#activity li[data-intent]');"
                " if (li && li.dataset.status === 'ok' && li.textContent.includes('playPause'))"
                " return li.textContent; await new Promise((r) => setTimeout(r, 50)) }"
                " return document.querySelector('#activity li').textContent })()",
            )
            assert "bob (you)" in first, first
            assert "playPause" in first, first
            await mallory.close()
        await device.client.close()
        assert browser.errors() == []

    asyncio.run(go())


def test_device_text_is_text_and_live_regions_change_only_what_changed(
    relay: DeviceRelay, browser: Browser
) -> None:
    markup = '<img src=x onerror="window.pwned=1">'

    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(
            await YClient.join(relay.url(SESSION, relay.token(SESSION, "device")))
        )
        device.publish()
        device.contacts.append(markup)
        device.device["screen"] = device.screen()
        device.device["notifications"] = [{"appName": markup, "summary": markup, "at": _now()}]
        async with device.running():
            await _open(browser, "alice", dashboard_url(relay, "controller", "alice"))
            await browser.call("waitText", page="alice", selector="#notifications", text=markup)
            await browser.call("waitText", page="alice", selector="#screen", text=markup)
            assert await browser.call(
                "evaluate",
                page="alice",
                expression="document.querySelectorAll('main img').length === 0"
                " && window.pwned === undefined",
            )
            # Two actions on the record, then a MutationObserver on each live region.
            # (The session's document is the module's: earlier tests' intents are in it.)
            before = len(device.seen)
            await browser.call("click", page="alice", role="button", name="Play/Pause")
            await browser.call("click", page="alice", role="button", name="Next")
            await browser.call("waitText", page="alice", selector="#activity", text="media.next")
            await eventually(lambda: len(device.seen) >= before + 2)
            await asyncio.sleep(0.3)  # the results drawn
            await browser.call(
                "evaluate",
                page="alice",
                expression="""(() => {
                  const key = (li) => li ? (li.dataset.intent || li.dataset.client ||
                    li.textContent) : ''
                  window.seen = {activity: [], notifications: [], presence: []}
                  for (const id of Object.keys(window.seen)) {
                    new MutationObserver((records) => {
                      for (const r of records) {
                        const at = r.target.closest ? r.target : r.target.parentElement
                        window.seen[id].push({type: r.type,
                          added: [...r.addedNodes].map((n) => key(n.closest ? n : null)),
                          removed: [...r.removedNodes].filter((n) => n.nodeType === 1)
                            .map((n) => n.textContent),
                          target: key(at.closest('li'))})
                      }
                    }).observe(document.getElementById(id),
                      {childList: true, subtree: true, characterData: true, attributes: true})
                  }
                })()""",
            )
            # A third action, a new notification, someone joining.
            await browser.call("click", page="alice", role="button", name="Play/Pause")
            await eventually(lambda: len(device.seen) >= before + 3)
            third = device.seen[before + 2]["id"]
            await browser.call(
                "waitText", page="alice", selector=f"#activity li[data-intent='{third}']",
                text="ok",
            )  # fmt: skip
            device.device["notifications"] = [
                *device.device["notifications"],
                {"appName": "x", "summary": "Tea", "at": _now()},
            ]
            await browser.call("waitText", page="alice", selector="#notifications", text="Tea")
            carol = await YClient.join(
                relay.url(SESSION, relay.token(SESSION, "controller", sub="carol"))
            )
            carol.set_awareness({"user": {"name": "carol", "role": "controller"}})
            await browser.call("waitText", page="alice", selector="#presence", text="carol")
            await asyncio.sleep(0.3)
            seen: dict[str, list[dict[str, Any]]] = await browser.call(
                "evaluate", page="alice", expression="window.seen"
            )
            await carol.close()
        await device.client.close()
        # No row already shown was taken out (and put back), and only the new or changed row
        # was touched (a text node replaced inside it is that row's change).
        for region, records in seen.items():
            assert records, region
            for r in records:
                assert r["removed"] == [], (region, r)
        activity = seen["activity"]
        assert all(r["target"] == third or r["added"] == [third] for r in activity), activity
        added = [a for r in seen["notifications"] for a in r["added"]]
        assert len(added) == 1, seen["notifications"]
        assert "Tea" in added[0], seen["notifications"]
        # Carol's row is added; no one else's is touched.
        touched = {r["target"] or a for r in seen["presence"] for a in r["added"] or [""]}
        assert len(touched) == 1, seen["presence"]
        assert browser.errors() == []

    asyncio.run(go())
