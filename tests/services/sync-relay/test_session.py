"""The session actor without a loop or a socket: messages in, outcomes and refusals out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pycrdt import (
    Awareness,
    Doc,
    Map,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from kiki_sync_relay.limits import Limits, TokenBucket
from kiki_sync_relay.session import NOTHING, Member, Session
from kiki_sync_relay.store import Store
from libkiki.errors import InvalidFrame, LimitExceeded, PermissionDenied, ProtocolError

pytestmark = pytest.mark.unit


def an_update(text: str = "hello") -> bytes:
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, text)
    update: bytes = doc.get_update()
    return update


def test_join_sends_step1_and_an_update_is_relayed_and_made_durable() -> None:
    session = Session("s")
    writer, reader = Member(role="controller"), Member(role="observer")
    hello = session.join(writer)
    assert hello == (create_sync_message(session.doc),)
    session.join(reader)
    update = an_update()
    outcome = session.receive(writer, create_update_message(update))
    assert outcome.durable == update
    assert outcome.relay == create_update_message(update)
    assert str(session.doc.get("text", type=Text)) == "hello"
    # Step 1 of a client gets the whole document back.
    client: Doc[Any] = Doc()
    answer = session.receive(reader, create_sync_message(client))
    assert len(answer.reply) == 1
    handle_sync_message(answer.reply[0][1:], client)
    assert str(client.get("text", type=Text)) == "hello"


def test_a_corrupt_update_is_refused_and_the_live_document_is_untouched() -> None:
    session = Session("s", [an_update("abc")])
    member = Member(role="controller")
    session.join(member)
    before = session.doc.get_update()
    update = an_update("x" * 100)
    for bad in (update[: len(update) // 2], b"\xff" * 40, update[:-3] + b"\xff\xff\xff"):
        with pytest.raises(InvalidFrame):
            session.receive(member, create_update_message(bad))
        assert session.doc.get_update() == before
    # The shadow was rebuilt: a good update still applies.
    session.receive(member, create_update_message(an_update("more")))
    assert "more" in str(session.doc.get("text", type=Text))


def test_refusals_carry_their_close_codes() -> None:
    session = Session("s", limits=Limits(max_document=2000, max_clients=2))
    writer, observer = Member(role="controller"), Member(role="observer")
    session.join(writer)
    session.join(observer)
    with pytest.raises(LimitExceeded):
        session.join(Member(role="controller"))
    with pytest.raises(PermissionDenied) as denied:
        session.receive(observer, create_update_message(an_update()))
    assert denied.value.ws_close_code == 1008
    # An observer answering step 1 with nothing is fine.
    assert session.receive(observer, create_update_message(b"\x00\x00")).relay is None
    with pytest.raises(ProtocolError) as unknown:
        session.receive(writer, b"\x07\x00")
    assert unknown.value.ws_close_code == 1002
    for garbage in (b"", b"\x00", b"\x00\x02\xff", b"\x01"):
        with pytest.raises(InvalidFrame):
            session.receive(writer, garbage)
    with pytest.raises(LimitExceeded):
        session.receive(writer, create_update_message(an_update("y" * 3000)))


def test_awareness_is_relayed_and_removed_when_its_member_leaves() -> None:
    session = Session("s")
    a, b = Member(role="controller"), Member(role="controller")
    session.join(a)
    session.join(b)
    theirs = Awareness(Doc())
    theirs.set_local_state({"user": "a"})
    message = create_awareness_message(theirs.encode_awareness_update([theirs.client_id]))
    assert session.receive(a, message).relay == message
    assert session.awareness.states[theirs.client_id] == {"user": "a"}
    late = Member(role="observer")
    hello = session.join(late)
    assert len(hello) == 2  # step 1, then the awareness of the others
    gone = session.leave(a)
    assert gone is not None
    assert theirs.client_id not in session.awareness.states
    b_view = Awareness(Doc())
    b_view.apply_awareness_update(message[2:], "x")
    assert theirs.client_id in b_view.states
    # A stock client sends back the states it is told; from an observer that echo is dropped,
    # anything new is refused.
    assert session.receive(late, message) == NOTHING
    theirs.set_local_state({"user": "changed"})
    newer = create_awareness_message(theirs.encode_awareness_update([theirs.client_id]))
    with pytest.raises(PermissionDenied):
        session.receive(late, newer)
    mine = Awareness(Doc())
    mine.set_local_state({"me": 1})
    with pytest.raises(PermissionDenied):
        session.receive(
            late, create_awareness_message(mine.encode_awareness_update([mine.client_id]))
        )


def test_snapshot_reloads_the_same_document() -> None:
    session = Session("s")
    member = Member(role="controller")
    session.join(member)
    for i in range(5):
        doc: Doc[Any] = Doc()
        doc.get("map", type=Map)[str(i)] = i
        session.receive(member, create_update_message(doc.get_update()))
    assert session.updates_since_snapshot == 5
    again = Session("s", [session.snapshot()])
    assert again.doc.get("map", type=Map).to_py() == {str(i): i for i in range(5)}
    assert session.updates_since_snapshot == 0


def test_the_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


def test_the_store_logs_compacts_and_reloads(tmp_path: Path) -> None:
    async def go() -> None:
        store = Store(tmp_path / "db.sqlite3")
        store.start()
        updates = [an_update(str(i)) for i in range(10)]
        await asyncio.gather(*(store.append("s", u) for u in updates))
        assert store.appended == 10
        assert store.commits < 10  # appends waiting together share a commit
        assert await store.load("s") == updates
        session = Session("s", await store.load("s"))
        snapshot = session.snapshot()
        compacted = store.compact("s", snapshot)
        later = store.append("s", updates[0])
        await asyncio.gather(compacted, later)
        assert await store.load("s") == [snapshot, updates[0]]
        assert set(await store.sessions()) == {"s"}
        await store.stop()
        reopened = Store(tmp_path / "db.sqlite3")
        reopened.start()
        assert await reopened.load("s") == [snapshot, updates[0]]
        await reopened.stop()

    asyncio.run(go())


def test_an_update_waiting_on_an_unseen_one_is_refused_from_every_role() -> None:
    # pycrdt's get_update() leaves out pending structs: had u2 been taken before u1, the
    # snapshot that compaction or hibernation stores would lose it.
    source: Doc[Any] = Doc()
    text = source.get("text", type=Text)
    text += "hello"
    u1 = source.get_update()
    before = source.get_state()
    text += " world"
    u2 = source.get_update(before)
    for role in ("device", "controller"):
        session = Session("s")
        member = Member(role=role)
        session.join(member)
        with pytest.raises(PermissionDenied) as refused:
            session.receive(member, create_update_message(u2))
        assert refused.value.ws_close_code == 1008
        session.receive(member, create_update_message(u1))
        session.receive(member, create_update_message(u2))
        reloaded = Session("s", [session.snapshot()])
        assert str(reloaded.doc.get("text", type=Text)) == "hello world"
