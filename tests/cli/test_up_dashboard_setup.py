"""What `kiki up` prepares for its dashboard: the relay's device link for the session, a broker
policy trusting the relay (this user, on a developer's machine) for the people in it, and the
dashboard's URL built from the relay's join URL. Read as the broker reads the policy."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from kiki_a11y_server.policy import A11yPolicy
from kiki_cli.dashboard_link import dashboard_url
from kiki_cli.demos import A11Y_APP_ID
from kiki_cli.launcher.dashboard import DASHBOARD_TOOLS, Shared, lines, not_ready, prepare
from kiki_cli.launcher.dashboard import Policy as PolicyFile
from kiki_tool_broker.policy import Caller, Policy
from libkiki.a11y import wire
from libkiki.peer import PeerCred
from libkiki.principals import Remote

pytestmark = pytest.mark.unit


def test_without_a_policy_kiki_up_writes_one_the_broker_reads(tmp_path: Path) -> None:
    env = {"KIKI_CONFIG_DIR": str(tmp_path / "etc")}
    setup = prepare("local", tmp_path / "state", 1234, env)
    assert all(p.written for p in setup.policies)
    assert setup.env["sync-relay"] == {
        "KIKI_SYNC_RELAY_LINK_SESSIONS": "local",
        "KIKI_SYNC_RELAY_LINK_TOOLS": ",".join(DASHBOARD_TOOLS),
    }
    up = tmp_path / "state" / "up"
    assert setup.env["tool-broker"] == {
        "KIKI_TOOL_BROKER_POLICY_FILE": str(up / "tool-policy.toml")
    }
    assert setup.env["a11y-server"] == {
        "KIKI_A11Y_SERVER_POLICY_FILE": str(up / "a11y-policy.toml")
    }

    policy = Policy.load(up / "tool-policy.toml")
    relay = PeerCred(pid=1, uid=1234, gid=1234)
    assert policy.is_delegate(relay)
    assert not policy.is_delegate(PeerCred(pid=1, uid=4321, gid=4321))
    person = Caller(relay, Remote("uid:1234", "local"))
    for tool in (
        "dev.kiki.a11y.act",
        "dev.kiki.media.previous",
        "dev.kiki.media.playPause",
        "dev.kiki.media.next",
        "dev.kiki.demo.echo",
    ):
        assert policy.allows(person, tool, "procedure", {0})[0], tool
    # Nothing beyond what the dashboard offers: not the screen's contents by query, not the
    # player's openUri, not the updater, not the broker's own tools.
    for tool in ("dev.kiki.a11y.snapshot", "dev.kiki.a11y.find", "dev.kiki.tools.listProviders"):
        assert not policy.allows(person, tool, "query", {1234})[0], tool
    for tool in ("dev.kiki.media.openUri", "dev.kiki.media.seek", "dev.kiki.update.install"):
        assert not policy.allows(person, tool, "procedure", {1234})[0], tool
    link_tools = setup.env["sync-relay"]["KIKI_SYNC_RELAY_LINK_TOOLS"].split(",")
    assert link_tools == list(DASHBOARD_TOOLS)
    assert "dev.kiki.media.openUri" not in link_tools

    # The screen's shared stream carries the demo app's tree, from its first appearance (its
    # publisher not known yet), and no other app's: not a terminal the AT-SPI bridge publishes,
    # not an app of this user's without an app id; acting stays as the a11y-server decides.
    a11y = A11yPolicy.load(up / "a11y-policy.toml")
    demo = wire.App(tree_id=1, app_id=A11Y_APP_ID, pid=7, uid=1234, unit="", label="demo")
    me = PeerCred(pid=7, uid=1234, gid=1234)
    assert a11y.public("subscribe", demo, None)
    assert a11y.public("subscribe", demo, me)
    assert not a11y.public("act", demo, me)
    for other in ("pid-8", "org.gnome.Terminal", "org.keepassxc.KeePassXC"):
        app = wire.App(tree_id=2, app_id=other, pid=8, uid=1234, unit="", label=other)
        assert not a11y.public("subscribe", app, None), other
        assert not a11y.public("subscribe", app, me), other

    # The people may act on the demo app, and on no other (for an a11y-server that decides a
    # relayed act for the person): the only rules granting "act" name remote:* and the demo.
    def acting(app: wire.App) -> list[str | None]:
        rules = [r for r in a11y.allow if r.names("act", app, None)]
        return [p.remote for r in rules for p in r.principals.items]

    assert acting(demo) == ["*"]
    assert acting(wire.App(2, "org.gnome.Terminal", 8, 1234, "", "t")) == []
    # The demo app may name its app id (this user's processes only); nothing else.
    assert a11y.may_name(me, A11Y_APP_ID)
    assert not a11y.may_name(me, "org.gnome.Terminal")
    assert not a11y.may_name(PeerCred(pid=9, uid=4321, gid=4321), A11Y_APP_ID)


def test_a_policy_of_the_developers_own_is_left_as_it_is(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "tool-policy.toml").write_text("# mine\n")
    (etc / "a11y-policy.toml").write_text("# mine too\n")
    setup = prepare("kitchen", tmp_path / "state", os.getuid(), {"KIKI_CONFIG_DIR": str(etc)})
    assert [(p.service, p.path, p.written) for p in setup.policies] == [
        ("tool-broker", etc / "tool-policy.toml", False),
        ("a11y-server", etc / "a11y-policy.toml", False),
    ]
    assert set(setup.env) == {"sync-relay"}
    assert (etc / "tool-policy.toml").read_text() == "# mine\n"
    assert not (tmp_path / "state").exists()
    # So is one named in the environment, and the relay's settings given there.
    env = {
        "KIKI_TOOL_BROKER_POLICY_FILE": str(tmp_path / "p.toml"),
        "KIKI_SYNC_RELAY_LINK_SESSIONS": "a,b",
    }
    setup = prepare("kitchen", tmp_path / "state", os.getuid(), env)
    assert setup.policies[0] == PolicyFile("tool-broker", tmp_path / "p.toml", written=False)
    assert "KIKI_SYNC_RELAY_LINK_SESSIONS" not in setup.env["sync-relay"]


@pytest.mark.parametrize(
    ("join", "page"),
    [
        ("ws://127.0.0.1:8765/session/local?token=T", "http://127.0.0.1:8765/dashboard/"),
        ("wss://edge.example/session/local?token=T", "https://edge.example/dashboard/"),
        ("ws://[::1]:9/base/session/local?token=T", "http://[::1]:9/base/dashboard/"),
    ],
)
def test_the_dashboard_url_keeps_the_token_in_the_fragment(join: str, page: str) -> None:
    url = dashboard_url(join, "local", "a.b-c_d")
    before, _, fragment = url.partition("#")
    assert before == page
    assert urlsplit(url).query == ""
    assert parse_qs(fragment) == {"session": ["local"], "token": ["a.b-c_d"]}


def test_kiki_up_says_how_to_revoke_its_token_and_why_there_is_no_dashboard(
    tmp_path: Path,
) -> None:
    setup = prepare("local", tmp_path / "state", 1234, {"KIKI_CONFIG_DIR": str(tmp_path)})
    said = lines("local", Shared("http://h/dashboard/#session=local&token=T", "j-123"), setup)
    assert said[1] == "  http://h/dashboard/#session=local&token=T"
    assert "`kiki session revoke local j-123`" in said[2]
    why = "\n".join(not_ready("local", "binding 127.0.0.1:8765: address in use"))
    assert "the sync relay is not ready" in why
    assert "address in use" in why
    assert "kiki session share local --dashboard" in why
