"""Who is told that the tool list changed, and who is still owed it (no sockets: connections
are plain names here)."""

from __future__ import annotations

import pytest

from kiki_tool_broker.announce import Audience
from libkiki.errors import InvalidParams, LimitExceeded

pytestmark = pytest.mark.unit

WANTS = {"toolsListChanged": True}


def test_handshake_connections_and_streams_that_asked_are_owed_a_change() -> None:
    audience: Audience[str] = Audience(max_streams=8)
    audience.watch("a")
    audience.open(("b", 1), audience.admit(WANTS))
    audience.open(("c", 2), audience.admit({"prompts": True}))  # nothing the broker serves
    assert sorted(audience.due()) == []  # nothing changed yet
    audience.changed()
    audience.changed()  # owed once, however often it changed
    assert sorted(audience.due(), key=str) == [("a", None), ("b", 1)]


def test_a_listener_is_owed_until_told() -> None:
    audience: Audience[str] = Audience(max_streams=8)
    audience.watch("slow")
    audience.watch("quick")
    audience.changed()
    audience.told(("quick", None))  # "slow" was not reading: its buffer was not empty
    assert audience.due() == [("slow", None)]
    assert audience.due() == [("slow", None)]  # still owed on the next round
    audience.told(("slow", None))
    assert audience.due() == []
    assert not audience.owed


def test_one_that_stops_listening_is_owed_nothing() -> None:
    audience: Audience[str] = Audience(max_streams=8)
    audience.watch("a")
    audience.open(("a", 5), audience.admit(WANTS))
    audience.open(("b", 6), audience.admit(WANTS))
    audience.changed()
    audience.close(("b", 6))  # the caller cancelled its listen request
    audience.forget("a")  # its connection closed: the handshake and its stream with it
    assert audience.due() == []
    assert not audience.owed
    assert not audience.streams


def test_listen_streams_are_capped_and_their_params_checked() -> None:
    audience: Audience[str] = Audience(max_streams=2)
    with pytest.raises(InvalidParams, match="notifications must be an object"):
        audience.admit(["toolsListChanged"])
    assert audience.admit(WANTS) == WANTS
    audience.open(("a", 1), WANTS)
    audience.open(("a", 2), {})  # a stream that asked for nothing still counts
    with pytest.raises(LimitExceeded, match=r"limit 2") as over:
        audience.admit(WANTS)
    assert over.value.data == {"limit": 2}
    audience.close(("a", 2))
    assert audience.admit({}) == {}
