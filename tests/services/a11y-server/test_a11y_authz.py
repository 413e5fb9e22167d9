"""Who may read, subscribe to and act on which app's tree (issue 16: a11y.sock had no
authorization): the policy alone (tier 1), and the attacks of a second Unix user against a real
a11y-server, on its socket and through the broker's tools (tier 2)."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kiki_a11y_server.policy import A11yPolicy
from kikitest.a11y_fixtures import form_tree
from kikitest.second_user import open_to_others, run_as
from libkiki.a11y import wire
from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher
from libkiki.errors import ConfigError, KikiError, PermissionDenied, ToolError
from libkiki.peer import PeerCred
from libkiki.tools import ToolClient

pytestmark = pytest.mark.integration

Start = Callable[..., tuple[Path, subprocess.Popen[bytes]]]
ROOT = PeerCred(pid=1, uid=0, gid=0)
ALICE = PeerCred(pid=2, uid=1000, gid=1000, groups=frozenset({4242}))
BOB = PeerCred(pid=3, uid=1001, gid=1001)


def app(uid: int, app_id: str = "org.example.Editor") -> wire.App:
    return wire.App(1, app_id, 99, uid)


# -- tier 1: the policy ------------------------------------------------------------------------


def test_by_default_a_user_sees_and_acts_on_its_own_apps_only(tmp_path: Path) -> None:
    policy = A11yPolicy.load(tmp_path / "none.toml")
    for right in ("read", "subscribe", "act"):
        assert policy.allows(ALICE, right, app(1000))
        assert not policy.allows(BOB, right, app(1000))
        assert policy.allows(ROOT, right, app(1000))
    with pytest.raises(PermissionDenied, match="may not act on tree 1"):
        policy.check(BOB, "act", app(1000))


def test_rules_grant_and_deny_by_principal_right_and_app(tmp_path: Path) -> None:
    path = tmp_path / "a11y-policy.toml"
    path.write_text(
        """
[[allow]]
principals = ["gid:4242"]
rights = ["read", "subscribe"]

[[deny]]
principals = ["*"]
rights = ["act"]
apps = ["org.example.Bank"]
"""
    )
    policy = A11yPolicy.load(path)
    # Alice's supplementary group (SO_PEERGROUPS) reads Bob's apps, and cannot act on them.
    assert policy.allows(ALICE, "read", app(1001))
    assert policy.allows(ALICE, "subscribe", app(1001))
    assert not policy.allows(ALICE, "act", app(1001))
    # Nobody acts on the bank, its own user and root included; reading it stays as it was.
    assert not policy.allows(BOB, "act", app(1001, "org.example.Bank"))
    assert not policy.allows(ROOT, "act", app(1001, "org.example.Bank"))
    assert policy.allows(BOB, "read", app(1001, "org.example.Bank"))
    assert not policy.sees_all(ROOT, "read")  # a deny rule could name root: checked per tree


def test_publishers_tell_apart_trees_of_the_same_app_id(tmp_path: Path) -> None:
    path = tmp_path / "a11y-policy.toml"
    path.write_text(
        """
[[allow]]
principals = ["uid:1001"]
rights = ["read", "act"]
apps = ["org.example.Bank"]
publishers = ["uid:0"]

[[deny]]
principals = ["*"]
rights = ["act"]
apps = ["org.example.Bank"]
publishers = ["uid:1000"]
"""
    )
    policy = A11yPolicy.load(path)
    bank = app(0, "org.example.Bank")
    # The bank root publishes: Bob reads and acts on it.
    assert policy.allows(BOB, "act", bank, ROOT)
    # Alice names one of her own units org.example.Bank: the rule is not about her tree.
    assert not policy.allows(BOB, "read", app(1000, "org.example.Bank"), ALICE)
    assert not policy.allows(ALICE, "act", app(1000, "org.example.Bank"), ALICE)
    # A tree whose publisher is not known (gone): an allow naming publishers does not hold,
    # a deny naming them does.
    assert not policy.allows(BOB, "read", bank, None)
    assert not policy.allows(ROOT, "act", app(1000, "org.example.Bank"), None)


def test_publishers_with_a_star_among_them_is_whoever_published(tmp_path: Path) -> None:
    """``["*", "uid:0"]`` is everyone, as ``["*"]`` is: it grants on a tree whose publisher
    is not known (gone) as well."""
    path = tmp_path / "a11y-policy.toml"
    for publishers in ('["*"]', '["*", "uid:0"]'):
        path.write_text(
            f'[[allow]]\nprincipals = ["uid:1001"]\nrights = ["read"]\npublishers = {publishers}\n'
        )
        policy = A11yPolicy.load(path)
        assert policy.allows(BOB, "read", app(1000, "org.example.Notes"), None), publishers


def test_publisher_rules_say_who_may_name_which_apps(tmp_path: Path) -> None:
    path = tmp_path / "a11y-policy.toml"
    path.write_text('[[publisher]]\nprincipals = ["uid:1000"]\napps = ["org.example.*"]\n')
    policy = A11yPolicy.load(path)
    assert policy.may_name(ALICE, "org.example.Editor")
    assert not policy.may_name(ALICE, "com.other.Editor")
    assert not policy.may_name(BOB, "org.example.Editor")
    assert not A11yPolicy.load(tmp_path / "none.toml").may_name(ROOT, "org.example.Editor")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[allow]]\nprincipals = ['uid:x']\nrights = ['read']\n", "is not a principal"),
        ("[[allow]]\nprincipals = ['*']\nrights = ['write']\n", "unknown rights write"),
        (
            "[[allow]]\nprincipals = ['*']\n",
            "principals, rights, apps and publishers must be non-empty lists",
        ),
        ("[[permit]]\nprincipals = ['*']\nrights = ['read']\n", "unknown keys permit"),
        ("[[publisher]]\napps = ['*']\n", "publisher\\[0\\]: principals and apps must be"),
        ("[[publisher]]\nprincipals = ['*']\nrights = ['read']\n", "exactly the keys"),
        ("[[allow]\n", "a11y-policy.toml"),
    ],
)
def test_a_bad_policy_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "a11y-policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        A11yPolicy.load(path)


# -- tier 2: a second user against a real server -------------------------------------------------


def refused(exc: KikiError) -> list[Any]:
    return [type(exc).__name__, exc.jsonrpc_code]


def snoop(path: Path, tree_id: int, app_id: str) -> Any:
    """The attack, as the second user: publish a tree of its own, then dump, query, subscribe
    to and press Save in root's tree ``tree_id`` (of the app ``app_id``)."""

    async def attack() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with A11yPublisher(path, label="mine") as mine, A11yClient(path) as client:
            await mine.publish([wire.Node(1, wire.ROLES["window"], "Mine")], root_id=1)
            out["own"] = mine.tree_id
            mirror = await client.subscribe()  # the dump: everything it may see
            out["seen"] = sorted(t.tree_id for t in mirror)
            found, total = await client.query(name="Save")
            out["found"] = [len(found), total]
            attempts: dict[str, Callable[[], Awaitable[object]]] = {
                "subscribe": lambda: client.subscribe(tree_id=tree_id),
                "subscribe_app": lambda: client.subscribe(apps=[app_id]),
                "query": lambda: client.query(tree_id=tree_id),
                "press": lambda: client.act((tree_id, 5), "press"),
            }
            for name, attempt in attempts.items():
                try:
                    await attempt()
                    out[name] = "allowed"
                except KikiError as exc:
                    out[name] = refused(exc)
        return out

    return attack


async def root_app(path: Path, pressed: list[int]) -> A11yPublisher:
    async def on_action(request: wire.ActionRequest) -> str:
        pressed.append(request.node_id)
        return "saved"

    return A11yPublisher(path, label="Editor", on_action=on_action)


async def test_a_second_user_can_neither_dump_nor_press_roots_app(
    a11y_server: Start, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    path, _ = a11y_server()
    open_to_others(sockdir, path)
    pressed: list[int] = []
    async with await root_app(path, pressed) as editor, A11yClient(path) as root:
        await editor.publish(form_tree(), root_id=1)
        roots_app = f"pid-{os.getpid()}"  # the app id of a publisher outside any unit
        got = await asyncio.to_thread(run_as, attacker, snoop(path, editor.tree_id, roots_app))
        # Root's own view is whole (the attacker's app has left with its process).
        mirror = await root.subscribe()
        assert {t.tree_id for t in mirror} == {editor.tree_id}
    assert got["seen"] == [got["own"]]  # its own app, not root's
    assert got["found"] == [0, 0]
    denied = ["PermissionDenied", -32003]
    assert got["subscribe"] == denied
    assert got["subscribe_app"] == denied
    assert got["query"] == denied
    assert got["press"] == denied
    assert pressed == []  # root's app never heard of it


async def test_the_a11y_tools_answer_for_the_caller_the_broker_names(
    spawn_service: Any, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    # The broker lets the second user call the a11y tools; the a11y policy still decides which
    # apps it sees and acts on: its own session's only.
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "tool-policy.toml").write_text(
        f'[[allow]]\nprincipals = ["user:{attacker.pw_name}"]\ntools = ["dev.kiki.a11y.*"]\n'
    )
    _, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    _, notes = spawn_service("a11y-server")
    notes.wait_for("READY")
    tools_path, a11y_path = sockdir / "tools.sock", sockdir / "a11y.sock"
    open_to_others(sockdir, tools_path)
    pressed: list[int] = []
    async with await root_app(a11y_path, pressed) as editor, ToolClient(tools_path) as tools:
        await editor.publish(form_tree(), root_id=1)
        async with asyncio.timeout(20):
            while True:  # the server registers its tools once it has found the broker
                if "dev.kiki.a11y.act" in {t["name"] for t in await tools.list()}:
                    break
                await asyncio.sleep(0.05)
        assert "Editor" in (await tools.call("dev.kiki.a11y.snapshot", {}))["text"]  # root

        roots_app = f"pid-{os.getpid()}"  # the app id of a publisher outside any unit
        save = {"ref": f"{editor.tree_id}:5", "action": "press"}

        async def attack() -> dict[str, Any]:
            out: dict[str, Any] = {}
            async with ToolClient(tools_path) as client:
                out["snapshot"] = await client.call("dev.kiki.a11y.snapshot", {})
                out["found"] = await client.call("dev.kiki.a11y.find", {"name": "Save"})
                for name, args in [
                    ("snapshot_app", ("dev.kiki.a11y.snapshot", {"appId": roots_app})),
                    ("press", ("dev.kiki.a11y.act", save)),
                ]:
                    try:
                        out[name] = await client.call(*args)
                    except ToolError as exc:
                        out[name] = exc.message
            return out

        got = await asyncio.to_thread(run_as, attacker, attack)
    assert "Editor" not in got["snapshot"]["text"]
    assert got["snapshot"]["total"] == 0
    assert got["found"] == {"nodes": [], "total": 0}
    assert "may not read tree" in got["snapshot_app"]
    assert "may not act on tree" in got["press"]
    assert pressed == []


def test_a_server_with_an_unusable_policy_does_not_start(sockdir: Path, spawn_service: Any) -> None:
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "a11y-policy.toml").write_text('[[allow]]\nprincipals = ["uid:x"]\nrights = ["read"]\n')
    proc, _ = spawn_service("a11y-server", extra_env={"KIKI_A11Y_SERVER_BROKER_TOOLS": "false"})
    assert proc.wait(timeout=30) == 78  # EX_CONFIG, with the reason in its log
    assert proc.stderr is not None
    assert b"'uid:x' is not a principal" in proc.stderr.read()


async def publish_named(path: Path, app_id: str, pressed: list[tuple[str, int]]) -> A11yPublisher:
    """A publisher whose first update names the app it is for (as kiki-atspi-bridge does)."""

    async def on_action(request: wire.ActionRequest) -> str:
        pressed.append((app_id, request.node_id))
        return "done"

    pub = await A11yPublisher(path, label=app_id, on_action=on_action).__aenter__()
    named = wire.App(0, app_id, 4242, 0, f"app-{app_id}.service")
    ack = await pub.request(wire.TreeUpdate(0, 0, 0, 0, 0, 1, tuple(form_tree()), (), 0, named))
    assert isinstance(ack, wire.Ack)
    pub.tree_id = ack.tree_id
    return pub


async def test_a_trusted_publisher_names_its_apps_and_the_policy_tells_them_apart(
    a11y_server: Start, sockdir: Path, attacker: pwd.struct_passwd
) -> None:
    """One publisher (root here; kiki-atspi-bridge in a session) publishes two apps' trees:
    the second user may act on the one its rule names and not on the other; its own claim to
    be one of them is ignored."""
    etc = sockdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "a11y-policy.toml").write_text(
        f"""
[[publisher]]
principals = ["uid:0"]
apps = ["org.example.*"]

[[allow]]
principals = ["uid:{attacker.pw_uid}"]
rights = ["read", "subscribe", "act"]
apps = ["org.example.Editor"]
publishers = ["uid:0"]
"""
    )
    path, _ = a11y_server()
    open_to_others(sockdir, path)
    pressed: list[tuple[str, int]] = []
    editor = await publish_named(path, "org.example.Editor", pressed)
    bank = await publish_named(path, "org.example.Bank", pressed)
    try:
        async with A11yClient(path) as root:
            mirror = await root.subscribe()
            named = {t.app.app_id: t.app for t in mirror}
            assert set(named) == {"org.example.Editor", "org.example.Bank"}
            assert named["org.example.Bank"].pid == 4242  # the named app's, not the publisher's
            assert named["org.example.Bank"].uid == 0  # always the publisher's user

        async def attack() -> dict[str, Any]:
            out: dict[str, Any] = {}
            async with (
                A11yPublisher(path, label="fake") as fake,
                A11yClient(path) as client,
            ):
                claim = wire.App(0, "org.example.Editor", 1, 0, "app-org.example.Editor.service")
                ack = await fake.request(
                    wire.TreeUpdate(0, 0, 0, 0, 0, 1, tuple(form_tree()), (), 0, claim)
                )
                assert isinstance(ack, wire.Ack)
                mirror = await client.subscribe()
                out["seen"] = sorted(t.app.app_id for t in mirror)
                out["own"] = mirror.trees[ack.tree_id].app.app_id
                out["editor"] = await client.act((editor.tree_id, 5), "press")
                try:
                    await client.act((bank.tree_id, 5), "press")
                    out["bank"] = "allowed"
                except KikiError as exc:
                    out["bank"] = refused(exc)
            return out

        got = await asyncio.to_thread(run_as, attacker, attack)
    finally:
        await editor.__aexit__(None, None, None)
        await bank.__aexit__(None, None, None)
    assert got["own"].startswith("pid-")  # its claim to be the editor: ignored
    assert got["seen"] == sorted(["org.example.Editor", got["own"]])
    assert got["editor"] == "done"
    assert got["bank"] == ["PermissionDenied", -32003]
    assert pressed == [("org.example.Editor", 5)]
