"""Calls on behalf of remote people (issue 18) against the real broker: a delegate the policy
trusts (here root, the test process) names the person in ``_meta["dev.kiki/onBehalfOf"]`` and
the call is decided for ``remote:`` principals alone; anyone else naming a person is refused."""

from __future__ import annotations

import asyncio
import pwd
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_lexicons import COUNT, ECHO, LEXICONS, TICKS, TICKS_LEXICON
from kikitest.second_user import open_to_others, run_as
from libkiki.audit import read_entries, verify
from libkiki.errors import KikiError, PermissionDenied
from libkiki.tools import ON_BEHALF_OF_META, StreamContext, ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

POLICY = f"""
[[delegate]]
principals = ["uid:0"]

[[allow]]
principals = ["remote:alice"]
tools = ["{ECHO}"]

[[allow]]
principals = ["*"]
tools = ["{COUNT}"]

[[allow]]
principals = ["remote:*"]
tools = ["dev.kiki.service.getInfo"]

[[allow]]
principals = ["remote:alice"]
tools = ["{TICKS}"]
access = ["subscribe"]
"""
ALICE = {"subject": "alice", "session": "phone-1"}


@pytest.fixture
def delegating_broker(sockdir: Path, spawn_service: Any) -> Any:
    (sockdir / "etc").mkdir(exist_ok=True)
    (sockdir / "etc" / "tool-policy.toml").write_text(POLICY)
    proc: subprocess.Popen[bytes]
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    yield sockdir / "tools.sock"
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def provider(path: Path, seen: list[dict[str, Any]]) -> ToolProvider:
    tools = ToolProvider(path, lexicons=[*LEXICONS, TICKS_LEXICON])

    @tools.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        seen.append(dict(call.request.meta or {}))
        return {"text": args["text"]}

    @tools.tool(COUNT)
    async def count(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        seen.append(dict(call.request.meta or {}))
        return {"text": str(args["to"])}

    @tools.subscription(TICKS)
    async def ticks(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[dict[str, Any]]:
        yield {"n": 1}
        await asyncio.Event().wait()  # until closed

    return tools


def audited(sockdir: Path) -> list[dict[str, Any]]:
    log = sockdir / "state" / "audit.jsonl"
    assert list(verify(log)) == []  # old and new lines in one chain
    return [e for e in read_entries(log) if e["tool"] in (ECHO, COUNT)]


async def test_a_trusted_delegate_calls_as_the_remote_person_and_both_are_audited(
    delegating_broker: Path, sockdir: Path
) -> None:
    path = delegating_broker
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(20), provider(path, seen).connect(), ToolClient(path) as relay:
        assert await relay.call(ECHO, {"text": "hi"}, on_behalf_of=ALICE) == {"text": "hi"}
        # Bob has no rule: a remote person gets nothing by default, root relay or not.
        with pytest.raises(PermissionDenied, match="remote:bob") as info:
            await relay.call(ECHO, {"text": "hi"}, on_behalf_of={"subject": "bob"})
        assert info.value.jsonrpc_code == -32003
        # COUNT is open to "*" and to root: local principals, which a remote person is not.
        assert await relay.call(COUNT, {"to": 2}) == {"text": "2"}
        with pytest.raises(PermissionDenied, match="needs an allow rule naming remote:"):
            await relay.call(COUNT, {"to": 2}, on_behalf_of=ALICE)
        # remote:* names any remote person.
        info_answer = await relay.call("dev.kiki.service.getInfo", on_behalf_of=ALICE)
        assert info_answer["name"] == "tool-broker"
        # The broker's own reader serves the new lines (their lexicon has onBehalfOf).
        page = await relay.call("dev.kiki.tools.readAuditLog", {"verify": True})
    assert page["problems"] == []
    assert [e.get("onBehalfOf") for e in page["entries"] if e["tool"] == ECHO] == [
        ALICE,
        {"subject": "bob"},
    ]
    # The provider learns both: the relay (dev.kiki/caller) and the person.
    assert [m.get(ON_BEHALF_OF_META) for m in seen] == [ALICE, None]
    assert seen[0]["dev.kiki/caller"]["uid"] == 0
    entries = audited(sockdir)
    assert [(e["tool"], e["outcome"], e.get("onBehalfOf")) for e in entries] == [
        (ECHO, "ok", ALICE),
        (ECHO, "denied", {"subject": "bob"}),
        (COUNT, "ok", None),
        (COUNT, "denied", ALICE),
    ]
    assert {e["caller"]["uid"] for e in entries} == {0}


async def test_a_malformed_person_is_refused(delegating_broker: Path) -> None:
    async with asyncio.timeout(20), ToolClient(delegating_broker) as relay:
        malformed: list[Any] = [{"subject": ""}, {"subject": "a b"}, {"subject": "a", "uid": 0}]
        for bad in malformed:
            with pytest.raises(KikiError) as info:
                await relay.call("dev.kiki.service.getInfo", on_behalf_of=bad)
            assert info.value.jsonrpc_code == -32602


def test_an_untrusted_process_naming_a_person_is_refused_and_audited(
    delegating_broker: Path, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    path = delegating_broker
    open_to_others(sockdir, path)

    async def attack() -> dict[str, Any]:
        async with ToolClient(path) as client:
            try:
                await client.call("dev.kiki.service.getInfo", on_behalf_of=ALICE)
            except KikiError as exc:
                return {"code": exc.jsonrpc_code, "message": exc.message, "data": exc.data}
            return {"code": None}

    async def attack_stream() -> dict[str, Any]:
        async with ToolClient(path) as client:
            try:
                async with client.subscribe(TICKS, on_behalf_of=ALICE):
                    pass
            except KikiError as exc:
                return {"code": exc.jsonrpc_code, "message": exc.message, "data": exc.data}
            return {"code": None}

    refused = run_as(attacker, attack)
    assert refused["code"] == -32003, refused
    assert "not a trusted delegate" in refused["message"]
    assert refused["data"] == {"rule": "onBehalfOf"}
    log = sockdir / "state" / "audit.jsonl"
    [entry] = [e for e in read_entries(log) if e["caller"]["uid"] == attacker.pw_uid]
    assert (entry["outcome"], entry["code"]) == ("denied", -32003)
    assert "onBehalfOf" not in entry  # it was nobody's word for who it was
    # A subscription is refused exactly as a call is.
    refused = run_as(attacker, attack_stream)
    assert (refused["code"], refused["data"]) == (-32003, {"rule": "onBehalfOf"}), refused
    assert "not a trusted delegate" in refused["message"]
    [_, entry] = [e for e in read_entries(log) if e["caller"]["uid"] == attacker.pw_uid]
    assert (entry["tool"], entry["event"], entry["outcome"]) == (TICKS, "subscribe", "denied")
    assert "onBehalfOf" not in entry


async def test_a_trusted_delegate_subscribes_for_the_remote_person_and_both_are_audited(
    delegating_broker: Path, sockdir: Path
) -> None:
    path = delegating_broker
    async with asyncio.timeout(20), provider(path, []).connect(), ToolClient(path) as relay:
        async with relay.subscribe(TICKS, on_behalf_of=ALICE) as stream:
            assert await anext(stream.messages()) == {"n": 1}
        # Bob has no rule: refused, though the relay itself (root) could subscribe.
        with pytest.raises(PermissionDenied, match="remote:bob"):
            async with relay.subscribe(TICKS, on_behalf_of={"subject": "bob"}):
                pass
        async with relay.subscribe(TICKS) as own:  # the relay for itself: root's defaults
            assert await anext(own.messages()) == {"n": 1}
    log = sockdir / "state" / "audit.jsonl"
    assert list(verify(log)) == []
    lines = [
        (e["event"], e["outcome"], e.get("reason"), e.get("onBehalfOf"), e["caller"]["uid"])
        for e in read_entries(log)
        if e["tool"] == TICKS
    ]
    assert lines == [
        ("subscribe", "ok", None, ALICE, 0),
        ("unsubscribe", "ok", "unsubscribed", ALICE, 0),
        ("subscribe", "denied", None, {"subject": "bob"}, 0),
        ("subscribe", "ok", None, None, 0),
        ("unsubscribe", "ok", "unsubscribed", None, 0),
    ]


async def listed(relay: ToolClient, on_behalf_of: dict[str, str] | None) -> set[str]:
    return {tool["name"] for tool in await relay.list(on_behalf_of=on_behalf_of)}


async def test_a_trusted_delegate_lists_what_the_remote_person_may_call(
    delegating_broker: Path,
) -> None:
    path = delegating_broker
    async with asyncio.timeout(20), provider(path, []).connect(), ToolClient(path) as relay:
        # The relay itself (root) may call everything; Alice what remote: rules give her.
        assert {ECHO, COUNT, "dev.kiki.tools.readAuditLog"} <= await listed(relay, None)
        assert await listed(relay, ALICE) == {ECHO, "dev.kiki.service.getInfo"}
        assert await listed(relay, {"subject": "bob"}) == {"dev.kiki.service.getInfo"}
        with pytest.raises(KikiError) as info:
            await listed(relay, {"subject": "a b"})
        assert info.value.jsonrpc_code == -32602


def test_an_untrusted_process_listing_for_a_person_is_refused(
    delegating_broker: Path, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    path = delegating_broker
    open_to_others(sockdir, path)

    async def attack() -> dict[str, Any]:
        async with ToolClient(path) as client:
            try:
                await listed(client, ALICE)
            except KikiError as exc:
                return {"code": exc.jsonrpc_code, "data": exc.data}
            return {"code": None}

    refused = run_as(attacker, attack)
    assert (refused["code"], refused["data"]) == (-32003, {"rule": "onBehalfOf"}), refused
