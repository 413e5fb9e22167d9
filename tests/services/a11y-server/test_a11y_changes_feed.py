"""The change stream's feed, sans-I/O (:mod:`kiki_a11y_server.changes`): coalescing, its bound,
messages under the size bound and valid against the lexicon, what is told of trees that go, and
the policy rule that decides which trees a shared stream may carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_a11y_server.changes import ChangeFeed
from kiki_a11y_server.desktop import Desktop
from kiki_a11y_server.policy import A11yPolicy
from kiki_a11y_server.tree import Tree
from kikitest import REPO
from kikitest.a11y_fixtures import big_tree, form_tree
from libkiki.a11y import wire
from libkiki.lexicon import Registry

pytestmark = pytest.mark.unit

R = wire.ROLES


@pytest.fixture(scope="module")
def check() -> Any:
    registry = Registry()
    assert registry.load_dir(REPO / "schemas" / "lexicons") == []
    return registry.validator("dev.kiki.a11y.subscribeChanges").message


def app(app_id: str, uid: int = 1000) -> wire.App:
    return wire.App(0, app_id, 99, uid)


def publish(desktop: Desktop, tree: Tree, nodes: list[wire.Node], root_id: int = 0) -> None:
    desktop.publish(tree, wire.TreeUpdate(0, 0, 0, 0, 0, root_id, tuple(nodes), (), 0))


def feed_of(desktop: Desktop, **kw: Any) -> ChangeFeed:
    feed = ChangeFeed(desktop, lambda a: True, **kw)
    desktop.watchers.append(feed)
    return feed


def field(value: str) -> wire.Node:
    return wire.Node(3, R["textField"], "Title", value=value)


def test_changes_of_a_tree_merge_until_taken_and_the_latest_data_wins(check: Any) -> None:
    desktop = Desktop()
    tree = desktop.new_tree(app("org.example.Editor"))
    publish(desktop, tree, form_tree(), root_id=1)
    feed = feed_of(desktop)
    [first] = feed.take()  # the tree as it was when the feed started
    check(first)
    assert first["reset"] is True
    for i in range(50):
        publish(desktop, tree, [field(f"v{i}")])
    publish(desktop, tree, [wire.Node(4, R["generic"], children=(5,))])  # drops 6
    [merged] = feed.take()
    check(merged)
    assert merged["revision"] == tree.seq
    assert {n["id"]: n.get("value") for n in merged["changed"]} == {3: "v49", 4: None}
    assert merged["removed"] == [6]
    assert list(feed.take()) == []


def test_a_backlog_past_its_bound_becomes_one_resend_of_the_tree(check: Any) -> None:
    desktop = Desktop()
    tree = desktop.new_tree(app("org.example.Churn"))
    publish(desktop, tree, [wire.Node(1, R["list"], children=())], root_id=1)
    feed = feed_of(desktop, max_pending_ids=16)
    list(feed.take())
    # Items come and go with new ids: each update adds one id and removes the last.
    for i in range(2, 40):
        publish(desktop, tree, [wire.Node(1, R["list"], children=(i,)), wire.Node(i, R["label"])])
        assert sum(len(e.changed) + len(e.removed) for e in feed.pending.values()) <= 17
    assert feed.resets == 1
    [message] = feed.take()
    check(message)
    assert message["reset"] is True
    assert "removed" not in message
    assert sorted(n["id"] for n in message["changed"]) == [1, 39]


def test_a_big_change_is_a_run_of_messages_under_the_size_bound(check: Any) -> None:
    desktop = Desktop()
    tree = desktop.new_tree(app("org.example.Big"))
    nodes = big_tree(3000)
    nodes[5] = nodes[5]._replace(value="x" * 16000)  # cut to fit, not dropped
    nodes[6] = nodes[6]._replace(name="n" * 3000)  # past the lexicon's bound: cut to it
    publish(desktop, tree, nodes, root_id=1)
    feed = feed_of(desktop, max_message_bytes=8192)
    messages = list(feed.take())
    assert len(messages) > 3
    for m in messages:
        check(m)
        assert len(orjson.dumps(m)) <= 8192 + 1024  # a node's estimate is its JSON's size
        assert m["revision"] == tree.seq
    assert [m.get("reset", False) for m in messages] == [True] + [False] * (len(messages) - 1)
    ids = [n["id"] for m in messages for n in m["changed"]]
    assert sorted(ids) == list(range(1, 3001))
    cut = next(n for m in messages for n in m["changed"] if n["id"] == 6)
    assert cut["value"] == "x" * 2048
    named = next(n for m in messages for n in m["changed"] if n["id"] == 7)
    assert named["name"] == "n" * 1024


def test_a_tree_changing_while_its_messages_are_sent_is_told_next_time(check: Any) -> None:
    desktop = Desktop()
    tree = desktop.new_tree(app("org.example.Big"))
    publish(desktop, tree, big_tree(1000), root_id=1)
    feed = feed_of(desktop, max_message_bytes=4096)
    messages = feed.take()
    first = next(messages)  # the broker reads the first; the app changes meanwhile
    assert 1 in {n["id"] for n in first["changed"]}
    # Node 2 drops its children (12..21) and their subtrees; node 3 is renamed.
    root = desktop.trees[tree.tree_id].nodes
    publish(desktop, tree, [root[2]._replace(children=()), root[3]._replace(name="renamed")])
    rest = [n for m in messages for n in m["changed"]]
    gone = set(range(1, 1001)) - set(desktop.trees[tree.tree_id].nodes)
    assert gone
    assert not gone & {n["id"] for n in rest}  # skipped, not sent stale
    [after] = feed.take()
    check(after)
    assert set(after["removed"]) == gone
    assert {n["id"]: n["name"] for n in after["changed"]}[3] == "renamed"


def test_a_failing_watcher_costs_only_itself() -> None:
    class Broken:
        def changed(self, tree: Tree, change: Any) -> None:
            raise RuntimeError("a bug")

        def removed(self, tree: Tree) -> None:
            raise RuntimeError("a bug")

    desktop = Desktop()
    desktop.watchers.append(Broken())
    feed = feed_of(desktop)
    tree = desktop.new_tree(app("org.example.Editor"))
    publish(desktop, tree, form_tree(), root_id=1)  # does not raise: the change is made
    assert tree.seq == 1
    assert [m["appId"] for m in feed.take()] == ["org.example.Editor"]
    desktop.remove_tree(tree.tree_id)
    assert [m.get("gone") for m in feed.take()] == [True]


def test_gone_is_told_of_trees_the_stream_sent_only() -> None:
    desktop = Desktop()
    seen = desktop.new_tree(app("org.example.Seen"))
    publish(desktop, seen, form_tree(), root_id=1)
    feed = feed_of(desktop)
    list(feed.take())
    unseen = desktop.new_tree(app("org.example.Unseen"))
    publish(desktop, unseen, form_tree(), root_id=1)
    desktop.remove_tree(unseen.tree_id)  # came and went between two takes
    desktop.remove_tree(seen.tree_id)
    messages = list(feed.take())
    assert [(m["appId"], m.get("gone")) for m in messages] == [("org.example.Seen", True)]


def test_the_app_id_and_visibility_select_trees_decided_again_at_each_take() -> None:
    desktop = Desktop()
    editor = desktop.new_tree(app("org.example.Editor"))
    other = desktop.new_tree(app("org.example.Other"))
    publish(desktop, editor, form_tree(), root_id=1)
    publish(desktop, other, form_tree(), root_id=1)
    shown = {"org.example.Editor", "org.example.Other"}
    feed = ChangeFeed(desktop, lambda a: a.app_id in shown, app_id="org.example.Editor")
    desktop.watchers.append(feed)
    assert [m["appId"] for m in list(feed.take())] == ["org.example.Editor"]
    publish(desktop, other, [field("x")])
    assert list(feed.take()) == []
    # The policy no longer lets everyone see it (a reload): subscribers are told to forget it.
    publish(desktop, editor, [field("y")])
    shown.clear()
    assert [(m["appId"], m.get("gone")) for m in feed.take()] == [("org.example.Editor", True)]
    publish(desktop, editor, [field("z")])
    assert list(feed.take()) == []


def test_a_shared_stream_carries_what_the_policy_grants_everyone(tmp_path: Path) -> None:
    path = tmp_path / "a11y-policy.toml"
    path.write_text(
        """
[[allow]]
principals = ["*"]
rights = ["subscribe"]
apps = ["org.example.*"]

[[allow]]
principals = ["remote:*"]
rights = ["subscribe"]
apps = ["org.example.*", "net.local.*"]

[[allow]]
principals = ["*"]
rights = ["subscribe"]
apps = ["net.local.*", "com.local.*"]

[[allow]]
principals = ["group:kiki", "uid:0"]
rights = ["subscribe", "read"]
apps = ["*"]

[[deny]]
principals = ["uid:1234"]
rights = ["subscribe"]
apps = ["org.example.Bank"]
"""
    )
    policy = A11yPolicy.load(path)
    assert policy.public("subscribe", app("org.example.Editor"))
    assert not policy.public("read", app("org.example.Editor"))  # another right
    assert not policy.public("subscribe", app("com.other.App"))  # granted to some only
    assert not policy.public("subscribe", app("org.example.Bank"))  # someone may not
    assert policy.public("subscribe", app("net.local.App"))  # two rules together
    # `*` does not match remote people, whom a delegate may subscribe for.
    assert not policy.public("subscribe", app("com.local.App"))
    # Without a rule, each user sees its own apps: nothing is everyone's.
    assert not A11yPolicy.load(tmp_path / "none.toml").public("subscribe", app("org.example.X"))
