"""The session document's parts: who may write which, and their published lexicons."""

from __future__ import annotations

from typing import Any

import pytest

from libkiki.errors import KikiError
from libkiki.lexicon import Registry
from libkiki.sync.parts import BY_ROOT, PARTS, add_only, added_entry_problem, forbidden, may_write

pytestmark = pytest.mark.unit


def test_the_device_writes_every_part_controllers_only_intents_observers_nothing() -> None:
    assert all(may_write("device", part.root) for part in PARTS)
    assert [p.root for p in PARTS if may_write("controller", p.root)] == ["intents"]
    assert not any(may_write("observer", root) for root in [*BY_ROOT, "text", "anything"])
    # Roots no part names are open to every writer.
    assert may_write("controller", "text")
    assert forbidden("device") == ()
    assert {p.root for p in forbidden("controller")} == {"device", "results"}
    assert not may_write("nobody", "text")


def test_every_part_is_typed_by_a_published_lexicon(kiki: Registry) -> None:
    intent = {
        "id": "i-1",
        "tool": "dev.kiki.demo.echo",
        "by": "alice",
        "createdAt": "2026-12-07T15:00:00Z",
    }
    result = {"status": "ok", "output": {"text": "hi"}, "at": "2026-12-07T15:00:01Z"}
    state = {"updatedAt": "2026-12-07T15:00:00Z", "tools": ["dev.kiki.demo.echo"]}
    for part, value in zip(PARTS, (state, intent, result), strict=True):
        kiki.validator(part.entry).validate(value)
    with pytest.raises(KikiError):
        kiki.validator(BY_ROOT["intents"].entry).validate({"id": "i-2"})
    with pytest.raises(KikiError):
        kiki.validator(BY_ROOT["results"].entry).validate({"status": "ok"})


def test_controllers_only_add_intents_naming_themselves() -> None:
    intents = BY_ROOT["intents"]
    assert add_only("controller") == (intents,)
    assert add_only("device") == ()
    mine = {"id": "i", "tool": "dev.kiki.demo.echo", "by": "alice"}
    assert added_entry_problem(intents, "i", "add", mine, "alice") is None
    assert added_entry_problem(intents, "i", "add", mine, "bob") == (
        "intent by alice from a connection of bob"
    )
    for action in ("update", "delete"):
        assert "only be added" in str(added_entry_problem(intents, "i", action, mine, "alice"))
    assert "not a JSON object" in str(added_entry_problem(intents, "i", "add", [mine], "alice"))


def test_the_device_links_state_is_typed_by_the_lexicon(kiki: Registry) -> None:
    node = {"ref": "1:2", "id": 2, "role": "button", "name": "Save", "actions": ["press"]}
    app: dict[str, Any] = {
        "appId": "org.example.Editor",
        "treeId": 1,
        "revision": 7,
        "nodes": [
            {"ref": "1:1", "id": 1, "role": "window", "parent": None, "depth": 0},
            {**node, "parent": 1, "depth": 1},
        ],
    }
    state: dict[str, Any] = {
        "updatedAt": "2026-12-07T15:00:00.000Z",
        "stale": ["sensors"],
        "screen": {"apps": [app]},
        "nowPlaying": None,
        "sensors": [{"sensor": "imu0", "unit": "m/s^2", "scale": 3, "values": [1, 2, 3]}],
        "calls": [
            {
                "at": "2026-12-07T15:00:00Z",
                "tool": "dev.kiki.demo.echo",
                "caller": {"uid": 0, "gid": 0, "pid": 7},
                "onBehalfOf": {"subject": "alice", "session": "home"},
                "outcome": "ok",
            }
        ],
    }
    kiki.validator(BY_ROOT["device"].entry).validate(state)
    unplaced = {**state, "screen": {"apps": [{**app, "nodes": [node]}]}}
    with pytest.raises(KikiError):
        kiki.validator(BY_ROOT["device"].entry).validate(unplaced)
