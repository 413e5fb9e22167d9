"""Yjs client ids belong to their first writer (its role and token sub), on the session actor."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, create_update_message

from kiki_sync_relay.session import MAX_YJS_IDS, Member, Session
from libkiki.errors import LimitExceeded, PermissionDenied

pytestmark = pytest.mark.unit

INTENT = {"id": "m1", "tool": "dev.kiki.demo.echo", "by": "mallory", "createdAt": "2026-12-07"}


def replica(session: Session, client_id: int) -> Doc[Any]:
    doc: Doc[Any] = Doc(client_id=client_id)
    doc.apply_update(session.doc.get_update())
    return doc


def write(session: Session, member: Member, doc: Doc[Any], root: str, key: str, value: Any) -> None:
    before = doc.get_state()
    doc.get(root, type=Map)[key] = value
    session.receive(member, create_update_message(doc.get_update(before)))


def test_an_intent_under_the_devices_client_id_is_refused_and_the_device_writes_on() -> None:
    session = Session("s")
    device, mallory = Member(role="device", sub="device:d"), Member("controller", sub="mallory")
    session.join(device)
    session.join(mallory)
    link: Doc[Any] = Doc(client_id=4242)
    write(session, device, link, "device", "tools", ["t"])
    forged = replica(session, link.client_id)  # the device's id, at its next clock
    before = session.doc.get_update()
    with pytest.raises(PermissionDenied, match="Yjs client 4242 belongs to another member"):
        write(session, mallory, forged, "intents", "m1", INTENT)
    assert session.doc.get_update() == before
    # The device's next write at that clock is its own, not a duplicate.
    write(session, device, link, "device", "tools", ["t", "u"])
    assert session.doc.get("device", type=Map)["tools"] == ["t", "u"]
    # Mallory's own id still works, and is hers from then on.
    own = replica(session, 777)
    write(session, mallory, own, "intents", "m1", INTENT)
    bob = Member("controller", sub="bob")
    session.join(bob)
    with pytest.raises(PermissionDenied, match="Yjs client 777"):
        write(session, bob, replica(session, 777), "intents", "b1", {**INTENT, "by": "bob"})


@pytest.mark.parametrize("device", [Member(role="device", sub="upstream"), None])
def test_the_device_is_not_refused_on_an_id_a_controller_owns(device: Member | None) -> None:
    # Each end decides ownership apart (the relay's in memory): refused, the link carrying a
    # write from the other end could be refused on every reconnect.
    session = Session("s")
    mallory = Member("controller", sub="mallory")
    session.join(mallory)
    write(session, mallory, replica(session, 777), "intents", "m1", INTENT)
    link = replica(session, 777)
    before = link.get_state()
    link.get("device", type=Map)["x"] = 1
    update = link.get_update(before)
    if device is None:
        session.apply(update)
    else:
        session.join(device)
        session.receive(device, create_update_message(update))
    assert session.doc.get("device", type=Map)["x"] == 1
    # It still claims the ids nobody owns.
    write(session, device or Member("device", sub=""), replica(session, 888), "device", "y", 2)
    with pytest.raises(PermissionDenied, match="Yjs client 888"):
        write(session, mallory, replica(session, 888), "intents", "m2", {**INTENT, "id": "m2"})


def test_a_writer_owns_at_most_max_yjs_ids() -> None:
    session = Session("s")
    alice = Member("controller", sub="alice")
    session.join(alice)
    for client in range(1000, 1000 + MAX_YJS_IDS):
        write(session, alice, replica(session, client), "map", str(client), 1)
    before = session.doc.get_update()
    with pytest.raises(LimitExceeded, match=f"at most {MAX_YJS_IDS}"):
        write(session, alice, replica(session, 5000), "map", "over", 1)
    assert session.doc.get_update() == before
    # Its own ids still work; another writer is not bounded by alice's.
    write(session, alice, replica(session, 1000), "map", "again", 2)
    bob = Member("controller", sub="bob")
    session.join(bob)
    write(session, bob, replica(session, 5000), "map", "bob", 3)
    assert session.doc.get("map", type=Map)["bob"] == 3


def test_a_writer_reconnecting_with_its_document_keeps_its_id() -> None:
    session = Session("s")
    first = Member("controller", sub="alice")
    session.join(first)
    doc = replica(session, 99)
    write(session, first, doc, "map", "a", 1)
    session.leave(first)
    again = Member("controller", sub="alice")  # the same person, a new connection
    session.join(again)
    write(session, again, doc, "map", "b", 2)
    # Someone else may not take it over once its owner has left.
    bob = Member("controller", sub="bob")
    session.join(bob)
    with pytest.raises(PermissionDenied, match="Yjs client 99"):
        write(session, bob, replica(session, 99), "map", "c", 3)
    assert session.doc.get("map", type=Map).to_py() == {"a": 1, "b": 2}


def test_a_deletion_alone_names_no_writer() -> None:
    session = Session("s")
    alice, bob = Member("controller", sub="alice"), Member("controller", sub="bob")
    session.join(alice)
    session.join(bob)
    write(session, alice, replica(session, 5), "map", "a", 1)
    doc = replica(session, 6)
    before = doc.get_state()
    del doc.get("map", type=Map)["a"]  # a delete set of alice's ids, no structs
    session.receive(bob, create_update_message(doc.get_update(before)))
    assert "a" not in session.doc.get("map", type=Map)
