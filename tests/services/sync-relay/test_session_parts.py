"""Who writes which part of the session document, enforced on the session actor's shadow."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Text, create_sync_message, create_update_message, get_update

from kiki_sync_relay.session import Member, Session
from libkiki.errors import PermissionDenied

pytestmark = pytest.mark.unit

SUB = "did:example:alice"
BY = {"id": "i", "tool": "dev.kiki.demo.echo", "by": SUB, "createdAt": "2026-12-07T18:00:00Z"}


def edit(session: Session, change: Any, *, client_id: int | None = None) -> bytes:
    """The update a client holding the session's document makes with ``change(doc)``."""
    doc: Doc[Any] = Doc(client_id=client_id)
    doc.apply_update(session.doc.get_update())
    before = doc.get_state()
    change(doc)
    update: bytes = doc.get_update(before)
    return update


def set_in(root: str, key: str, value: Any) -> Any:
    def change(doc: Doc[Any]) -> None:
        doc.get(root, type=Map)[key] = value

    return change


@pytest.fixture
def session() -> Session:
    session = Session("s")
    device = Member(role="device")
    session.join(device)
    session.receive(device, create_update_message(edit(session, set_in("device", "a", 1))))
    session.receive(device, create_update_message(edit(session, set_in("results", "i0", 1))))
    return session


@pytest.mark.parametrize(
    "change",
    [
        set_in("device", "screen", "forged"),
        set_in("results", "i1", {"status": "ok"}),
        lambda doc: doc.get("device", type=Map).pop("a"),  # a deletion
        lambda doc: doc.get("results", type=Text).insert(0, "x"),  # the part as another type
    ],
)
def test_a_controller_writing_the_devices_parts_is_refused_and_nothing_changes(
    session: Session, change: Any
) -> None:
    controller = Member(role="controller", sub=SUB)
    session.join(controller)
    before = session.doc.get_update()
    with pytest.raises(PermissionDenied) as refused:
        session.receive(controller, create_update_message(edit(session, change)))
    assert refused.value.ws_close_code == 1008
    assert session.doc.get_update() == before
    # The shadow was rebuilt: what it may write still goes through.
    session.receive(controller, create_update_message(edit(session, set_in("intents", "i", BY))))
    assert session.doc.get("intents", type=Map).to_py() == {"i": BY}


def test_controllers_write_intents_and_open_roots_the_device_writes_everything(
    session: Session,
) -> None:
    controller, device = Member(role="controller", sub=SUB), Member(role="device")
    session.join(controller)
    session.join(device)
    for update in (
        edit(session, set_in("intents", "i1", BY)),
        edit(session, set_in("map", "k", 1)),
    ):
        assert session.receive(controller, create_update_message(update)).durable == update
    for root in ("device", "intents", "results"):
        session.receive(device, create_update_message(edit(session, set_in(root, "d", 2))))
        assert session.doc.get(root, type=Map)["d"] == 2


def test_a_controller_resending_what_the_session_has_is_accepted(session: Session) -> None:
    # A client's answer to step 1 carries its whole delete set, the device's deletions included.
    device, controller = Member(role="device"), Member(role="controller", sub=SUB)
    session.join(device)
    session.receive(device, create_update_message(edit(session, set_in("device", "a", 2))))
    client: Doc[Any] = Doc()
    client.apply_update(session.doc.get_update())
    client.get("intents", type=Map)["mine"] = BY
    session.join(controller)
    step2 = client.get_update(session.doc.get_state())
    session.receive(controller, create_update_message(step2))
    assert session.doc.get("intents", type=Map)["mine"] == BY
    assert session.receive(controller, create_sync_message(client)).reply


def test_an_update_left_waiting_is_refused_from_a_controller(session: Session) -> None:
    """Yjs would integrate it later, when another member (the device) supplies what it waits
    on: so a controller could write the device's parts through the device's own update."""
    controller = Member(role="controller", sub=SUB)
    session.join(controller)
    device_id = 4242
    session.receive(
        Member(role="device"),
        create_update_message(edit(session, set_in("device", "b", 0), client_id=device_id)),
    )
    # Deletions of ids the device will write next (its client id, later clocks).
    ahead: Doc[Any] = Doc(client_id=device_id)
    ahead.apply_update(session.doc.get_update())
    base = ahead.get_state()
    for i in range(3):
        ahead.get("device", type=Map)[f"next{i}"] = i
    for i in range(3):
        del ahead.get("device", type=Map)[f"next{i}"]
    deletions_only = get_update(ahead.get_update(base), ahead.get_state())
    # Structs past a gap in the sender's clocks: the second of two, without the first.
    mine: Doc[Any] = Doc()
    mine.apply_update(session.doc.get_update())
    mine.get("intents", type=Map)["first"] = BY
    after_first = mine.get_state()
    mine.get("intents", type=Map)["second"] = BY
    gapped = mine.get_update(after_first)
    before = session.doc.get_update()
    for update in (deletions_only, gapped):
        with pytest.raises(PermissionDenied):
            session.receive(controller, create_update_message(update))
        assert session.doc.get_update() == before


def intents_of(session: Session) -> dict[str, Any]:
    value: dict[str, Any] = session.doc.get("intents", type=Map).to_py()
    return value


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (set_in("intents", "old", {**BY, "tool": "dev.kiki.demo.other"}), "only be added"),
        (lambda doc: doc.get("intents", type=Map).pop("old"), "only be added"),
        (set_in("intents", "new", {**BY, "by": "did:example:mallory"}), "intent by did:ex"),
        (set_in("intents", "new", {k: v for k, v in BY.items() if k != "by"}), "intent by None"),
        (set_in("intents", "new", "run it"), "not a JSON object"),
        (set_in("intents", "new", Map({"by": SUB})), "not a JSON object"),
        (lambda doc: doc.get("intents", type=Text).insert(0, "x"), "another type"),
    ],
    ids=["change", "delete", "another by", "no by", "a string", "a nested map", "as text"],
)
def test_a_controller_only_adds_intents_of_its_own(
    session: Session, change: Any, reason: str
) -> None:
    controller = Member(role="controller", sub=SUB)
    session.join(controller)
    session.receive(controller, create_update_message(edit(session, set_in("intents", "old", BY))))
    before = session.doc.get_update()
    with pytest.raises(PermissionDenied, match=reason) as refused:
        session.receive(controller, create_update_message(edit(session, change)))
    assert refused.value.ws_close_code == 1008
    assert session.doc.get_update() == before

    # Its next new intent goes through (the shadow was rebuilt), several in one update too.
    def two(doc: Doc[Any]) -> None:
        doc.get("intents", type=Map)["n1"] = BY
        doc.get("intents", type=Map)["n2"] = BY

    session.receive(controller, create_update_message(edit(session, two)))
    assert set(intents_of(session)) == {"old", "n1", "n2"}


def test_the_device_changes_and_prunes_intents(session: Session) -> None:
    controller, device = Member(role="controller", sub=SUB), Member(role="device")
    session.join(controller)
    session.join(device)
    session.receive(controller, create_update_message(edit(session, set_in("intents", "i", BY))))
    session.receive(device, create_update_message(edit(session, set_in("intents", "i", {}))))
    assert intents_of(session) == {"i": {}}
    session.receive(
        device,
        create_update_message(edit(session, lambda doc: doc.get("intents", type=Map).pop("i"))),
    )
    assert intents_of(session) == {}
