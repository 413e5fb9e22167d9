"""The remote client's protocol core, driven frame by frame with no event loop: the other end
is a pycrdt document and awareness speaking through pycrdt's own helpers, as the relay does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pycrdt import (
    Awareness,
    Doc,
    Map,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)

from libkiki.errors import Conflict, InvalidFrame, ProtocolError
from libkiki.session.protocol import (
    DeviceChanged,
    PresenceChanged,
    ResultChanged,
    SessionProtocol,
    Synced,
)

pytestmark = pytest.mark.unit


class Relay:
    """The other end: a document with the session's parts, answering as the relay would."""

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        self.device = self.doc.get("device", type=Map)
        self.results = self.doc.get("results", type=Map)
        self.intents = self.doc.get("intents", type=Map)

    def take(self, frames: list[bytes | str]) -> list[bytes]:
        """Apply what the client sent; the replies."""
        replies = []
        for frame in frames:
            assert isinstance(frame, bytes)
            if frame[0] == YMessageType.SYNC:
                reply = handle_sync_message(frame[1:], self.doc)
                if reply is not None:
                    replies.append(reply)
        return replies

    def write(self, root: Map[Any], key: str, value: Any) -> bytes:
        """Change ``root[key]``; the update message carrying it."""
        before = self.doc.get_state()
        if value is None:
            del root[key]
        else:
            root[key] = value
        return create_update_message(self.doc.get_update(before))


def joined(relay: Relay, *, follow: bool = True) -> SessionProtocol:
    client = SessionProtocol()
    client.follow_device(follow)
    client.open()
    for reply in relay.take(client.data_to_send()):
        client.receive(reply)
    return client


def test_opening_sends_the_token_first_then_step_1() -> None:
    client = SessionProtocol()
    client.open("a.b.c")
    token, step1 = client.data_to_send()
    assert json.loads(token) == {"token": "a.b.c"}
    assert isinstance(step1, bytes)
    assert step1[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
    client.open()
    assert [type(f) for f in client.data_to_send()] == [bytes]


def test_the_relays_step_2_syncs_and_tells_every_device_key() -> None:
    relay = Relay()
    relay.device["tools"] = ["dev.kiki.demo.echo"]
    relay.device["sensors"] = [{"value": 2.0}]
    client = joined(relay)
    events = client.events()
    assert Synced() in events
    changed = {e.key: e.value for e in events if isinstance(e, DeviceChanged)}
    assert changed == {"tools": ["dev.kiki.demo.echo"], "sensors": [{"value": 2}]}
    assert client.synced
    # A second step 2 (after a reconnection, say) is not a second Synced.
    client.receive(create_sync_message(relay.doc))
    relay_reply = relay.take(client.data_to_send())
    assert relay_reply == []
    client.receive(relay.take([create_sync_message(client.doc)])[0])
    assert Synced() not in client.events()


def test_the_relays_step_1_is_answered_with_what_it_lacks() -> None:
    relay = Relay()
    client = joined(relay)
    client.add_intent({"id": "i1", "tool": "a.b.c", "by": "me", "createdAt": "x"})
    client.data_to_send()  # lost on the way
    client.receive(create_sync_message(relay.doc))
    (step2,) = client.data_to_send()
    relay.take([step2])
    assert relay.intents.to_py() == {
        "i1": {"id": "i1", "tool": "a.b.c", "by": "me", "createdAt": "x"}
    }


def test_device_changes_and_deletions_are_events() -> None:
    relay = Relay()
    client = joined(relay)
    client.events()
    client.receive(relay.write(relay.device, "screen", {"apps": [{"revision": 7.0}]}))
    client.receive(relay.write(relay.device, "screen", None))
    assert client.events() == [
        DeviceChanged("screen", {"apps": [{"revision": 7}]}),
        DeviceChanged("screen", None),
    ]


def test_device_changes_are_told_only_while_followed() -> None:
    relay = Relay()
    relay.device["tools"] = ["a.b.c"]
    client = joined(relay, follow=False)
    client.receive(relay.write(relay.device, "screen", {"apps": []}))
    assert [e for e in client.events() if isinstance(e, DeviceChanged)] == []
    assert client.device.to_py() == {"tools": ["a.b.c"], "screen": {"apps": []}}
    client.follow_device(True)
    client.follow_device(True)  # once is enough: one event a change
    client.receive(relay.write(relay.device, "stale", ["screen"]))
    assert client.events() == [DeviceChanged("stale", ["screen"])]
    client.follow_device(False)
    client.receive(relay.write(relay.device, "stale", []))
    assert client.events() == []


def test_results_are_events_as_they_are_written() -> None:
    relay = Relay()
    client = joined(relay)
    client.receive(relay.write(relay.results, "i1", {"status": "running", "at": "t"}))
    client.receive(relay.write(relay.results, "i1", {"status": "ok", "output": 1, "at": "t"}))
    client.receive(relay.write(relay.results, "i1", None))  # pruned by the device: no event
    results = [e for e in client.events() if isinstance(e, ResultChanged)]
    assert [r.result["status"] for r in results] == ["running", "ok"]
    assert {r.intent_id for r in results} == {"i1"}


def test_an_intent_goes_out_as_one_update_of_the_intents_map() -> None:
    relay = Relay()
    client = joined(relay)
    intent = {"id": "i2", "tool": "a.b.c", "input": {"x": "y"}, "by": "me", "createdAt": "t"}
    client.add_intent(intent)
    (update,) = client.data_to_send()
    assert isinstance(update, bytes)
    assert update[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE])
    relay.take([update])
    assert relay.intents.to_py() == {"i2": intent}
    assert relay.device.to_py() in ({}, None)
    with pytest.raises(Conflict):
        client.add_intent(intent)
    assert client.data_to_send() == []


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{}", ProtocolError),
        (b"", InvalidFrame),
        (bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE, 5, 1, 2]), InvalidFrame),
        (
            bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE, 3, 0xFF, 0xFF, 0xFF]),
            InvalidFrame,
        ),
        (bytes([YMessageType.AWARENESS, 4, 1, 0xFF, 0xFF, 0xFF]), InvalidFrame),
        (bytes([YMessageType.SYNC]), InvalidFrame),
    ],
)
def test_a_frame_no_relay_sends_is_a_typed_error(
    frame: bytes | str, error: type[Exception]
) -> None:
    client = joined(Relay())
    with pytest.raises(error):
        client.receive(frame)


def test_message_types_for_others_are_ignored() -> None:
    client = joined(Relay())
    client.events()
    client.receive(bytes([2, 0]))  # y-protocols' auth message
    client.receive(bytes([9, 1, 2, 3]))
    assert client.events() == []
    assert client.data_to_send() == []


def test_presence_is_unset_and_unsent_until_given() -> None:
    client = joined(Relay())
    client.receive(bytes([3]))  # queryAwareness: nothing to say
    assert client.data_to_send() == []
    client.set_presence({"user": "alice"})
    (sent,) = client.data_to_send()
    assert isinstance(sent, bytes)
    other = Awareness(Doc())
    other.apply_awareness_update(read_message(sent[1:]), "remote")
    assert other.states[client.awareness.client_id] == {"user": "alice"}
    client.receive(bytes([3]))
    assert len(client.data_to_send()) == 1


def test_others_presence_is_an_event_and_listed() -> None:
    client = joined(Relay())
    client.events()
    other = Awareness(Doc())
    other.set_local_state({"user": "bob"})
    message = create_awareness_message(other.encode_awareness_update([other.client_id]))
    client.receive(message)
    assert client.events() == [PresenceChanged()]
    assert client.peers() == {other.client_id: {"user": "bob"}}
    client.receive(message)  # the same state again: no change
    assert client.events() == []


def test_the_document_is_bounded_however_many_frames_bring_it() -> None:
    from libkiki.errors import LimitExceeded

    relay = Relay()
    client = SessionProtocol(max_document=8192)
    client.open()
    for reply in relay.take(client.data_to_send()):
        client.receive(reply)
    # A key written again and again: many more bytes come than the document ever holds.
    for n in range(40):
        client.receive(relay.write(relay.device, "screen", f"{n:04d}" + "x" * 1000))
    # Keys that stay: the document itself grows past the bound, 1 KiB a frame.
    taken: list[bytes] = []

    def take(frame: bytes) -> None:
        client.receive(frame)
        taken.append(frame)

    frames = [relay.write(relay.device, f"k{n}", "y" * 1000) for n in range(20)]
    with pytest.raises(LimitExceeded, match="document passed 8192 bytes"):
        list(map(take, frames))
    assert 6 <= len(taken) <= 8


def test_the_others_awareness_states_are_bounded() -> None:
    from libkiki.errors import LimitExceeded

    client = SessionProtocol(max_awareness=1000)
    client.open()
    first, second = Awareness(Doc()), Awareness(Doc())

    def state_of(awareness: Awareness, size: int) -> bytes:
        awareness.set_local_state({"user": "u" * size})
        update = awareness.encode_awareness_update([awareness.client_id])
        message: bytes = create_awareness_message(update)
        return message

    for size in range(400, 600, 10):  # renewed and resized: one state counted once
        client.receive(state_of(first, size))
    with pytest.raises(LimitExceeded, match="awareness states passed 1000 bytes"):
        client.receive(state_of(second, 500))
