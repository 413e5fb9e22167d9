"""Private event streams decided by the policy and declared by a provider, without sockets: a
stream its provider declares private (``privateSubscriptions``) is open by default to root and
the provider's own user only, and to anyone else only through an ``allow`` rule that names it
outright (no glob) for subscribing (``access`` left out, or naming ``subscribe``)."""

from __future__ import annotations

import grp
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Caller, Policy
from kiki_tool_broker.schemas import Catalog
from kikitest.broker_lexicons import TICKS_LEXICON
from libkiki.errors import InvalidParams, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Remote

pytestmark = pytest.mark.unit

DIARY = "org.example.Music.diary"
FEED = "org.example.Music.nowPlaying"
BROKER = PeerCred(1, 999, 999, "kiki-tool-broker")
MUSIC = PeerCred(10, 1000, 1000, "org.example.Music", app_user=1000)
OTHER = PeerCred(11, 1003, 1003, groups=frozenset({os.getgid()}))
ROOT = PeerCred(12, 0, 0)
GID = os.getgid()
GROUP = grp.getgrgid(GID).gr_name
RELAY = PeerCred(20, 1001, 1001, groups=frozenset({GID}))


def member(uid: int) -> Caller:
    """A local caller in the default group (which subscribes to any public stream)."""
    return Caller(PeerCred(1, uid, uid, groups=frozenset({GID})))


def load(tmp_path: Path, rules: str = "") -> Policy:
    path = tmp_path / "tool-policy.toml"
    path.write_text(f'default_group = "{GROUP}"\n[[delegate]]\nprincipals = ["uid:1001"]\n{rules}')
    return Policy.load(path)


def test_by_default_only_root_and_the_providers_user_follow_a_private_stream(
    tmp_path: Path,
) -> None:
    policy = load(tmp_path)
    public = policy.allows(member(1002), DIARY, "subscription", {1000})
    assert public == (True, f"subscription open to group {GROUP}")
    allowed, reason = policy.allows(member(1002), DIARY, "subscription", {1000}, private=True)
    assert not allowed
    assert "an allow rule naming it (no glob)" in reason
    assert policy.allows(member(1000), DIARY, "subscription", {1000}, private=True)[0]
    assert policy.allows(Caller(ROOT), DIARY, "subscription", {1000}, private=True)[0]
    # A remote person never by default, though remote:* may subscribe to public streams.
    wide = load(tmp_path, '[[allow]]\nprincipals = ["remote:*"]\ntools = ["org.example.*"]\n')
    alice = Caller(RELAY, Remote("alice"))
    assert wide.allows(alice, DIARY, "subscription", {1000})[0]
    assert not wide.allows(alice, DIARY, "subscription", {1000}, private=True)[0]


@pytest.mark.parametrize(
    "rule",
    [
        'tools = ["org.example.*"]\naccess = ["subscribe"]',  # a glob
        f'tools = ["{DIARY}"]\naccess = ["call"]',
    ],
)
def test_only_a_rule_naming_the_private_stream_for_subscribing_grants_it(
    tmp_path: Path, rule: str
) -> None:
    granted = f'[[allow]]\nprincipals = ["uid:1002"]\ntools = ["{DIARY}"]\n'
    granted += 'access = ["subscribe"]\n'
    # access left out: calls and streams alike, and a stream's NSID is never a tool's
    granted += f'[[allow]]\nprincipals = ["remote:alice"]\ntools = ["{DIARY}"]\n'
    broad = f'[[allow]]\nprincipals = ["uid:1003", "remote:bob", "*"]\n{rule}\n'
    policy = load(tmp_path, granted + broad)
    for caller in (member(1002), Caller(RELAY, Remote("alice"))):
        allowed, reason = policy.allows(caller, DIARY, "subscription", {1000}, private=True)
        assert (allowed, reason) == (True, "allowed by a rule naming the private stream")
    for caller in (member(1003), member(1004), Caller(RELAY, Remote("bob"))):
        assert not policy.allows(caller, DIARY, "subscription", {1000}, private=True)[0]


def test_a_deny_rule_still_wins_over_a_private_grant_and_over_the_providers_user(
    tmp_path: Path,
) -> None:
    rules = f'[[allow]]\nprincipals = ["uid:1002"]\ntools = ["{DIARY}"]\naccess = ["subscribe"]\n'
    rules += '[[deny]]\nprincipals = ["uid:1002", "uid:1000"]\ntools = ["org.example.*"]\n'
    policy = load(tmp_path, rules)
    for uid in (1002, 1000):
        assert policy.allows(member(uid), DIARY, "subscription", {1000}, private=True) == (
            False,
            "denied by policy",
        )


def stream_lexicon(nsid: str) -> dict[str, Any]:
    return {**TICKS_LEXICON, "id": nsid}


def make_core(tmp_path: Path, policy: Policy) -> BrokerCore:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "org.example.Music.json").write_text(json.dumps({"id": "org.example.Music"}))
    return BrokerCore(BrokerConfig(), Catalog.load(), policy, apps_dir=apps, own=BROKER)


def subscribe(core: BrokerCore, cred: PeerCred, conn: int, nsid: str) -> None:
    subscriber = core.subscriptions.subscriber(core.identify(cred))
    core.subscriptions.subscribe(subscriber, conn, nsid, {})


def test_a_provider_declares_its_private_streams_when_it_registers(tmp_path: Path) -> None:
    core = make_core(tmp_path, load(tmp_path))
    music = core.provider(MUSIC)
    docs = [stream_lexicon(FEED), stream_lexicon(DIARY)]
    for bad in ([FEED], "x", [1]):  # not a declared stream; not a list of NSIDs
        with pytest.raises(InvalidParams, match="privateSubscriptions"):
            core.register_all(music, [], docs, subscriptions=[DIARY], private=bad)
    assert core.register_all(music, [], docs, subscriptions=[DIARY, FEED], private=[DIARY])
    member_cred = PeerCred(30, 1002, 1002, groups=frozenset({GID}))
    subscribe(core, member_cred, 1, FEED)  # public: the default group's
    with pytest.raises(PermissionDenied, match="private stream"):
        subscribe(core, member_cred, 1, DIARY)
    subscribe(core, MUSIC, 2, DIARY)  # the provider's own user
    # Still private while nobody serves it, and when it is served again without the flag.
    core.unregister_all(music, [], subscriptions=[DIARY])
    with pytest.raises(PermissionDenied, match="private stream"):
        subscribe(core, member_cred, 3, DIARY)
    core.register_all(music, [], docs, subscriptions=[DIARY])
    with pytest.raises(PermissionDenied, match="private stream"):
        subscribe(core, member_cred, 3, DIARY)
    listed = core.subscriptions.list_streams(core.identify(OTHER))
    assert DIARY not in [s["nsid"] for s in listed["streams"]]
