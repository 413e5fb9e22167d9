"""``remote:`` principals: people a trusted delegate acts for, matched apart from local peers."""

from __future__ import annotations

import pytest

from libkiki.errors import ConfigError, InvalidParams
from libkiki.peer import PeerCred
from libkiki.principals import Principal, Principals, Remote, remote_of

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


def test_admits_decides_a_remote_person_by_remote_principals_only() -> None:
    both = Principals.parse(["uid:0", "remote:did:plc:alice"])
    assert both.admits(ROOT)
    assert both.admits(ALICE)
    assert not both.admits(Remote("bob"))
    local = Principals.parse(["*", "uid:0"])
    assert local.admits(ROOT)
    assert not local.admits(ALICE)  # "*" is every local peer, never a remote person
    assert not Principals.parse(["remote:*"]).admits(ROOT)


def test_on_behalf_of_as_a_remote_person() -> None:
    assert remote_of({"subject": "did:plc:alice", "session": "s1"}) == ALICE
    assert remote_of({"subject": "bob"}) == Remote("bob")


@pytest.mark.parametrize(
    "value",
    [
        "did:plc:alice",
        {"subject": "a b"},
        {"subject": ""},
        {"session": "s1"},
        {"subject": "alice", "session": ""},
        {"subject": "alice", "session": "x" * 129},
        {"subject": "alice", "session": "a\nb"},
        {"subject": "alice", "uid": 0},
    ],
)
def test_on_behalf_of_that_names_nobody_is_refused(value: object) -> None:
    with pytest.raises(InvalidParams) as refused:
        remote_of(value)
    assert refused.value.data == {"rule": "onBehalfOf"}
