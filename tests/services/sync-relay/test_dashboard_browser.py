"""The dashboard in a real browser (Debian's chromium under playwright-core) against a real
relay, with a stand-in device: a ``device``-role client that writes the ``device`` map and
answers intents as the device link does. Two controllers see each other's actions and
presence, an observer sees everything with its controls disabled and its crafted intent is
refused by the relay, and a page rides out the relay's restart.

Screenshots go to ``$KIKI_TEST_ARTIFACTS/dashboard/<test>/`` (default
``build/test-artifacts``); the test prints their list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Map

from kikitest.node.browser import Browser, chromium, screenshots
from kikitest.sync_fixtures import DeviceRelay, YClient, eventually

pytestmark = pytest.mark.interop

SESSION = "kitchen"
TOOLS = ["dev.kiki.a11y.act", "dev.kiki.media.playPause", "dev.kiki.media.next"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StandInDevice:
    """What the device link writes, from a client with a ``device`` token: a contacts form on
    the screen, a player, a notification, a sensor; intents carried out as the app would."""

    def __init__(self, client: YClient) -> None:
        self.client = client
        self.contacts = ["Ada Lovelace"]
        self.name = ""
        self.seen: list[dict[str, Any]] = []
        self.device = client.doc.get("device", type=Map)
        self.intents = client.doc.get("intents", type=Map)
        self.results = client.doc.get("results", type=Map)

    def screen(self) -> dict[str, Any]:
        def node(i: int, role: str, name: str, depth: int, **more: Any) -> dict[str, Any]:
            return {"ref": f"1:{i}", "id": i, "treeId": 1, "role": role, "name": name,
                    "parent": None if i == 1 else 1, "depth": depth, "states": [],
                    "actions": [], **more}  # fmt: skip

        nodes = [
            node(1, "window", "Contacts", 0),
            node(2, "textField", "Name", 1, value=self.name, actions=["setValue", "focus"]),
            node(3, "button", "Save", 1, actions=["press"]),
            node(4, "list", "People", 1),
        ]
        nodes += [
            node(10 + i, "listItem", c, 2, actions=["select"]) for i, c in enumerate(self.contacts)
        ]
        return {"apps": [{"appId": "dev.kiki.demo", "treeId": 1, "revision": 1, "nodes": nodes}]}

    def publish(self) -> None:
        with self.client.doc.transaction():
            self.device["updatedAt"] = _now()
            self.device["stale"] = []
            self.device["tools"] = TOOLS
            self.device["screen"] = self.screen()
            self.device["nowPlaying"] = {
                "player": {"player": "mpv", "identity": "mpv", "status": "Playing"},
                "track": {"title": "Tone", "artists": ["lavfi"]},
            }
            self.device["notifications"] = [
                {"appName": "notify-send", "summary": "Kettle boiled", "at": _now()},
                {"$type": "dev.kiki.notify.subscribeEvents#closed", "id": 7, "reason": "dismissed",
                 "at": _now()},
            ]  # fmt: skip
            self.device["sensors"] = [{"sensor": "imu0", "seq": 1, "timestampNs": 1,
                                       "values": [3, 1, 4]}]  # fmt: skip
            self.device["calls"] = [
                {"at": _now(), "tool": "dev.kiki.demo.echo", "caller": "uid:0", "outcome": "ok"}
            ]

    def carry_out(self) -> None:
        """Answers every intent without a result, as the link does (once each)."""
        for key, intent in list(self.intents.items()):
            if key in self.results:
                continue
            self.seen.append(intent)
            action = intent["input"].get("action")
            result: dict[str, Any] = {"status": "ok", "at": _now(), "output": {"ok": True}}
            if intent["tool"] != "dev.kiki.a11y.act":
                result["output"] = {}
            elif action == "select":
                result["output"] = {"ok": True, "message": "selected"}
            elif action == "setValue":
                self.name = intent["input"]["value"]
            elif not self.name:
                empty = {"name": "InvalidParams", "message": "the Name field is empty"}
                result = {"status": "error", "at": _now(), "error": empty}
            else:
                self.contacts.append(self.name)
                result["output"] = {"ok": True, "message": f"saved {self.name}"}
                self.name = ""
            self.results[key] = result
            self.device["screen"] = self.screen()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                self.carry_out()
                await asyncio.sleep(0.02)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    device = DeviceRelay(Path(tmp_path_factory.mktemp("relay")))
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


def dashboard_url(relay: DeviceRelay, role: str, sub: str) -> str:
    token = relay.token(SESSION, role, sub=sub)
    return f"http://127.0.0.1:{relay.port}/dashboard/#session={SESSION}&token={token}"


@pytest.fixture
def shots(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    with screenshots(request.node.name, capsys.disabled()) as where:
        yield where


async def shoot(browser: Browser, page: str, where: Path, name: str) -> None:
    await browser.call("screenshot", page=page, path=str(where / f"{name}.png"))


def test_two_controllers_and_an_observer(relay: DeviceRelay, browser: Browser, shots: Path) -> None:
    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(
            await YClient.join(relay.url(SESSION, relay.token(SESSION, "device")))
        )
        device.publish()
        async with device.running():
            await browser.call(
                "open", page="alice", url=dashboard_url(relay, "controller", "alice")
            )
            await browser.call("open", page="bob", url=dashboard_url(relay, "controller", "bob"))
            await browser.call("open", page="olga", url=dashboard_url(relay, "observer", "olga"))
            for page in ("alice", "bob", "olga"):
                await browser.call("waitText", page=page, selector="#connection", text="Live")
                await browser.call("waitText", page=page, selector="#screen", text="Ada Lovelace")
                await browser.call("waitText", page=page, selector="#now-playing", text="Tone")
                await browser.call("waitText", page=page, selector="#notifications", text="Kettle")
                await browser.call(
                    "waitText", page=page, selector="#notifications", text="Notification 7 closed"
                )
                await browser.call("waitText", page=page, selector="#sensors", text="imu0")
                await browser.call(
                    "waitText", page=page, selector="#calls", text="dev.kiki.demo.echo"
                )
            # Presence: each controller sees the other (an observer cannot announce itself).
            await browser.call("waitText", page="alice", selector="#presence", text="bob")
            await browser.call("waitText", page="bob", selector="#presence", text="alice")
            await browser.call("waitText", page="olga", selector="#presence", text="alice")
            assert await browser.call("controls", page="alice", role="button", name="Save") == [
                False
            ]

            # Alice types a name and presses Save: the value is set first, then the press.
            await browser.call("fill", page="alice", label="Name", value="Grace Hopper")
            await browser.call("click", page="alice", role="button", name="Save")
            await browser.call(
                "waitText", page="alice", selector="#activity", text="saved Grace Hopper"
            )
            await browser.call("waitText", page="alice", selector="#screen", text="Grace Hopper")
            acts = [(i["by"], i["input"]["action"]) for i in device.seen]
            assert acts == [("alice", "setValue"), ("alice", "press")]
            # Bob sees her action, its result and the new contact.
            await browser.call(
                "waitText", page="bob", selector="#activity", text="alice: press Save"
            )
            await browser.call(
                "waitText", page="bob", selector="#activity", text="saved Grace Hopper"
            )
            await browser.call("waitText", page="bob", selector="#screen", text="Grace Hopper")
            # Bob presses Save on an empty field: the device's typed error shows on both.
            await browser.call("click", page="bob", role="button", name="Save")
            await browser.call(
                "waitText", page="alice", selector="#activity", text="the Name field is empty"
            )
            # A node's other actions are buttons of their own, named for the node.
            await browser.call("click", page="bob", role="button", name="select Ada Lovelace")
            await eventually(lambda: device.seen[-1]["input"].get("action") == "select")
            assert device.seen[-1]["input"]["ref"] == "1:10"
            await browser.call("click", page="bob", role="button", name="Play/Pause")
            await eventually(lambda: device.seen[-1]["tool"] == "dev.kiki.media.playPause")
            assert device.seen[-1]["input"] == {"player": "mpv"}
            assert device.seen[-1]["by"] == "bob"

            # The observer sees it all, with every control disabled.
            await browser.call("waitText", page="olga", selector="#screen", text="Grace Hopper")
            await browser.call(
                "waitText", page="olga", selector="#activity", text="saved Grace Hopper"
            )
            assert await browser.call("controls", page="olga", role="button", name="Save") == [True]
            assert await browser.call("controls", page="olga", role="textbox", name="Name") == [
                True
            ]
            assert await browser.call(
                "controls", page="olga", role="button", name="Play/Pause"
            ) == [True]
            # Every one of them: each node's own action buttons (select …) and the player's.
            controls = await browser.call(
                "evaluate",
                page="olga",
                expression="[...document.querySelectorAll('#screen button, #screen input,"
                " #media-section button')].map((c) => [c.getAttribute('aria-label') ||"
                " c.textContent || c.type, c.disabled])",
            )
            names = [name for name, _ in controls]
            assert "select Ada Lovelace" in names, controls
            assert "Next" in names, controls
            assert all(disabled for _, disabled in controls), controls
            await shoot(browser, "alice", shots, "controller")
            # The page's own accessibility tree says what it shows.
            tree = await browser.call("aria", page="alice")
            for line in (
                "- status: Live",
                '- region "Screen"',
                '- textbox "Name"',
                '- button "Save"',
                '- button "select Grace Hopper"',
                '- group "Media controls"',
                '- table "Recent tool calls on the device, newest first"',
                '- complementary "Connected"',
                "- log:",
            ):
                assert line in tree, tree
            await shoot(browser, "olga", shots, "observer")
            # A crafted intent from the observer's page is refused by the relay, which closes
            # it (1008); the page says so, and the device never sees the intent.
            await browser.call(
                "evaluate",
                page="olga",
                expression="kikiDashboard.doc.getMap('intents').set('crafted', {id: 'crafted', "
                "tool: 'dev.kiki.a11y.act', input: {ref: '1:3', action: 'press'}, by: 'olga', "
                "createdAt: new Date().toISOString()})",
            )
            await browser.call(
                "waitText", page="olga", selector="#connection", text="PermissionDenied"
            )
            # Its write never reached the device, and its page says so (not "waiting").
            await browser.call(
                "waitText",
                page="olga",
                selector="#activity li[data-intent='crafted']",
                text="not delivered: refused by the relay",
            )
            await shoot(browser, "olga", shots, "observer-refused")
            await asyncio.sleep(0.2)  # what the relay would have relayed by now, it did not
            assert "crafted" not in device.intents
            assert "crafted" not in [i["id"] for i in device.seen]
        await device.client.close()
        assert browser.errors() == []

    asyncio.run(go())


def test_the_page_rides_out_a_relay_restart(
    relay: DeviceRelay, browser: Browser, shots: Path
) -> None:
    device_url = relay.url(SESSION, relay.token(SESSION, "device"))

    async def go() -> None:
        await browser.call("launch", executable=chromium())
        device = StandInDevice(await YClient.join(device_url))
        device.publish()
        async with device.running():
            await browser.call(
                "open", page="alice", url=dashboard_url(relay, "controller", "alice")
            )
            await browser.call("waitText", page="alice", selector="#connection", text="Live")
            await asyncio.to_thread(relay.stop)
            await browser.call("waitText", page="alice", selector="#connection", text="Offline")
            await shoot(browser, "alice", shots, "offline")
            # Pressed while offline: sent once the page is back.
            await browser.call("click", page="alice", role="button", name="Next")
            await device.client.closed()
            await asyncio.to_thread(relay.start)
            await device.client.connect(device_url)
            await browser.call("waitText", page="alice", selector="#connection", text="Live")
            await eventually(lambda: any(i["tool"] == "dev.kiki.media.next" for i in device.seen))
            device.device["notifications"] = [
                {"appName": "x", "summary": "Back again", "at": _now()}
            ]
            await browser.call(
                "waitText", page="alice", selector="#notifications", text="Back again"
            )
            await browser.call("waitText", page="alice", selector="#activity", text="media.next")
            # Carried out once: the reconnect's resync did not make it a second intent.
            nexts = [i for i in device.seen if i["tool"] == "dev.kiki.media.next"]
            assert len(nexts) == 1, nexts
            assert [k for k, i in device.intents.items() if i["tool"] == "dev.kiki.media.next"] == [
                nexts[0]["id"]
            ]
            # A part whose source the device lost says so, and keeps its last value.
            device.device["stale"] = ["screen"]
            await browser.call(
                "waitText", page="alice", selector="#screen-section", text="Source lost"
            )
            await browser.call("waitText", page="alice", selector="#screen", text="Ada Lovelace")
            device.device["stale"] = []
            await browser.call(
                "waitGone", page="alice", selector="#screen-section .stale-note", text="Source"
            )
            await shoot(browser, "alice", shots, "back")
        await device.client.close()
        assert browser.errors() == []

    asyncio.run(go())


def test_a_presence_that_times_out_does_not_get_a_page_closed(
    relay: DeviceRelay, browser: Browser
) -> None:
    """Someone whose state is not renewed (a tab asleep) is dropped by each page after 30 s
    (y-protocols' outdated timeout); a page must not send that removal: the state is not its
    own, and the relay would close it."""

    async def go() -> None:
        await browser.call("launch", executable=chromium())
        ghost = await YClient.join(relay.url(SESSION, relay.token(SESSION, "controller")))
        ghost.set_awareness({"user": {"name": "ghost", "role": "controller"}})
        await browser.call("open", page="olga", url=dashboard_url(relay, "observer", "olga"))
        await browser.call("open", page="alice", url=dashboard_url(relay, "controller", "alice"))
        for page in ("olga", "alice"):
            await browser.call("waitText", page=page, selector="#presence", text="ghost")
        await browser.call("waitGone", page="alice", selector="#presence li", text="ghost",
                           timeout=60_000)  # fmt: skip
        await browser.call("waitGone", page="olga", selector="#presence li", text="ghost",
                           timeout=15_000)  # fmt: skip
        await asyncio.sleep(0.5)  # what the pages sent on dropping it has reached the relay
        for page in ("olga", "alice"):
            assert await browser.call("text", page=page, selector="#connection") == "Live"
        assert ghost.open
        await ghost.close()
        assert browser.errors() == []

    asyncio.run(go())
