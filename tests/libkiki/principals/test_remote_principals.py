"""``remote:`` principals: people a trusted delegate acts for, matched apart from local peers."""

from __future__ import annotations

import pytest

from libkiki.errors import ConfigError
from libkiki.peer import PeerCred
from libkiki.principals import Principal, Principals, Remote

pytestmark = pytest.mark.unit

ROOT = PeerCred(1, 0, 0, None, None, None, frozenset())
ALICE = Remote("did:plc:alice", "s1")


def test_a_remote_principal_names_a_subject_or_any() -> None:
    named = Principal.parse("remote:did:plc:alice")
    anyone = Principal.parse("remote:*")
    assert named.matches_remote(ALICE)
    assert anyone.matches_remote(ALICE)
    assert not named.matches_remote(Remote("bob"))
    assert anyone.matches_remote(Remote("bob"))


def test_local_and_remote_principals_never_match_each_other() -> None:
    # A delegate can never claim a local principal: "*" and uid:0 match no remote person, and
    # no remote: principal matches a local peer.
    for local in ("*", "uid:0", "group:root"):
        assert not Principal.parse(local).matches_remote(ALICE)
    for remote in ("remote:*", "remote:did:plc:alice"):
        assert not Principal.parse(remote).matches(ROOT)
        assert not Principal.parse(remote).matches(ROOT, granting=False)
    assert not Principal.parse("remote:*").anyone
    both = Principals.parse(["uid:0", "remote:did:plc:alice"])
    assert both.matches(ROOT)
    assert both.matches_remote(ALICE)


@pytest.mark.parametrize("text", ["remote:", "remote:a b", "remote:alice+uid:0", "uid:0+remote:a"])
def test_a_remote_term_stands_alone_and_names_someone(text: str) -> None:
    with pytest.raises(ConfigError, match="remote:SUBJECT"):
        Principal.parse(text)


def test_a_remote_person_as_audited() -> None:
    assert ALICE.view() == {"subject": "did:plc:alice", "session": "s1"}
    assert Remote("bob").view() == {"subject": "bob"}
    assert str(ALICE) == "remote:did:plc:alice"
