"""What `kiki up` prepares for its dashboard: the relay's device link for the session, a broker
policy trusting the relay (this user, on a developer's machine) for the people in it, and the
dashboard's URL built from the relay's join URL. Read as the broker reads the policy."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from kiki_a11y_server.policy import A11yPolicy
from kiki_cli.launcher.dashboard import DASHBOARD_TOOLS, dashboard_url, prepare
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
    assert policy.allows(person, "dev.kiki.a11y.act", "procedure", {0})[0]
    assert policy.allows(person, "dev.kiki.media.playPause", "procedure", {0})[0]
    # Nothing beyond what the dashboard offers: not the updater, not the broker's own tools.
    assert not policy.allows(person, "dev.kiki.update.install", "procedure", {1234})[0]
    assert not policy.allows(person, "dev.kiki.tools.listProviders", "query", {1234})[0]

    # The screen's shared stream carries the apps' trees, from their first appearance (their
    # publisher not known yet); acting stays as the a11y-server's defaults decide.
    a11y = A11yPolicy.load(up / "a11y-policy.toml")
    app = wire.App(tree_id=1, app_id="pid-7", pid=7, uid=1234, unit="", label="demo")
    assert a11y.public("subscribe", app, None)
    assert a11y.public("subscribe", app, PeerCred(pid=7, uid=1234, gid=1234))
    assert not a11y.public("act", app, PeerCred(pid=7, uid=1234, gid=1234))


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
