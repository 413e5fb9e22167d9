"""Libkiki.principals, the one grammar and matching every service uses (issue 17)."""

from __future__ import annotations

import grp
import os
import pwd
import re
from pathlib import Path

import pytest

import libkiki.principals as principals
from libkiki.errors import ConfigError
from libkiki.peer import PeerCred
from libkiki.principals import (
    Principal,
    Principals,
    globs,
    identity_of,
    is_kiki_service,
    matches,
    read_policy_file,
    rule_tables,
)

pytestmark = pytest.mark.unit

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def cred(
    uid: int = 1000,
    gid: int = 1000,
    groups: set[int] | None = None,
    app: str | None = None,
    app_user: int | None = None,
) -> PeerCred:
    return PeerCred(1, uid, gid, app, None, app_user, frozenset(groups or ()))


def test_ids_names_and_anyone() -> None:
    assert Principal.parse("uid:1000").matches(cred())
    assert not Principal.parse("uid:1001").matches(cred())
    assert Principal.parse(f"user:{ME}").matches(cred(uid=os.getuid()))
    assert Principal.parse("*").matches(cred(uid=4711))
    assert Principals.parse(["uid:5", "*"]).anyone
    assert not Principals.parse(["uid:5"]).anyone


def test_groups_are_the_primary_and_every_supplementary_one_at_connect() -> None:
    # The same rule text grants the same callers everywhere: gid: and group: both look at the
    # kernel's SO_PEERGROUPS, not /etc/group (the sensor publisher matched the primary gid only).
    member = cred(gid=1000, groups={4242})
    assert Principal.parse("gid:1000").matches(member)
    assert Principal.parse("gid:4242").matches(member)
    assert not Principal.parse("gid:4343").matches(member)
    gid = os.getgid()
    assert Principal.parse(f"group:{MY_GROUP}").matches(cred(gid=1, groups={gid}))
    assert not Principal.parse(f"group:{MY_GROUP}").matches(cred(gid=gid + 1, groups=set()))


def test_names_are_resolved_once_when_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []

    def lookup(name: str) -> int:
        looked_up.append(name)
        return 4242

    monkeypatch.setattr(principals, "resolve_group", lookup)
    rule = Principal.parse("group:agents")
    for _ in range(5):
        assert rule.matches(cred(groups={4242}))
    assert looked_up == ["agents"]


def test_a_name_that_is_nobody_matches_nobody(caplog: pytest.LogCaptureFixture) -> None:
    rule = Principal.parse("user:no-such-user-here+app:x", "policy.toml: allow[0]")
    assert not rule.matches(cred(app="x"))
    assert "policy.toml: allow[0]: no user 'no-such-user-here' (yet)" in caplog.text


def test_a_users_app_id_grants_only_beside_who_runs_it() -> None:
    system_app = cred(app="org.example.Music")
    session_app = cred(app="org.example.Music", app_user=1000)
    alone, with_user = (
        Principal.parse("app:org.example.Music"),
        Principal.parse("uid:1000+app:org.example.Music"),
    )
    assert alone.matches(system_app)
    assert not alone.matches(session_app)  # any user may name its own unit so
    assert with_user.matches(session_app)
    assert not with_user.matches(cred(uid=1001, app="org.example.Music", app_user=1001))
    assert alone.matches(session_app, granting=False)  # a deny names it wherever it is


@pytest.mark.parametrize("text", ["uid:x", "root", "app:", "user:a b", "uid:1+", "", "**"])
def test_what_is_not_a_principal_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"here: {text!r} is not a principal")):
        Principal.parse(text, "here")
    assert not matches(text, cred())  # the per-process form: nobody, with a warning


def test_kiki_services_are_told_by_the_kernel() -> None:
    assert is_kiki_service(cred(uid=0), own_uid=1234)
    assert is_kiki_service(cred(uid=1234), own_uid=1234)  # `kiki up`: one user for all
    assert is_kiki_service(cred(uid=61000, app="kiki-a11y-server"), own_uid=1234)
    # A user's own unit named kiki-a11y-server is that user's word, nothing more.
    assert not is_kiki_service(cred(app="kiki-a11y-server", app_user=1000), own_uid=1234)
    assert not is_kiki_service(cred(app="org.example.Music"), own_uid=1234)


def test_identity_stays_across_a_restart() -> None:
    # A DynamicUser= service may come back with another uid: its unit is its identity.
    assert identity_of(cred(uid=61000, app="kiki-a11y-server")) == "app:kiki-a11y-server"
    assert identity_of(cred(uid=61001, app="kiki-a11y-server")) == "app:kiki-a11y-server"
    assert identity_of(cred(app="org.x.A", app_user=1000)) == "uid:1000+app:org.x.A"
    assert identity_of(cred(uid=0)) == "uid:0"


def test_policy_files(tmp_path: Path) -> None:
    assert read_policy_file(tmp_path / "absent.toml") is None
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is a symlink to nothing"):
        read_policy_file(tmp_path / "dangling.toml")
    (tmp_path / "bad.toml").write_bytes(b"\xff = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_policy_file(tmp_path / "bad.toml")
    (tmp_path / "ok.toml").write_text('default_group = "kiki"\n')
    assert read_policy_file(tmp_path / "ok.toml") == {"default_group": "kiki"}


def test_rule_tables_check_every_policy_the_same_way() -> None:
    doc = [{"principals": ["uid:1"], "tools": ["a.*"]}, {"principals": ["*"], "tools": ["b"]}]
    rules = list(rule_tables(doc, "allow", "f.toml", ("principals", "tools")))
    assert rules == [
        ("f.toml: allow[0]", {"principals": ["uid:1"], "tools": ["a.*"]}),
        ("f.toml: allow[1]", {"principals": ["*"], "tools": ["b"]}),
    ]
    assert list(rule_tables(None, "allow", "f.toml", ("principals",))) == []
    # A key with a default may be left out, and is then the default.
    [(_, fields)] = rule_tables(
        [{"principals": ["*"], "rights": ["read"]}],
        "allow",
        "f.toml",
        ("principals", "rights"),
        {"apps": ["*"]},
    )
    assert fields["apps"] == ["*"]


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"principals": ["*"]}, r"\[allow\] must be an array of tables"),
        ([{"principals": ["*"], "tools": ["x"], "extra": 1}], "exactly the keys principals and"),
        (["not a table"], "exactly the keys"),
        ([{"principals": ["*"]}], "must be non-empty lists of strings"),
        ([{"principals": [], "tools": ["x"]}], "must be non-empty lists of strings"),
        ([{"principals": ["*"], "tools": [1]}], "must be non-empty lists of strings"),
        ([{"principals": "*", "tools": ["x"]}], "must be non-empty lists of strings"),
    ],
)
def test_rule_tables_refuse_what_no_policy_means(doc: object, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        list(rule_tables(doc, "allow", "f.toml", ("principals", "tools")))


def test_globs_match_within_and_across_dots() -> None:
    [star, one] = globs(["dev.kiki.*", "a?c"])
    assert star.fullmatch("dev.kiki.a11y.act")
    assert not star.fullmatch("dev.kikix")
    assert one.fullmatch("abc")
    assert not one.fullmatch("abbc")
