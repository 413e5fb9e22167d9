"""A remote person's call through a trusted delegate (the sync relay's device link) is decided
by the a11y policy for that person, never for the delegate's own identity: a real broker, a real
a11y-server, a publisher of two apps and the test process as the delegate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.a11y_fixtures import form_tree
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher
from libkiki.errors import ToolError
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

ALICE = {"subject": "did:plc:alice", "session": "home"}
BOB = {"subject": "did:plc:bob", "session": "home"}
NOTES, BANK = "org.example.Notes", "org.example.Bank"


async def publish_named(path: Path, app_id: str, pressed: list[str]) -> A11yPublisher:
    """A publisher whose first update names the app it is for (as kiki-atspi-bridge does)."""

    async def on_action(request: wire.ActionRequest) -> str:
        pressed.append(app_id)
        return "done"

    pub = await A11yPublisher(path, label=app_id, on_action=on_action).__aenter__()
    named = wire.App(0, app_id, 4242, 0, f"app-{app_id}.service")
    ack = await pub.request(wire.TreeUpdate(0, 0, 0, 0, 0, 1, tuple(form_tree()), (), 0, named))
    assert isinstance(ack, wire.Ack)
    pub.tree_id = ack.tree_id
    return pub


@pytest.fixture
def constellation(sockdir: Path, spawn_service: Any) -> tuple[Path, Path, Any]:
    """The broker (trusting this process as a delegate, letting remote people call the a11y
    tools) and the a11y-server (this process may name its apps; alice may read and act on the
    notes app, nobody remote on anything else): the tools socket, a11y socket and the
    a11y-server's log."""
    me = os.getuid()
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f"""
[[delegate]]
principals = ["uid:{me}"]

[[allow]]
principals = ["remote:*"]
tools = ["dev.kiki.a11y.*"]
"""
    )
    (etc / "a11y-policy.toml").write_text(
        f"""
[[publisher]]
principals = ["uid:{me}"]

[[allow]]
principals = ["remote:did:plc:alice"]
rights = ["read", "act"]
apps = ["{NOTES}"]
"""
    )
    _, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    proc, notes = spawn_service("a11y-server")
    notes.wait_for("READY")
    return sockdir / "tools.sock", sockdir / "a11y.sock", proc.stderr


async def refusal(relay: ToolClient, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ToolError) as refused:
        await relay.call(*args, **kwargs)
    return refused.value.message


async def test_a_remote_person_acts_on_the_apps_a_remote_rule_names_only(
    constellation: tuple[Path, Path, Any], sockdir: Path
) -> None:
    tools_path, a11y_path, a11y_log = constellation
    pressed: list[str] = []
    notes = await publish_named(a11y_path, NOTES, pressed)
    bank = await publish_named(a11y_path, BANK, pressed)
    try:
        async with ToolClient(tools_path) as relay:
            async with asyncio.timeout(20):
                while True:  # the server registers its tools once it has found the broker
                    if "dev.kiki.a11y.act" in {t["name"] for t in await relay.list()}:
                        break
                    await asyncio.sleep(0.05)
            on_notes = {"ref": f"{notes.tree_id}:5", "action": "press"}
            on_bank = {"ref": f"{bank.tree_id}:5", "action": "press"}

            # The delegate's own identity (root, the publisher's uid) reads and acts on both.
            seen = (await relay.call("dev.kiki.a11y.snapshot", {}))["text"]
            assert NOTES in seen
            assert BANK in seen
            assert (await relay.call("dev.kiki.a11y.act", on_bank))["ok"]

            # Alice, through it: the notes app only.
            act = "dev.kiki.a11y.act"
            assert (await relay.call(act, on_notes, on_behalf_of=ALICE))["ok"]
            why = await refusal(relay, act, on_bank, on_behalf_of=ALICE)
            assert "remote:did:plc:alice may not act on tree" in why
            assert "needs an allow rule naming remote:" in why
            seen = (await relay.call("dev.kiki.a11y.snapshot", {}, on_behalf_of=ALICE))["text"]
            assert NOTES in seen
            assert BANK not in seen
            found = await relay.call("dev.kiki.a11y.find", {"name": "Save"}, on_behalf_of=ALICE)
            assert {n["ref"].split(":")[0] for n in found["nodes"]} == {str(notes.tree_id)}
            why = await refusal(
                relay, "dev.kiki.a11y.snapshot", {"appId": BANK}, on_behalf_of=ALICE
            )
            assert "may not read tree" in why

            # Bob: no rule names him, so nothing, whatever the delegate may do.
            why = await refusal(relay, act, on_notes, on_behalf_of=BOB)
            assert "remote:did:plc:bob may not act on tree" in why
            empty = await relay.call("dev.kiki.a11y.snapshot", {}, on_behalf_of=BOB)
            assert empty["total"] == 0
    finally:
        await notes.__aexit__(None, None, None)
        await bank.__aexit__(None, None, None)
    assert pressed == [BANK, NOTES]  # the delegate's own press, then alice's

    # The broker's audit names the person beside the delegate; the a11y-server's log names the
    # person each action reached or was refused.
    entries = [
        orjson.loads(line) for line in (sockdir / "state" / "audit.jsonl").read_bytes().splitlines()
    ]
    acts = [
        (e.get("onBehalfOf", {}).get("subject"), e["outcome"])
        for e in entries
        if e.get("tool") == act
    ]
    assert acts == [
        (None, "ok"),
        ("did:plc:alice", "ok"),
        ("did:plc:alice", "error"),
        ("did:plc:bob", "error"),
    ]
    said = a11y_log.read().decode()
    assert "remote:did:plc:alice (relayed by uid=0" in said
    assert f"press on {notes.tree_id}:5\n" in said  # done for alice
    assert f"refused: press on {bank.tree_id}:5" in said
    assert "remote:did:plc:bob (relayed by uid=0" in said
