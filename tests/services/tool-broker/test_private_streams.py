"""Private event streams against the real broker, for two principals besides the provider: a
second Unix user in the default group (which the defaults let subscribe to any other stream),
and a remote person through a trusted delegate. A stream its provider declares private
(``privateSubscriptions``) is theirs only through an allow rule naming it for subscribing."""

from __future__ import annotations

import grp
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest.broker_fixtures import RawPeer, RpcFailed
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from kikitest.second_user import open_to_others, run_as
from libkiki.audit import read_entries
from libkiki.tools import ON_BEHALF_OF_META, ToolClient

pytestmark = pytest.mark.integration

DIARY = "org.example.test.diary"  # someone's own data: declared private
POLICY = """
default_group = "{group}"

[[delegate]]
principals = ["uid:0"]

[[allow]]                     # written for the example's tools and streams alike
principals = ["remote:*"]
tools = ["org.example.test.*"]
"""
GRANT = f"""
[[allow]]
principals = ["uid:{{uid}}", "remote:alice"]
tools = ["{DIARY}"]
access = ["subscribe"]
"""


def start(
    sockdir: Path, spawn_service: Any, user: pwd.struct_passwd, grant: bool
) -> Iterator[Path]:
    (sockdir / "etc").mkdir(exist_ok=True)
    policy = POLICY.format(group=grp.getgrgid(user.pw_gid).gr_name)
    if grant:
        policy += GRANT.format(uid=user.pw_uid)
    (sockdir / "etc" / "tool-policy.toml").write_text(policy)
    proc: subprocess.Popen[bytes]
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    open_to_others(sockdir, sockdir / "tools.sock")
    yield sockdir / "tools.sock"
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture
def defaults(sockdir: Path, spawn_service: Any, attacker: pwd.struct_passwd) -> Iterator[Path]:
    yield from start(sockdir, spawn_service, attacker, grant=False)


@pytest.fixture
def granted(sockdir: Path, spawn_service: Any, attacker: pwd.struct_passwd) -> Iterator[Path]:
    yield from start(sockdir, spawn_service, attacker, grant=True)


async def provider(path: Path) -> RawPeer:
    """The provider (root, as the test runs): TICKS public, DIARY private."""
    peer = await RawPeer.open(path)
    answer = await peer.request(
        "kiki/registerTools",
        {
            "tools": [],
            "subscriptions": [TICKS, DIARY],
            "privateSubscriptions": [DIARY],
            "lexicons": [TICKS_LEXICON, {**TICKS_LEXICON, "id": DIARY}],
        },
    )
    assert answer["subscriptions"] == [TICKS, DIARY]
    return peer


async def attempts(path: Path, on_behalf_of: dict[str, str] | None = None) -> dict[str, int | str]:
    """Subscribe to each stream (and unsubscribe): "ok", or the error's code."""
    out: dict[str, int | str] = {}
    async with ToolClient(path) as client:
        for nsid in (TICKS, DIARY):
            params: dict[str, Any] = {"nsid": nsid}
            if on_behalf_of is not None:
                params["_meta"] = {ON_BEHALF_OF_META: on_behalf_of}
            try:
                answer = await client.connection.request("kiki/subscribe", params)
            except Exception as exc:
                out[nsid] = getattr(exc, "jsonrpc_code", repr(exc))
                continue
            out[nsid] = "ok"
            sub = answer["subscription"]
            await client.connection.request("kiki/unsubscribe", {"subscription": sub})
    return out


def run_for(user: pwd.struct_passwd, path: Path) -> dict[str, Any]:
    async def attempt() -> dict[str, Any]:
        return dict(await attempts(path))

    result: dict[str, Any] = run_as(user, attempt)
    result.pop("log")
    return result


def diary_lines(sockdir: Path) -> list[tuple[str, int, Any]]:
    return [
        (e["outcome"], e["caller"]["uid"], e.get("onBehalfOf"))
        for e in read_entries(sockdir / "state" / "audit.jsonl")
        if e["tool"] == DIARY and e["event"] == "subscribe"
    ]


async def test_by_default_a_private_stream_is_its_providers_users_alone(
    defaults: Path, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    peer = await provider(defaults)
    try:
        # A member of the default group: the public stream, not the private one.
        assert run_for(attacker, defaults) == {TICKS: "ok", DIARY: -32003}
        # A remote person whom remote:* lets subscribe to org.example.test.*: the same.
        alice = await attempts(defaults, {"subject": "alice"})
        assert alice == {TICKS: "ok", DIARY: -32003}
        # The provider's own user (root here) follows it.
        assert await attempts(defaults) == {TICKS: "ok", DIARY: "ok"}
        listed = await peer.request("kiki/listStreams", {})
        assert DIARY in [s["nsid"] for s in listed["streams"]]
    finally:
        await peer.close()
    assert diary_lines(sockdir) == [
        ("denied", attacker.pw_uid, None),
        ("denied", 0, {"subject": "alice"}),
        ("ok", 0, None),
    ]


async def test_an_allow_rule_naming_the_private_stream_for_subscribing_grants_it(
    granted: Path, attacker: pwd.struct_passwd
) -> None:
    peer = await provider(granted)
    try:
        assert run_for(attacker, granted) == {TICKS: "ok", DIARY: "ok"}
        assert await attempts(granted, {"subject": "alice"}) == {TICKS: "ok", DIARY: "ok"}
        # Bob has remote:* (a glob): not a rule naming the private stream.
        assert await attempts(granted, {"subject": "bob"}) == {TICKS: "ok", DIARY: -32003}
    finally:
        await peer.close()


async def test_private_subscriptions_must_be_declared_streams(defaults: Path) -> None:
    async with await RawPeer.open(defaults) as peer:
        with pytest.raises(RpcFailed) as refused:
            await peer.request(
                "kiki/registerTools",
                {
                    "subscriptions": [TICKS],
                    "privateSubscriptions": [DIARY],
                    "lexicons": [TICKS_LEXICON],
                },
            )
    assert refused.value.code == -32602
    assert refused.value.data == {"nsids": [DIARY]}
