"""The policy's ``[[delegate]]`` rules and its decisions for remote people (issue 18), and the
audit line that records a delegate's call (``onBehalfOf``) in the same chain as older lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.policy import Caller, Policy
from libkiki.audit import read_entries, verify
from libkiki.errors import KikiError
from libkiki.peer import PeerCred
from libkiki.principals import Remote

pytestmark = pytest.mark.unit

RELAY = PeerCred(7, 1001, 1001, None, None, None, frozenset())
ROOT = PeerCred(8, 0, 0, None, None, None, frozenset())
OTHER = PeerCred(9, 1002, 1002, None, None, None, frozenset())


def load(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "tool-policy.toml"
    path.write_text(text)
    return Policy.load(path)


def test_delegates_are_named_by_principal(tmp_path: Path) -> None:
    policy = load(tmp_path, '[[delegate]]\nprincipals = ["uid:1001"]\n')
    assert policy.is_delegate(RELAY)
    assert not policy.is_delegate(OTHER)
    assert not policy.is_delegate(ROOT)  # root is trusted for much, but only named delegates
    assert not Policy().is_delegate(ROOT)


@pytest.mark.parametrize(
    "text", ['[[delegate]]\nprincipals = "uid:1"\n', '[[delegate]]\nprincipals = ["x"]\n']
)
def test_a_malformed_delegate_rule_fails_the_load(tmp_path: Path, text: str) -> None:
    with pytest.raises(KikiError, match=r"delegate\[0\]"):
        load(tmp_path, text)


def test_a_remote_person_is_decided_by_remote_rules_alone(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """
[[allow]]
principals = ["remote:alice", "*"]
tools = ["org.example.*"]

[[deny]]
principals = ["remote:*"]
tools = ["org.example.secret"]
""",
    )
    alice, bob = Caller(RELAY, Remote("alice", "s")), Caller(RELAY, Remote("bob"))
    assert policy.allows(alice, "org.example.echo", "procedure", {1001}) == (
        True,
        "allowed by policy",
    )
    assert policy.allows(alice, "org.example.secret", "query", {1001})[0] is False
    # bob: "*" names local peers only; neither the relay's uid (the provider's) nor root helps.
    for relay in (RELAY, ROOT):
        allowed, reason = policy.allows(Caller(relay, Remote("bob")), "x.y.z", "query", {1001})
        assert not allowed
        assert "remote:" in reason
    assert not policy.allows(bob, "org.example.echo", "procedure", {1001})[0]
    # The relay itself, calling for itself, is a local peer as before.
    assert policy.allows(Caller(RELAY), "x.y.z", "procedure", {1001})[0]


def test_an_on_behalf_line_verifies_in_one_chain_with_lines_without(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    for behalf in (None, {"subject": "alice", "session": "s1"}, None):
        log.append(
            caller={"uid": 1001, "gid": 1001, "pid": 7},
            tool="org.example.echo",
            outcome="ok",
            code=None,
            duration_us=10,
            arguments={},
            on_behalf_of=behalf,
        )
    log.close()
    assert list(verify(log.path, log.head_path)) == []
    entries = read_entries(log.path)
    assert [e.get("onBehalfOf") for e in entries] == [
        None,
        {"subject": "alice", "session": "s1"},
        None,
    ]
    assert "onBehalfOf" not in log.path.read_bytes().splitlines()[0].decode()
