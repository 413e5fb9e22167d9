"""The a11y policy decides for a remote person (a trusted delegate's) as the broker does: only
``remote:`` principals name them, and nobody local's rights (root's, the delegate's) reach them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiki_a11y_server.policy import A11yPolicy
from libkiki.a11y import wire
from libkiki.errors import PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Remote

pytestmark = pytest.mark.unit

ROOT = PeerCred(pid=1, uid=0, gid=0)
ALICE = Remote("did:plc:alice", "home")
BOB = Remote("did:plc:bob")


def app(app_id: str, uid: int = 0) -> wire.App:
    return wire.App(1, app_id, 99, uid)


def load(tmp_path: Path, text: str) -> A11yPolicy:
    path = tmp_path / "a11y-policy.toml"
    path.write_text(text)
    return A11yPolicy.load(path)


def test_a_remote_person_has_nothing_by_default(tmp_path: Path) -> None:
    policy = A11yPolicy()
    assert policy.allows(ROOT, "act", app("org.example.Notes"))
    assert not policy.allows(ALICE, "act", app("org.example.Notes"))
    assert not policy.sees_all(ALICE, "read")
    with pytest.raises(PermissionDenied) as refused:
        policy.check(ALICE, "act", app("org.example.Notes"))
    assert "remote:did:plc:alice may not act on tree" in refused.value.message
    assert refused.value.data["onBehalfOf"] == {"subject": "did:plc:alice", "session": "home"}


def test_remote_rules_name_remote_people_and_local_ones_do_not(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """
[[allow]]
principals = ["*", "uid:0"]
rights = ["read", "act"]

[[allow]]
principals = ["remote:did:plc:alice"]
rights = ["act"]
apps = ["org.example.*"]

[[deny]]
principals = ["remote:*"]
rights = ["act"]
apps = ["org.example.Bank"]

[[deny]]
principals = ["*"]
rights = ["act"]
apps = ["org.example.Editor"]
""",
    )
    assert policy.allows(ALICE, "act", app("org.example.Notes"))
    assert not policy.allows(ALICE, "read", app("org.example.Notes"))  # "*" is not her
    assert not policy.allows(ALICE, "act", app("org.example.Bank"))  # remote:* denied
    assert policy.allows(ALICE, "act", app("org.example.Editor"))  # a local deny is not hers
    assert not policy.allows(BOB, "act", app("org.example.Notes"))
    assert not policy.allows(ROOT, "act", app("org.example.Editor"))
    assert policy.allows(ROOT, "act", app("org.example.Bank"))
