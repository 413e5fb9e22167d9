"""The core's decisions about event streams, without sockets: registering streams with tools
(all or nothing, the provide policy), and who may subscribe to what with which params."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy, Rule
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.streams import Action, Audit, OpenUpstream, Subscribed
from kikitest.broker_lexicons import TICKS_LEXICON, procedure
from libkiki.errors import Conflict, InvalidParams, NotFound, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Principals, globs
from libkiki.tools import ON_BEHALF_OF_META

pytestmark = pytest.mark.unit

BROKER = PeerCred(1, 999, 999, "kiki-tool-broker")
MUSIC = PeerCred(10, 1000, 1000, "org.example.Music", app_user=1000)
OTHER = PeerCred(11, 1001, 1001)
ROOT = PeerCred(12, 0, 0)
FEED = "org.example.Music.nowPlaying"
PLAY = "org.example.Music.play"


def feed_lexicon() -> dict[str, Any]:
    doc = copy.deepcopy(TICKS_LEXICON)
    doc["id"] = FEED
    return doc


def make_core(tmp_path: Path, policy: Policy | None = None) -> BrokerCore:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "org.example.Music.json").write_text(json.dumps({"id": "org.example.Music"}))
    return BrokerCore(BrokerConfig(), Catalog.load(), policy or Policy(), apps_dir=apps, own=BROKER)


def subscribe(
    core: BrokerCore, cred: PeerCred, conn: int, nsid: str, params: dict[str, Any]
) -> tuple[Subscribed, list[Action]]:
    """A peer's own subscription (no delegate's person), as the core decides it."""
    subscriber = core.subscriptions.subscriber(core.identify(cred))
    return core.subscriptions.subscribe(subscriber, conn, nsid, params)


def lexicons() -> list[dict[str, Any]]:
    return [feed_lexicon(), procedure(PLAY, {}, {"text": {"type": "string"}}, [])]


def test_streams_register_with_tools_under_the_provide_policy(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    music = core.provider(MUSIC)
    done = core.register_all(music, [PLAY], lexicons(), subscriptions=[FEED])
    assert (done.tools, done.streams, done.actions) == ([PLAY], [FEED], [])
    # Another identity may not provide under the app's authority: nothing of it registers.
    other = core.provider(OTHER)
    with pytest.raises(PermissionDenied, match=FEED):
        core.register_all(other, [], lexicons(), subscriptions=[FEED])
    # Taken: Conflict, and the tool that came with it is not registered either.
    stop = procedure("org.example.Music.stop", {}, {"text": {"type": "string"}}, [])
    again = core.provider(MUSIC)
    with pytest.raises(Conflict):
        core.register_all(again, [stop["id"]], [*lexicons(), stop], subscriptions=[FEED])
    assert stop["id"] not in [t.nsid for t in core.registry]


def test_a_tool_lexicon_is_not_a_stream_nor_a_stream_a_tool(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    music = core.provider(MUSIC)
    with pytest.raises(InvalidParams, match="not a subscription"):
        core.register_all(music, [], lexicons(), subscriptions=[PLAY])
    with pytest.raises(InvalidParams, match="not a query or procedure"):
        core.register_all(music, [FEED], lexicons())
    assert len(core.registry) == 0


def test_subscribers_waiting_are_opened_when_their_provider_registers(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    music = core.provider(MUSIC)
    core.register_all(music, [], lexicons(), subscriptions=[FEED])
    core.unregister_all(music, [], [FEED])
    # Nobody serves it now: root may subscribe all the same.
    subscribed, _ = subscribe(core, ROOT, 7, FEED, {"room": "a"})
    assert subscribed.state == "waiting"
    done = core.register_all(core.provider(MUSIC), [], lexicons(), subscriptions=[FEED])
    assert [type(a) for a in done.actions] == [OpenUpstream]
    with pytest.raises(NotFound):
        core.unregister_all(music, [], [FEED])  # no longer this provider's


def test_subscribing_checks_policy_then_params(tmp_path: Path) -> None:
    deny = Rule(
        Principals.parse(["uid:1001"]), globs(["org.example.*"]), False, frozenset({"subscribe"})
    )
    core = make_core(tmp_path, Policy(deny=(deny,)))
    core.register_all(core.provider(MUSIC), [], lexicons(), subscriptions=[FEED])
    with pytest.raises(PermissionDenied, match="may not subscribe"):
        subscribe(core, OTHER, 1, FEED, {})
    with pytest.raises(InvalidParams, match=r"params\.room"):
        subscribe(core, MUSIC, 1, FEED, {"room": 3})
    with pytest.raises(InvalidParams, match="not a subscription"):
        subscribe(core, MUSIC, 1, PLAY, {})
    subscribed, actions = subscribe(core, MUSIC, 1, FEED, {"room": "b"})
    assert subscribed.state == "opening"
    assert isinstance(actions[0], OpenUpstream)
    assert actions[0].params == {"room": "b"}


def test_a_provider_serves_a_bounded_number_of_streams(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "org.example.Music.json").write_text(json.dumps({"id": "org.example.Music"}))
    config = BrokerConfig(max_tools_per_provider=1)
    core = BrokerCore(config, Catalog.load(), Policy(), apps_dir=apps, own=BROKER)
    second = feed_lexicon()
    second["id"] = FEED + "2"
    music = core.provider(MUSIC)
    core.register_all(music, [], lexicons(), subscriptions=[FEED])
    with pytest.raises(InvalidParams, match="at most 1 streams") as info:
        core.register_all(music, [], [second], subscriptions=[second["id"]])
    assert info.value.data == {"limit": 1}


def test_an_apps_stream_stays_reserved_for_it_after_it_leaves(tmp_path: Path) -> None:
    # uid 1001 may provide the app's NSIDs by a rule, but not while they are reserved for it.
    other = Rule(Principals.parse(["uid:1001"]), globs(["org.example.Music.*"]), True)
    core = make_core(tmp_path, Policy(provide=(other,)))
    music = core.provider(MUSIC)
    core.register_all(music, [], lexicons(), subscriptions=[FEED])
    assert core.registry.reserved == {FEED: music.identity}
    core.drop_provider(music)
    core.streams.provider_gone(music.id)
    with pytest.raises(PermissionDenied, match="reserved for"):
        core.register_all(core.provider(OTHER), [], lexicons(), subscriptions=[FEED])
    core.register_all(core.provider(MUSIC), [], lexicons(), subscriptions=[FEED])  # its own


def test_a_rule_keeping_a_caller_from_the_audit_log_keeps_it_from_its_stream(
    tmp_path: Path,
) -> None:
    # uid 1001 may use the broker's tools, but not read the audit log: the deny rule was
    # written before the stream existed, and names the tool only.
    allow = Rule(Principals.parse(["uid:1001"]), globs(["dev.kiki.tools.*"]), True)
    deny = Rule(Principals.parse(["uid:1001"]), globs(["dev.kiki.tools.readAuditLog"]), False)
    core = make_core(tmp_path, Policy(allow=(allow,), deny=(deny,)))
    core.declare_own_streams(["dev.kiki.tools.subscribeAudit"])
    with pytest.raises(PermissionDenied, match=r"shows what dev\.kiki\.tools\.readAuditLog does"):
        subscribe(core, OTHER, 1, "dev.kiki.tools.subscribeAudit", {})
    subscribed, _ = subscribe(core, ROOT, 1, "dev.kiki.tools.subscribeAudit", {})
    assert subscribed.state == "opening"  # root may: the stream opens


def test_a_delegates_subscription_is_decided_for_the_person_it_names(tmp_path: Path) -> None:
    delegate = Principals.parse(["uid:1001"])
    alice = Rule(Principals.parse(["remote:alice"]), globs([FEED]), True, frozenset({"subscribe"}))
    core = make_core(tmp_path, Policy(allow=(alice,), delegate=(delegate,)))
    core.register_all(core.provider(MUSIC), [], lexicons(), subscriptions=[FEED])
    relay = core.identify(OTHER)
    person = {ON_BEHALF_OF_META: {"subject": "alice", "session": "phone"}}
    subscriber = core.subscriptions.subscriber(relay, person)
    assert subscriber.on_behalf_of == {"subject": "alice", "session": "phone"}
    assert subscriber.view == relay.view  # the audit's caller is the relay, as the kernel says
    _, actions = core.subscriptions.subscribe(subscriber, 1, FEED, {})
    [audit] = [a for a in actions if isinstance(a, Audit)]
    assert audit.caller == subscriber  # its lines (subscribe, and the end) name both
    # Bob has no rule: the relay's own defaults (uid 1001 may subscribe to queries' streams in
    # the default group, or not) never reach a remote person.
    bob = core.subscriptions.subscriber(relay, {ON_BEHALF_OF_META: {"subject": "bob"}})
    with pytest.raises(PermissionDenied, match=r"remote:bob \(relayed by"):
        core.subscriptions.subscribe(bob, 1, FEED, {})
    # Only a trusted delegate may name someone; a malformed person is bad params.
    with pytest.raises(PermissionDenied, match="not a trusted delegate") as info:
        core.subscriptions.subscriber(core.identify(MUSIC), person)
    assert info.value.data == {"rule": "onBehalfOf"}
    with pytest.raises(InvalidParams):
        core.subscriptions.subscriber(relay, {ON_BEHALF_OF_META: {"subject": ""}})
    # Without a person, the relay subscribes as itself.
    assert core.subscriptions.subscriber(relay, {}).on_behalf_of is None


def test_the_streams_listing_shows_what_the_caller_may_subscribe_to_and_who_serves_it(
    tmp_path: Path,
) -> None:
    deny = Rule(Principals.parse(["uid:1001"]), globs([FEED]), False, frozenset({"subscribe"}))
    allow = Rule(Principals.parse(["uid:1001"]), globs(["dev.kiki.tools.*"]), True)
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "org.example.Music.json").write_text(json.dumps({"id": "org.example.Music"}))
    config = BrokerConfig(list_page_size=1)
    policy = Policy(allow=(allow,), deny=(deny,))
    core = BrokerCore(config, Catalog.load(), policy, apps_dir=apps, own=BROKER)
    core.declare_own_streams(["dev.kiki.tools.subscribeProviders"])
    music = core.provider(MUSIC)
    core.register_all(music, [], lexicons(), subscriptions=[FEED])
    root = core.identify(ROOT)
    first = core.subscriptions.list_streams(root)
    assert [s["nsid"] for s in first["streams"]] == ["dev.kiki.tools.subscribeProviders"]
    assert first["streams"][0]["provider"] == core.own.view
    second = core.subscriptions.list_streams(root, first["nextCursor"])
    assert second == {
        "streams": [
            {"nsid": FEED, "description": feed_lexicon()["defs"]["main"]["description"]}
            | {"provider": music.view}
        ]
    }
    # What the policy keeps from a caller is left out (OTHER may not subscribe to FEED), and
    # does not make a page of its own.
    only = core.subscriptions.list_streams(core.identify(OTHER))
    assert only == {"streams": [first["streams"][0]]}
    with pytest.raises(InvalidParams, match="invalid cursor"):
        core.subscriptions.list_streams(root, "not a cursor!")
    core.unregister_all(music, [], [FEED])  # withdrawn: no longer listed
    assert core.subscriptions.list_streams(root, first["nextCursor"]) == {"streams": []}
