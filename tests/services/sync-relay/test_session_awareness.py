"""Who may set which awareness states, and how many: the session actor, no loop or socket."""

from __future__ import annotations

import json

import pytest
from pycrdt import Awareness, Doc, create_awareness_message
from pycrdt._sync import Encoder

from kiki_sync_relay.limits import Limits
from kiki_sync_relay.session import NOTHING, Member, Session
from libkiki.errors import LimitExceeded, PermissionDenied

pytestmark = pytest.mark.unit


def states(entries: list[tuple[int, int, object]]) -> bytes:
    """An awareness message setting (client id, clock, state) for each entry."""
    encoder = Encoder()
    encoder.write_var_uint(len(entries))
    for client, clock, state in entries:
        encoder.write_var_uint(client)
        encoder.write_var_uint(clock)
        encoder.write_var_string(json.dumps(state))
    message: bytes = create_awareness_message(encoder.to_bytes())
    return message


def test_more_awareness_states_than_the_bound_are_refused_before_any_is_held() -> None:
    session = Session("s", limits=Limits(max_awareness_clients=16))
    member = Member(role="controller")
    session.join(member)
    with pytest.raises(LimitExceeded) as refused:
        session.receive(member, states([(i, 1, {"u": i}) for i in range(1, 18)]))
    assert refused.value.ws_close_code == 1013
    assert not session.awareness.states
    assert not session.owners
    # Up to the bound is fine; a removed id stays the member's (and counted) until it leaves.
    session.receive(member, states([(i, 1, {"u": i}) for i in range(1, 17)]))
    session.receive(member, states([(1, 2, None)]))
    with pytest.raises(LimitExceeded):
        session.receive(member, states([(17, 1, {"u": 17})]))
    session.receive(member, states([(1, 3, {"u": "back"})]))
    assert len(session.awareness.states) == 16


def test_the_link_upstream_is_not_bounded_per_client() -> None:
    session = Session("s", limits=Limits(max_awareness_clients=2))
    link = Member(role="device", sub="upstream", bounded=False)
    session.join(link)
    session.receive(link, states([(i, 1, {"u": i}) for i in range(1, 10)]))
    assert len(session.awareness.states) == 9


def test_an_awareness_state_is_changed_only_by_the_member_that_set_it() -> None:
    session = Session("s")
    alice, mallory = Member(role="controller"), Member(role="controller")
    session.join(alice)
    session.join(mallory)
    mine = Awareness(Doc())
    mine.set_local_state({"user": "alice"})
    message = create_awareness_message(mine.encode_awareness_update([mine.client_id]))
    session.receive(alice, message)
    # The echo a stock client sends back changes nothing: dropped quietly, never refused.
    assert session.receive(mallory, message).relay == message
    with pytest.raises(PermissionDenied) as refused:
        session.receive(mallory, states([(mine.client_id, 99, {"user": "mallory"})]))
    assert refused.value.ws_close_code == 1008
    assert session.awareness.states[mine.client_id] == {"user": "alice"}
    # Its removal (a stock client timing out a state not renewed for 30 s) is dropped, from
    # a writer and an observer alike; the rest of the message is taken.
    watcher = Member(role="observer")
    session.join(watcher)
    for remover in (mallory, watcher):
        assert session.receive(remover, states([(mine.client_id, 99, None)])) == NOTHING
        assert session.awareness.states[mine.client_id] == {"user": "alice"}
    bob = Member(role="controller")
    session.join(bob)
    both = session.receive(bob, states([(mine.client_id, 99, None), (4242, 1, {"b": 1})]))
    assert both.relay == states([(4242, 1, {"b": 1})])
    assert session.awareness.states[mine.client_id] == {"user": "alice"}
    assert session.awareness.states[4242] == {"b": 1}
    session.leave(bob)
    session.leave(watcher)
    assert session.leave(mallory) is None
    session.receive(alice, states([(mine.client_id, 5, {"user": "alice", "x": 1})]))
    # Once its member leaves, the id is free again.
    session.leave(alice)
    late = Member(role="controller")
    session.join(late)
    session.receive(late, states([(mine.client_id, 9, {"user": "late"})]))
    assert session.awareness.states[mine.client_id] == {"user": "late"}
    observer = Member(role="observer")
    session.join(observer)
    assert session.receive(observer, states([(mine.client_id, 9, {"user": "late"})])) == NOTHING
