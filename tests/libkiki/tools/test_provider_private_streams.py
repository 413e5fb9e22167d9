"""``ToolProvider.subscription(nsid, private=True)`` and ``ToolClient.list(on_behalf_of=...)``
against the real broker: a stream declared private through libkiki is refused to a second Unix
user in the default group (who may follow its public sibling) and served to the provider's own
user, also once the provider has registered again with a restarted broker; a trusted delegate's
list on behalf of a person is that person's tools."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest import until
from kikitest.broker_lexicons import ECHO, LEXICONS, TICKS, TICKS_LEXICON
from kikitest.second_user import open_to_others, run_as
from libkiki.backoff import RestartBackoff
from libkiki.errors import KikiError
from libkiki.tools import StreamContext, ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

DIARY = "org.example.test.diary"  # someone's own data: declared private
POLICY = """
default_group = "{group}"

[[delegate]]
principals = ["uid:{me}"]

[[allow]]
principals = ["remote:alice"]
tools = ["{echo}"]

[[provide]]
principals = ["uid:{other}"]
tools = ["org.example.test.*"]
"""
ALICE = {"subject": "alice", "session": "phone-1"}
Broker = tuple[Path, subprocess.Popen[bytes]]


@pytest.fixture
def policy_broker(
    sockdir: Path, spawn_service: Any, attacker: pwd.struct_passwd
) -> Iterator[Broker]:
    """The real broker, whose default group is the second user's (who may also provide the
    test NSIDs), this uid a delegate."""
    (sockdir / "etc").mkdir(exist_ok=True)
    group = grp.getgrgid(attacker.pw_gid).gr_name
    policy = POLICY.format(group=group, me=os.getuid(), echo=ECHO, other=attacker.pw_uid)
    (sockdir / "etc" / "tool-policy.toml").write_text(policy)
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    open_to_others(sockdir, sockdir / "tools.sock")
    yield sockdir / "tools.sock", proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def provider(path: Path) -> ToolProvider:
    """TICKS served as a public stream, DIARY (the same lexicon) as a private one, and ECHO."""
    provider = ToolProvider(
        path, lexicons=[*LEXICONS, TICKS_LEXICON, {**TICKS_LEXICON, "id": DIARY}]
    )

    async def ticks(params: dict[str, Any], ctx: StreamContext) -> AsyncIterator[dict[str, Any]]:
        yield {"n": 1}
        await asyncio.Event().wait()  # until closed

    provider.subscription(TICKS)(ticks)
    provider.subscription(DIARY, private=True)(ticks)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"]}

    return provider


async def attempts(path: Path) -> dict[str, Any]:
    """Subscribe to each stream and read its first message: the message, or the error code."""
    out: dict[str, Any] = {}
    async with ToolClient(path, timeout=10) as client:
        for nsid in (TICKS, DIARY):
            try:
                async with client.subscribe(nsid) as stream:
                    out[nsid] = await anext(stream.messages())
            except KikiError as exc:
                out[nsid] = exc.jsonrpc_code
    return out


def second_user_runs(
    user: pwd.struct_passwd, attack: Callable[[], Coroutine[Any, Any, dict[str, Any]]]
) -> dict[str, Any]:
    result: dict[str, Any] = run_as(user, attack)
    result.pop("log")
    return result


async def second_user(user: pwd.struct_passwd, path: Path) -> dict[str, Any]:
    """:func:`attempts` as the second user (from a thread: this loop serves the provider)."""
    return await asyncio.to_thread(second_user_runs, user, lambda: attempts(path))


async def served(path: Path) -> None:
    async with ToolClient(path, timeout=10) as client:

        async def listed() -> bool:
            return {TICKS, DIARY} <= {s["nsid"] for s in await client.streams()}

        await until(listed, "the provider registered its streams")


async def test_a_private_stream_is_its_providers_users_alone(
    policy_broker: Broker, attacker: pwd.struct_passwd
) -> None:
    path, _ = policy_broker
    async with asyncio.timeout(60), provider(path).connect():
        # The default group follows the public stream, not the private one.
        assert await second_user(attacker, path) == {TICKS: {"n": 1}, DIARY: -32003}
        # The provider's own user follows both.
        assert await attempts(path) == {TICKS: {"n": 1}, DIARY: {"n": 1}}


async def test_a_provider_of_another_user_follows_its_own_private_stream(
    policy_broker: Broker, attacker: pwd.struct_passwd
) -> None:
    path, _ = policy_broker

    async def provide_and_follow() -> dict[str, Any]:
        async with provider(path).connect():
            return await attempts(path)

    # Not root: the second user is served its own private stream as the provider's user.
    assert second_user_runs(attacker, provide_and_follow) == {TICKS: {"n": 1}, DIARY: {"n": 1}}


async def test_registered_again_after_a_broker_restart_it_is_still_private(
    policy_broker: Broker, attacker: pwd.struct_passwd, spawn_service: Any, sockdir: Path
) -> None:
    path, proc = policy_broker
    backoff = RestartBackoff(initial=0.05, maximum=0.2)
    task = asyncio.ensure_future(provider(path).keep_registered(backoff))
    try:
        async with asyncio.timeout(60):
            await served(path)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            # A new broker knows nothing of the first registration: only the second one's
            # privateSubscriptions keeps the stream private.
            again, notes = spawn_service("tool-broker")
            notes.wait_for("READY")
            try:
                open_to_others(path)
                await served(path)
                assert await second_user(attacker, path) == {TICKS: {"n": 1}, DIARY: -32003}
                assert await attempts(path) == {TICKS: {"n": 1}, DIARY: {"n": 1}}
            finally:
                again.terminate()
                await asyncio.to_thread(again.wait, 30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_delegate_lists_what_a_person_may_call(policy_broker: Broker) -> None:
    path, _ = policy_broker
    async with asyncio.timeout(60), provider(path).connect(), ToolClient(path) as relay:
        own = {tool["name"] for tool in await relay.list()}
        assert ECHO in own
        assert len(own) > 1  # the broker's own tools too
        alice = await relay.list(on_behalf_of=ALICE)
        assert [tool["name"] for tool in alice] == [ECHO]
        assert await relay.list(on_behalf_of={"subject": "bob"}) == []
