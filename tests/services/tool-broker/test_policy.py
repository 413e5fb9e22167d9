"""Tool policy from kernel-given identity; file errors name the file and rule."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from kiki_tool_broker.policy import Caller, Policy, _rules
from libkiki.errors import KikiError
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit


def caller(
    uid: int,
    gid: int | None = None,
    groups: set[int] | None = None,
    app: str | None = None,
    user_app: bool = False,
) -> Caller:
    """A caller; ``app`` is a system unit's app id, or with ``user_app`` one from the caller's
    own user manager."""
    g = uid if gid is None else gid
    cred = PeerCred(
        pid=1,
        uid=uid,
        gid=g,
        app_id=app,
        app_user=uid if user_app else None,
        groups=frozenset(groups or ()),
    )
    return Caller(cred)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tool-policy.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    policy = Policy.load(tmp_path / "missing.toml")
    assert policy.allows(caller(0), "dev.kiki.x.y", "procedure", [999])[0]
    assert policy.allows(caller(1000), "dev.kiki.x.y", "procedure", [1000])[0]
    allowed, reason = policy.allows(caller(1000), "dev.kiki.x.y", "procedure", [999])
    assert not allowed
    assert "explicit grant" in reason
    assert not policy.allows(caller(1000), "dev.kiki.x.q", "query", [999])[0]


def test_queries_open_to_the_default_group(tmp_path: Path) -> None:
    gid = os.getgid()
    name = grp.getgrgid(gid).gr_name
    policy = Policy(default_group=name)
    assert policy.allows(caller(1000, 1000, {gid}), "dev.kiki.a.list", "query", [999])[0]
    assert not policy.allows(caller(1000, 1000, {gid}), "dev.kiki.a.do", "procedure", [999])[0]


def test_grants_and_denials(tmp_path: Path) -> None:
    policy = Policy.load(
        write(
            tmp_path,
            """
[[allow]]
principals = ["uid:1000", "app:org.example.Music"]
tools = ["dev.kiki.media.*"]

[[deny]]
principals = ["app:org.example.Music"]
tools = ["dev.kiki.media.seek"]
""",
        )
    )
    assert policy.allows(caller(1000), "dev.kiki.media.playPause", "procedure", [5])[0]
    assert not policy.allows(caller(1000), "dev.kiki.notifications.notify", "procedure", [5])[0]
    music = caller(2000, app="org.example.Music")
    assert policy.allows(music, "dev.kiki.media.next", "procedure", [5])[0]
    assert policy.allows(music, "dev.kiki.media.seek", "procedure", [5]) == (
        False,
        "denied by policy",
    )
    # Deny wins even over root's default.
    assert not policy.allows(
        caller(0, app="org.example.Music"), "dev.kiki.media.seek", "procedure", [5]
    )[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[allow]]\nprincipals = ['bob']\ntools = ['x']\n", "'bob' is not a principal"),
        ("[[allow]]\nprincipals = []\ntools = ['x']\n", "non-empty lists"),
        ("[[allow]]\nprincipals = ['*']\ntools = ['x']\nextra = 1\n", "exactly the keys"),
        ("[allow]\nprincipals = ['*']\n", "array of tables"),
        ("bogus = 1\n", "unknown keys bogus"),
        ("[[allow]\n", "tool-policy.toml"),
        ("[[allow]]\nprincipals = ['app:org.example.X\\n']\ntools = ['x']\n", "not a principal"),
        ("[[allow]]\nprincipals = ['uid:1000+']\ntools = ['x']\n", "not a principal"),
        ("[[allow]]\nprincipals = ['*+uid:1']\ntools = ['x']\n", "not a principal"),
        ("[[allow]]\nprincipals = ['uid:1+pid:2']\ntools = ['x']\n", "not a principal"),
    ],
)
def test_bad_policy_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(KikiError, match=message):
        Policy.load(write(tmp_path, text))


def test_a_callers_groups_are_those_of_its_connection() -> None:
    # Recorded by the kernel at connect() (libkiki.peer), never read from /proc later.
    me = Caller.of(PeerCred(pid=1, uid=1000, gid=1000, groups=frozenset({4242, 4343})))
    policy = Policy(
        _rules([{"principals": ["gid:4343"], "tools": ["dev.kiki.x.*"]}], "allow", "t"),
    )
    assert policy.allows(me, "dev.kiki.x.do", "procedure", [999])[0]
    assert not policy.allows(me, "dev.kiki.y.do", "procedure", [999])[0]


def test_a_users_app_id_grants_only_beside_who_runs_it(tmp_path: Path) -> None:
    # Any user can name a process of its own app-org.example.Music-1.scope in its own user
    # manager; only root names the system's units.
    policy = Policy.load(
        write(
            tmp_path,
            """
[[allow]]
principals = ["app:org.example.Music"]
tools = ["dev.kiki.media.*"]

[[allow]]
principals = ["uid:1000+app:org.example.Notes", "gid:4242+app:org.example.Notes"]
tools = ["dev.kiki.notes.*"]

[[deny]]
principals = ["app:org.example.Untrusted"]
tools = ["dev.kiki.*"]
""",
        )
    )
    media, notes = "dev.kiki.media.next", "dev.kiki.notes.add"
    assert policy.allows(caller(2000, app="org.example.Music"), media, "procedure", [5])[0]
    named_so_by_a_user = caller(2000, app="org.example.Music", user_app=True)
    assert not policy.allows(named_so_by_a_user, media, "procedure", [5])[0]
    assert policy.allows(
        caller(1000, app="org.example.Notes", user_app=True), notes, "procedure", [5]
    )[0]
    member = caller(3000, groups={4242}, app="org.example.Notes", user_app=True)
    assert policy.allows(member, notes, "procedure", [5])[0]
    for other in (
        caller(2000, app="org.example.Notes", user_app=True),  # another user, same name
        caller(1000),  # the user, another app
        caller(1000, app="org.example.Music", user_app=True),
    ):
        assert not policy.allows(other, notes, "procedure", [5])[0]
    # A deny matches the name wherever it comes from, root's own session included.
    untrusted = caller(0, app="org.example.Untrusted", user_app=True)
    assert policy.allows(untrusted, media, "procedure", [5]) == (False, "denied by policy")


def test_a_dangling_or_looping_policy_symlink_is_an_error(tmp_path: Path) -> None:
    # Not the defaults: every deny rule would vanish without a word.
    path = tmp_path / "tool-policy.toml"
    path.symlink_to(tmp_path / "gone.toml")
    with pytest.raises(KikiError, match=r"tool-policy\.toml is a symlink to nothing"):
        Policy.load(path)
    # Or a directory on its way: /etc/kiki linked to a disk that is not mounted.
    (tmp_path / "etc").symlink_to(tmp_path / "unmounted")
    with pytest.raises(KikiError, match="etc is a symlink to nothing"):
        Policy.load(tmp_path / "etc" / "tool-policy.toml")
    path.unlink()
    path.symlink_to(path)
    with pytest.raises(KikiError, match="Too many levels of symbolic links"):
        Policy.load(path)


def test_a_policy_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tool-policy.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(KikiError, match="not UTF-8"):
        Policy.load(path)


def test_a_name_that_resolves_to_nobody_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[[deny]]\nprincipals = ["group:untrustd"]\ntools = ["dev.kiki.*"]\n')
    Policy.load(path)
    assert "no group 'untrustd' (yet): 'group:untrustd' matches nobody" in caplog.text
    Policy.load(write(tmp_path, 'default_group = "nosuchgroup"\n'))
    assert "default_group: no group 'nosuchgroup' (yet): no caller is in it" in caplog.text


def test_decisions_are_remembered_until_the_policy_is_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiki_tool_broker.policy as policy_module

    lookups: list[str] = []

    def gid(name: str) -> int | None:
        lookups.append(name)
        return 4242

    monkeypatch.setattr(policy_module, "resolve_group", gid)
    member = caller(1000, groups={4242})
    policy = Policy.load(tmp_path / "missing.toml")
    for _ in range(3):
        assert policy.allows(member, "dev.kiki.x.q", "query", [999]) == (
            True,
            "query open to group kiki",
        )
    assert lookups == ["kiki"]  # the group database is read once, not per call
    # Another tool, kind or provider user is another decision.
    assert not policy.allows(member, "dev.kiki.x.p", "procedure", [999])[0]
    assert policy.allows(member, "dev.kiki.x.p", "procedure", [1000])[0]

    # A reload is a new Policy: what the old one remembered does not carry over.
    path = write(tmp_path, '[[deny]]\nprincipals = ["gid:4242"]\ntools = ["dev.kiki.x.*"]\n')
    reloaded = Policy.load(path)
    assert reloaded.allows(member, "dev.kiki.x.q", "query", [999]) == (False, "denied by policy")
    assert policy.allows(member, "dev.kiki.x.q", "query", [999])[0]  # the old one, unchanged


def test_remembered_decisions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import kiki_tool_broker.policy as policy_module

    monkeypatch.setattr(policy_module, "_MAX_DECISIONS", 8)
    policy = Policy()
    for i in range(50):
        assert policy.allows(caller(0), f"dev.kiki.x.t{i}", "procedure", [999])[0]
        assert len(policy._decisions) <= 8


def test_who_may_provide_what(tmp_path: Path) -> None:
    from kiki_tool_broker.policy import installed_authority

    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "org.example.Notes.json").write_text('{"id": "org.example.Notes", "version": "1"}')
    (apps / "org.example.Liar.json").write_text('{"id": "org.example.Other", "version": "1"}')
    policy = Policy.load(
        write(
            tmp_path,
            '[[provide]]\nprincipals = ["uid:1000+app:kiki-dbus-gateway"]\n'
            'tools = ["dev.kiki.media.*"]\n',
        )
    )

    def may(cred: PeerCred, nsid: str) -> tuple[bool, bool]:
        verdict = policy.may_provide(
            cred, nsid, own_uid=4000, authority=installed_authority(apps, cred.app_id)
        )
        return verdict.allowed, verdict.reserve

    someone = PeerCred(pid=1, uid=1000, gid=1000)
    # Kiki's own services, by the kernel: root, the broker's user, a system unit kiki-*.
    assert may(PeerCred(pid=1, uid=0, gid=0), "dev.kiki.a11y.act") == (True, True)
    assert may(PeerCred(pid=1, uid=4000, gid=4000), "dev.kiki.a11y.act") == (True, True)
    service = PeerCred(pid=1, uid=61000, gid=61000, app_id="kiki-a11y-server")
    assert may(service, "dev.kiki.a11y.act") == (True, True)
    # Anyone else: dev.kiki.* is not theirs, a user's "kiki-" unit included.
    assert may(someone, "dev.kiki.a11y.act") == (False, False)
    fake = PeerCred(pid=1, uid=1001, gid=1001, app_id="kiki-a11y-server", app_user=1001)
    assert may(fake, "dev.kiki.a11y.act") == (False, False)
    # A provide rule grants its globs (not reserved).
    gateway = PeerCred(pid=1, uid=1000, gid=1000, app_id="kiki-dbus-gateway", app_user=1000)
    assert may(gateway, "dev.kiki.media.playPause") == (True, False)
    assert may(gateway, "dev.kiki.notify.notify") == (False, False)
    # An installed app, under its authority only; an app not installed, nothing.
    notes = PeerCred(pid=1, uid=0 + 1000, gid=1000, app_id="org.example.Notes")
    assert may(notes, "org.example.Notes.add") == (True, True)
    assert may(notes, "org.example.Music.play") == (False, False)
    assert may(someone, "org.example.Notes.add") == (False, False)
    # A manifest stored under another id grants nothing.
    liar = PeerCred(pid=1, uid=1000, gid=1000, app_id="org.example.Liar")
    assert installed_authority(apps, "org.example.Liar") is None
    assert may(liar, "org.example.Liar.x") == (False, False)
    assert installed_authority(apps, None) is None


def test_rules_name_the_kinds_of_access_they_cover(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[deny]]\nprincipals = ["uid:1000"]\ntools = ["org.example.*"]\naccess = ["subscribe"]\n'
        '[[allow]]\nprincipals = ["uid:1001"]\ntools = ["org.example.*"]\naccess = ["call"]\n'
        '[[allow]]\nprincipals = ["uid:1002"]\ntools = ["org.example.*"]\n',
    )
    policy = Policy.load(path)
    # uid 1000: its calls are as without the rule (its own provider's tools), its
    # subscriptions denied
    assert policy.allows(caller(1000), "org.example.a", "procedure", [1000])[0]
    assert policy.allows(caller(1000), "org.example.a", "subscription", [1000]) == (
        False,
        "denied by policy",
    )
    # uid 1001: may call, but subscribing is left to the defaults (not in the group: no)
    assert policy.allows(caller(1001), "org.example.a", "procedure", [999])[0]
    allowed, reason = policy.allows(caller(1001), "org.example.a", "subscription", [999])
    assert not allowed
    assert "subscriptions need membership" in reason
    # a rule without access covers both
    assert policy.allows(caller(1002), "org.example.a", "procedure", [999])[0]
    assert policy.allows(caller(1002), "org.example.a", "subscription", [999])[0]


def test_subscribing_by_default_is_as_open_as_a_query(tmp_path: Path) -> None:
    gid = os.getgid()
    policy = Policy(default_group=grp.getgrgid(gid).gr_name)
    assert policy.allows(caller(1000, 1000, {gid}), "dev.kiki.a.watch", "subscription", [999])[0]
    assert not policy.allows(caller(1000, 1000), "dev.kiki.a.watch", "subscription", [999])[0]
    assert policy.allows(caller(1000, 1000), "dev.kiki.a.watch", "subscription", [1000])[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[allow]]\nprincipals = ["*"]\ntools = ["a.*"]\naccess = ["read"]\n', "access is"),
        ('[[provide]]\nprincipals = ["*"]\ntools = ["a.*"]\naccess = ["call"]\n', "exactly"),
    ],
)
def test_a_bad_access_list_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(KikiError, match=problem):
        Policy.load(write(tmp_path, text))
