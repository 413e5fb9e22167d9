"""The a11y-server's decisions without a socket: requests into A11yCore, frames and routes out."""

from __future__ import annotations

import itertools
from pathlib import Path

import pydantic
import pytest

from kiki_a11y_server.changes import ChangeFeed
from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.core import A11yCore, Flush, Outcome, Session
from kiki_a11y_server.protocol import PUBLISHER, SUBSCRIBER, A11yConnection
from kikitest.a11y_fixtures import A, form_tree
from libkiki.a11y import wire
from libkiki.errors import InvalidParams, NotFound, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.service import ServiceContext
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier

pytestmark = pytest.mark.unit

ALICE = PeerCred(pid=2, uid=1000, gid=1000, app_id="org.example.Editor")
BOB = PeerCred(pid=3, uid=1001, gid=1001)
_keys = itertools.count(1)


def make_core(tmp_path: Path, **settings: object) -> A11yCore:
    config = A11yConfig.model_validate(
        {"broker_tools": False, "policy_file": str(tmp_path / "none.toml"), **settings}
    )
    ctx = ServiceContext("a11y-server", "0", Listeners([]), Notifier(""), config=config)
    return A11yCore(ctx, config)


def session(cred: PeerCred) -> Session:
    return Session(next(_keys), cred, A11yConnection())


def reply(outcome: Outcome) -> wire.Message:
    assert outcome.reply is not None
    return wire.decode(outcome.reply)


def publish(core: A11yCore, who: Session) -> int:
    outcome = core.handle(who, wire.TreeUpdate(1, root_id=1, nodes=tuple(form_tree())))
    ack = reply(outcome)
    assert isinstance(ack, wire.Ack)
    assert outcome.flush is Flush.ALL
    return ack.tree_id


def test_a_first_update_makes_the_connection_the_publisher_of_its_tree(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    app = session(ALICE)
    tree_id = publish(core, app)
    assert app.tree is not None
    assert app.tree.tree_id == tree_id
    assert PUBLISHER in app.conn.roles
    assert core.owners[tree_id] is app
    assert app.tree.app.app_id == "org.example.Editor"  # the kernel's word, not the peer's
    assert core.ctx.counters["updates"] == 1


def test_a_refused_first_update_leaves_no_tree(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    app = session(ALICE)
    # Node 2 is a child of node 1 and not sent: the update breaks the tree's rules.
    outcome = core.handle(app, wire.TreeUpdate(1, root_id=1, nodes=(form_tree()[0],)))
    error = reply(outcome)
    assert isinstance(error, wire.Error)
    assert error.code == InvalidParams.jsonrpc_code
    assert app.tree is None
    assert not core.desktop.trees
    assert not core.owners
    assert core.ctx.counters["updates_rejected"] == 1


def test_a_subscription_is_a_snapshot_to_send_and_the_role(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    publish(core, session(ALICE))
    watcher = session(ALICE)
    outcome = core.handle(watcher, wire.Subscribe(5))
    assert outcome == Outcome(flush=Flush.SELF)
    assert SUBSCRIBER in watcher.conn.roles
    assert watcher.sub is not None
    (frame,) = core.desktop.take(watcher.sub)
    snapshot = wire.decode(frame)
    assert isinstance(snapshot, wire.Snapshot)
    assert snapshot.request_id == 5
    assert [len(t.nodes) for t in snapshot.trees] == [len(form_tree())]


def test_naming_a_tree_one_may_not_see_is_refused(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    tree_id = publish(core, session(ALICE))
    outcome = core.handle(session(BOB), wire.Query(3, tree_id))
    error = reply(outcome)
    assert isinstance(error, wire.Error)
    assert error.code == PermissionDenied.jsonrpc_code
    assert core.readable(BOB) == []
    assert [t.tree_id for t in core.readable(ALICE)] == [tree_id]


def test_a_rule_naming_publishers_carries_a_trees_first_appearance(tmp_path: Path) -> None:
    """Bob may subscribe to Alice's trees as she publishes them: he gets a new tree's first
    update (its whole tree), not only the ones after it."""
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text(
        '[[allow]]\nprincipals = ["uid:1001"]\nrights = ["subscribe"]\npublishers = ["uid:1000"]\n'
    )
    core = make_core(tmp_path, policy_file=str(policy))
    watcher = session(BOB)
    core.handle(watcher, wire.Subscribe(5))
    assert watcher.sub is not None
    core.desktop.take(watcher.sub)  # the (empty) snapshot
    tree_id = publish(core, session(ALICE))
    (frame,) = core.desktop.take(watcher.sub)
    update = wire.decode(frame)
    assert isinstance(update, wire.TreeUpdate)
    assert update.tree_id == tree_id
    assert len(update.nodes) == len(form_tree())


def test_a_trusted_publisher_names_the_app_of_its_tree_and_no_one_else_does(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text('[[publisher]]\nprincipals = ["uid:1000"]\napps = ["org.gnome.*"]\n')
    core = make_core(tmp_path, policy_file=str(policy))
    named = wire.App(0, "org.gnome.Calculator", 77, 0, "app-org.gnome.Calculator.scope", "Calc")

    def first_update(who: PeerCred, app: wire.App) -> wire.App:
        publisher = session(who)
        core.handle(publisher, wire.TreeUpdate(1, root_id=1, nodes=tuple(form_tree()), app=app))
        assert publisher.tree is not None
        return publisher.tree.app

    got = first_update(ALICE, named)
    assert (got.app_id, got.pid, got.uid, got.unit, got.label) == (
        "org.gnome.Calculator",
        77,
        1000,
        "app-org.gnome.Calculator.scope",
        "Calc",
    )  # the uid is the publisher's, whatever the claim says
    assert first_update(ALICE, named._replace(app_id="org.example.Bank")).app_id == ALICE.app_id
    assert first_update(BOB, named).app_id == "pid-3"  # not trusted: its own identity
    assert core.ctx.counters["named_apps"] == 1


def test_an_action_is_routed_to_the_app_under_its_own_request_id(tmp_path: Path) -> None:
    core = make_core(tmp_path, action_timeout=2.0)
    app = session(ALICE)
    tree_id = publish(core, app)
    asker = session(ALICE)
    request = wire.ActionRequest(9, tree_id, 5, A["press"], timeout_ms=500)
    outcome = core.handle(asker, request)
    assert outcome == Outcome(action=request)
    assert asker.actions_in_flight == 1

    forward = core.route(request, asker.cred)
    assert forward.owner is app
    assert forward.request == wire.ActionRequest(1, tree_id, 5, A["press"], "", 500)
    assert forward.timeout == 0.5  # the asker's shorter wait wins
    assert "did not answer press on node 5 within 0.5s" in forward.timed_out().message
    # The app's answer is taken until the server settles the route, and not after.
    taken = app.conn.receive_data(app.conn.send(wire.ActionResult(1, "done")))
    assert type(taken[0]).__name__ == "Answer"
    core.settle(forward)
    stray = app.conn.receive_data(app.conn.send(wire.ActionResult(1, "late")))
    assert type(stray[0]).__name__ == "Stray"

    answered = core.action_answered(9, wire.ActionResult(1, "done"))
    assert answered is not None
    assert wire.decode(answered) == wire.ActionResult(9, "done")


def test_actions_a_node_does_not_support_or_on_nothing_are_refused(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    tree_id = publish(core, session(ALICE))
    with pytest.raises(InvalidParams, match="does not support focus"):
        core.route(wire.ActionRequest(1, tree_id, 5, A["focus"]), ALICE)
    with pytest.raises(NotFound):
        core.route(wire.ActionRequest(1, tree_id + 1, 5, A["press"]), ALICE)
    with pytest.raises(PermissionDenied):
        core.route(wire.ActionRequest(1, tree_id, 5, A["press"]), BOB)
    failed = core.action_failed(7, PermissionDenied("no"))
    assert wire.decode(failed) == wire.Error(7, PermissionDenied.jsonrpc_code, "no")


def test_actions_in_flight_are_bounded_per_connection(tmp_path: Path) -> None:
    core = make_core(tmp_path, max_actions_in_flight=1)
    tree_id = publish(core, session(ALICE))
    asker = session(ALICE)
    first = core.handle(asker, wire.ActionRequest(1, tree_id, 5, A["press"]))
    assert first.action is not None
    second = reply(core.handle(asker, wire.ActionRequest(2, tree_id, 6, A["press"])))
    assert isinstance(second, wire.Error)
    assert "at most 1 actions in flight" in second.message
    assert asker.actions_in_flight == 1


def test_a_publisher_that_leaves_takes_its_tree_away(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    app = session(ALICE)
    tree_id = publish(core, app)
    watcher = session(ALICE)
    core.handle(watcher, wire.Subscribe(1))
    assert watcher.sub is not None
    core.desktop.take(watcher.sub)
    assert core.leave(app) is True
    assert tree_id not in core.desktop.trees
    assert tree_id not in core.owners
    (gone,) = core.desktop.take(watcher.sub)
    assert wire.decode(gone) == wire.TreeGone(0, tree_id, None)
    assert core.leave(watcher) is False
    assert not core.desktop.subscribers


def test_info_and_status_say_what_the_desktop_holds(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    publish(core, session(ALICE))
    info = reply(core.handle(session(BOB), wire.GetInfo(4)))
    assert isinstance(info, wire.Info)
    assert info.request_id == 4
    assert ("nodes", len(form_tree())) in info.counters
    assert ("trees", 1) in info.counters
    assert core.status_text("bound") == "serving a11y.sock (bound): 1 app tree, 0 subscribers"


@pytest.mark.parametrize(
    "setting",
    [{"max_frame": 1 << 40}, {"action_timeout": 0}, {"max_actions_in_flight": 10**9}],
)
def test_settings_are_bounded(setting: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        A11yConfig.model_validate(setting)


BRIDGE = PeerCred(
    pid=50, uid=1000, gid=1000, app_id="kiki-atspi-bridge", unit="kiki-atspi-bridge.service"
)
AGENT = PeerCred(pid=60, uid=1001, gid=1001, groups=frozenset({4242}))
BANK = wire.App(0, "org.example.Bank", 77, 1000, "app-org.example.Bank.service", "Bank")
AGENTS_ACT_BUT_NOT_ON_THE_BANK = """
[[allow]]
principals = ["gid:4242"]
rights = ["read", "subscribe", "act"]
apps = ["*"]

[[deny]]
principals = ["*"]
rights = ["act"]
apps = ["org.example.Bank"]
"""


def _bridged(core: A11yCore, app: wire.App) -> Session:
    pub = session(BRIDGE)
    core.handle(pub, wire.TreeUpdate(1, root_id=1, nodes=tuple(form_tree()), app=app))
    assert pub.tree is not None
    return pub


def test_a_deny_rule_holds_on_the_app_an_untrusted_publisher_claims(tmp_path: Path) -> None:
    """kiki up trusts no bridge: its trees are the bridge's own, yet the bank's stays out of
    reach of a deny rule naming the bank (a claim only ever narrows access)."""
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text(AGENTS_ACT_BUT_NOT_ON_THE_BANK)
    core = make_core(tmp_path, policy_file=str(policy))
    bank = _bridged(core, BANK)
    assert bank.tree is not None
    assert bank.tree.app.app_id == "kiki-atspi-bridge"  # the claim is not trusted
    node = next(n for n in form_tree() if n.actions)
    press = wire.ActionRequest(9, bank.tree.tree_id, node.id, node.actions[0])
    with pytest.raises(PermissionDenied):
        core.route(press, AGENT)
    # Reading is not denied; and another bridged app is still acted on.
    assert [t.tree_id for t in core.readable(AGENT)] == [bank.tree.tree_id]
    other = _bridged(core, BANK._replace(app_id="org.example.Notes"))
    assert other.tree is not None
    core.route(wire.ActionRequest(10, other.tree.tree_id, node.id, node.actions[0]), AGENT)


def test_an_allow_rule_does_not_hold_on_an_untrusted_claim(tmp_path: Path) -> None:
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text(
        '[[allow]]\nprincipals = ["gid:4242"]\nrights = ["read"]\napps = ["org.example.Bank"]\n'
    )
    core = make_core(tmp_path, policy_file=str(policy))
    _bridged(core, BANK)
    assert core.readable(AGENT) == []


def test_a_trusted_publisher_names_an_app_without_an_app_id_by_its_pid(tmp_path: Path) -> None:
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text('[[publisher]]\nprincipals = ["uid:1000"]\n')
    core = make_core(tmp_path, policy_file=str(policy))
    pub = _bridged(core, wire.App(0, "", 4321, 1000, "", "Factory"))
    assert pub.tree is not None
    assert (pub.tree.app.app_id, pub.tree.app.pid) == ("pid-4321", 4321)


def test_a_first_update_that_fails_in_any_way_leaves_no_owner(tmp_path: Path) -> None:
    core = make_core(tmp_path)

    def broken(app: wire.App) -> bool:
        raise RuntimeError("a bug in deciding who sees the new tree")

    core.desktop.subscribe(999, wire.Subscribe(1), broken)
    app = session(ALICE)
    error = reply(core.handle(app, wire.TreeUpdate(1, root_id=1, nodes=tuple(form_tree()))))
    assert isinstance(error, wire.Error)
    assert app.tree is None
    assert not core.desktop.trees
    assert not core.owners


def test_a_reload_takes_back_a_publishers_right_to_name_its_trees(tmp_path: Path) -> None:
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text(
        '[[publisher]]\nprincipals = ["uid:1000"]\napps = ["org.example.*"]\n'
        '[[allow]]\nprincipals = ["gid:4242"]\nrights = ["read", "subscribe"]\n'
        'apps = ["org.example.Notes"]\n'
    )
    core = make_core(tmp_path, policy_file=str(policy))
    notes = _bridged(core, BANK._replace(app_id="org.example.Notes"))
    bank = _bridged(core, BANK)
    assert notes.tree is not None
    assert bank.tree is not None
    assert (notes.tree.app.app_id, bank.tree.app.app_id) == ("org.example.Notes", BANK.app_id)
    watcher = session(AGENT)
    core.handle(watcher, wire.Subscribe(5))
    assert watcher.sub is not None
    core.desktop.take(watcher.sub)  # the snapshot: the notes' tree
    assert core.reload_policy() is False  # nothing changed: names kept
    # The rule for the bank stays; the notes may no longer be named.
    policy.write_text(
        '[[publisher]]\nprincipals = ["uid:1000"]\napps = ["org.example.Bank"]\n'
        '[[allow]]\nprincipals = ["gid:4242"]\nrights = ["read", "subscribe"]\n'
        'apps = ["org.example.Notes"]\n'
    )
    assert core.reload_policy() is True
    assert notes.tree.app.app_id == "kiki-atspi-bridge"  # its publisher's own identity
    assert (notes.tree.app.pid, notes.tree.app.tree_id) == (BRIDGE.pid, notes.tree.tree_id)
    assert bank.tree.app.app_id == BANK.app_id
    # The agent, allowed on the notes only, no longer reads the renamed tree, and its
    # subscription (whose mirror names the tree as it first came) is told to resync.
    assert core.readable(AGENT) == []
    (frame,) = core.desktop.take(watcher.sub)
    assert isinstance(wire.decode(frame), wire.Resync)
    core.handle(watcher, wire.Resync(6))
    (snapshot,) = core.desktop.take(watcher.sub)
    decoded = wire.decode(snapshot)
    assert isinstance(decoded, wire.Snapshot)
    assert decoded.trees == ()
    # A deny rule still holds on the name it claimed.
    policy.write_text(
        '[[allow]]\nprincipals = ["gid:4242"]\nrights = ["read"]\n'
        '[[deny]]\nprincipals = ["*"]\nrights = ["read"]\napps = ["org.example.Notes"]\n'
    )
    core.reload_policy()
    assert [t.tree_id for t in core.readable(AGENT)] == [bank.tree.tree_id]


def test_a_subscriber_admitted_by_publishers_is_told_when_the_tree_goes(tmp_path: Path) -> None:
    """The removal is decided while the tree's publisher is still known: a rule naming
    publishers holds for the TreeGone as for the tree's updates."""
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text(
        '[[allow]]\nprincipals = ["uid:1001"]\nrights = ["subscribe"]\npublishers = ["uid:1000"]\n'
    )
    core = make_core(tmp_path, policy_file=str(policy))
    watcher = session(BOB)
    core.handle(watcher, wire.Subscribe(5))
    assert watcher.sub is not None
    core.desktop.take(watcher.sub)
    alice = session(ALICE)
    tree_id = publish(core, alice)
    core.desktop.take(watcher.sub)
    assert core.leave(alice)
    frames = [wire.decode(f) for f in core.desktop.take(watcher.sub)]
    assert [(type(f), getattr(f, "tree_id", 0)) for f in frames] == [(wire.TreeGone, tree_id)]


def test_the_change_stream_carries_a_new_trees_first_appearance_by_publishers(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "a11y-policy.toml"
    policy.write_text(
        '[[allow]]\nprincipals = ["*", "remote:*"]\nrights = ["subscribe"]\n'
        'publishers = ["uid:1000"]\n'
    )
    core = make_core(tmp_path, policy_file=str(policy))
    feed = ChangeFeed(core.desktop, core.streamable)
    core.desktop.watchers.append(feed)
    assert list(feed.take()) == []
    tree_id = publish(core, session(ALICE))
    publish(core, session(BOB))  # another publisher's tree: not streamed
    (first,) = feed.take()
    assert (first["treeId"], first["reset"]) == (tree_id, True)
    assert len(first["changed"]) == len(form_tree())
