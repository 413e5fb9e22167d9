"""The device link's sans-I/O parts: the screen from the a11y stream, the state's reducers, the
throttle, and what becomes of an intent before and after it runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kiki_sync_relay.link.intents import (
    MAX_OUTPUT,
    MAX_SKEW,
    Admission,
    failed,
    parse,
    result,
    stuck,
    succeeded,
    to_prune,
)
from kiki_sync_relay.link.screen import Screen
from kiki_sync_relay.link.state import DeviceState
from kiki_sync_relay.link.throttle import PAUSE_MAX, Throttle
from kiki_sync_relay.link.values import is_fatal, json_safe
from libkiki.errors import (
    InvalidParams,
    KikiError,
    PermissionDenied,
    ToolError,
    Unavailable,
    ValidationError,
)
from libkiki.lexicon import Registry

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


def node(i: int, name: str = "", children: tuple[int, ...] = (), **extra: Any) -> dict[str, Any]:
    entry = {"ref": f"7:{i}", "id": i, "treeId": 7, "role": "generic", "children": list(children)}
    if name:
        entry["name"] = name
    return {**entry, **extra}


def tree_changed(revision: int, **fields: Any) -> dict[str, Any]:
    return {"appId": "org.example.Editor", "treeId": 7, "revision": revision, **fields}


def names(screen: Screen) -> list[str]:
    return [n.get("name", "") for app in screen.value()["apps"] for n in app["nodes"]]


# -- the screen -------------------------------------------------------------------------------


def test_the_screen_is_each_trees_nodes_in_document_order(kiki: Registry) -> None:
    screen = Screen()
    whole = [
        node(4, "b", value="typed", actions=["press"], states=[]),
        node(1, "window", (2, 3)),
        node(3, "a", (4,)),
        node(2, "title"),
    ]
    assert screen.apply(tree_changed(1, reset=True, changed=whole))
    (app,) = screen.value()["apps"]
    assert [(n["id"], n["parent"], n["depth"]) for n in app["nodes"]] == [
        (1, None, 0),
        (2, 1, 1),
        (3, 1, 1),
        (4, 3, 2),
    ]
    assert app["nodes"][3] == {
        "ref": "7:4",
        "id": 4,
        "role": "generic",
        "name": "b",
        "value": "typed",
        "actions": ["press"],
        "parent": 3,
        "depth": 2,
    }
    kiki.validator("dev.kiki.session.defs#screen").validate(screen.value())
    # Removing a node removes its subtree; changed nodes are upserted.
    screen.apply(tree_changed(2, removed=[3], changed=[node(1, "window", (2,)), node(2, "new")]))
    assert names(screen) == ["window", "new"]
    # A reset run forgets the rest, once per revision (a big tree comes in several messages).
    screen.apply(tree_changed(3, reset=True, changed=[node(1, "w", (5, 6))]))
    screen.apply(tree_changed(3, reset=True, changed=[node(5, "x"), node(6, "y")]))
    assert names(screen) == ["w", "x", "y"]
    screen.apply(tree_changed(3, gone=True))
    assert screen.value() == {"apps": []}


def test_the_screen_is_bounded() -> None:
    screen = Screen(max_nodes=3, max_held=5, max_apps=1)
    nodes = [node(1, "root", tuple(range(2, 10)))] + [node(i, str(i)) for i in range(2, 10)]
    screen.apply(tree_changed(1, reset=True, changed=nodes))
    (app,) = screen.value()["apps"]
    assert len(app["nodes"]) == 3
    assert app["truncated"] is True
    assert len(screen.apps[7].nodes) == 5  # held in memory
    other = {"appId": "org.example.Other", "treeId": 8, "revision": 1, "changed": [node(1)]}
    assert not screen.apply(other)  # one app at most
    assert not screen.apply({"nothing": "useful"})
    cycle = [node(1, "a", (2,)), node(2, "b", (1,)), node(3, "c", (3,))]
    looped = Screen()
    looped.apply(tree_changed(1, reset=True, changed=cycle))
    assert names(looped) == []  # no root: nothing to place, and no endless walk


def test_the_screen_flattens_only_the_apps_changed_since_it_was_last_rendered() -> None:
    screen = Screen()
    other = {"appId": "org.example.Other", "treeId": 8, "revision": 1, "reset": True}
    screen.apply(tree_changed(1, reset=True, changed=[node(1, "window", (2,)), node(2, "a")]))
    screen.apply(other | {"changed": [node(1, "other")]})
    assert names(screen) == ["window", "a", "other"]
    assert screen.renders == 2
    for revision in range(2, 50):
        screen.apply(tree_changed(revision, changed=[node(2, f"a{revision}")]))
    assert names(screen) == ["window", "a49", "other"]
    assert screen.renders == 3  # the editor once more; the other app as it was
    screen.apply(tree_changed(50, gone=True))
    assert names(screen) == ["other"]
    assert screen.renders == 3


def test_the_state_renders_the_screen_only_when_it_is_read() -> None:
    state = DeviceState(pid=42)
    seen: list[str] = []
    state.listeners.add(seen.append)
    state.screen_reset()  # nothing on it: no change
    for revision in range(1, 101):
        state.screen_changed(tree_changed(revision, reset=True, changed=[node(1, f"w{revision}")]))
    assert seen == ["screen"] * 100
    assert state.screen.renders == 0
    (app,) = state.current("screen")["apps"]
    assert app["nodes"][0]["name"] == "w100"
    assert state.screen.renders == 1
    state.screen_reset()
    assert state.current("screen") == {"apps": []}
    assert seen[-1] == "screen"


# -- the state --------------------------------------------------------------------------------


def test_the_state_tells_its_listeners_of_changes_only() -> None:
    state = DeviceState(pid=42)
    seen: list[str] = []
    state.listeners.add(seen.append)
    assert state.stale_list() == [
        "screen",
        "nowPlaying",
        "notifications",
        "sensors",
        "tools",
        "calls",
    ]
    state.mark("tools", False)
    state.mark("tools", False)
    state.tools_listed(["dev.kiki.demo.echo", "dev.kiki.a11y.act", "org.x.y"], ["dev.kiki.*"])
    state.tools_listed(["dev.kiki.a11y.act", "dev.kiki.demo.echo"], ["dev.kiki.*"])
    assert seen == ["stale", "tools"]
    assert state.values["tools"] == ["dev.kiki.a11y.act", "dev.kiki.demo.echo"]


def test_the_calls_are_the_tool_calls_not_the_links_own(kiki: Registry) -> None:
    state = DeviceState(pid=42)
    base = {"time": "2026-12-07T18:00:00Z", "tool": "dev.kiki.demo.echo", "outcome": "ok"}
    someone = {"uid": 1000, "gid": 1000, "pid": 7}
    link = {"uid": 0, "gid": 0, "pid": 42}
    state.audit({**base, "caller": someone})
    state.audit({**base, "caller": someone, "event": "subscribe"})
    state.audit({**base, "caller": link, "tool": "dev.kiki.sensor.read"})
    state.audit({**base, "caller": link, "onBehalfOf": {"subject": "alice", "session": "home"}})
    assert [c["caller"]["pid"] for c in state.values["calls"]] == [7, 42]
    assert state.values["calls"][1]["onBehalfOf"]["subject"] == "alice"
    for i in range(60):
        state.audit({**base, "caller": someone, "tool": f"dev.kiki.demo.t{i}"})
    assert len(state.values["calls"]) == 50
    assert state.values["calls"][-1]["tool"] == "dev.kiki.demo.t59"
    for call in state.values["calls"]:
        kiki.validator("dev.kiki.session.defs#call").validate(call)


def test_now_playing_is_the_active_player() -> None:
    state = DeviceState(pid=42)

    def playing(player: str, active: bool) -> dict[str, Any]:
        return {"nowPlaying": {"player": {"player": player, "status": "Playing", "active": active}}}

    state.playback(playing("mpv", True))
    state.playback(playing("vlc", False))
    assert state.values["nowPlaying"]["player"]["player"] == "mpv"
    state.playback({"player": "mpv"})  # gone
    assert state.values["nowPlaying"]["player"]["player"] == "vlc"
    state.players_reset()
    assert state.values["nowPlaying"] is None


# -- the throttle -----------------------------------------------------------------------------


def test_a_lone_change_goes_at_once_and_changes_within_the_interval_merge() -> None:
    throttle = Throttle({"screen": 0.1, "stale": 0.0})
    throttle.mark("screen")
    assert throttle.due(10.0) == (["screen"], None)
    throttle.mark("screen")
    throttle.mark("screen")
    throttle.mark("stale")
    keys, wake = throttle.due(10.05)
    assert keys == ["stale"]
    assert wake == pytest.approx(10.1)
    assert throttle.due(10.1) == (["screen"], None)
    assert throttle.due(11.0) == ([], None)


def test_after_a_refused_write_nothing_is_due_for_a_growing_pause() -> None:
    """A state the session's document cannot take is not rebuilt and sent again at the
    keys' rates."""
    throttle = Throttle({"screen": 0.1, "stale": 0.0})
    throttle.refused(10.0)
    throttle.mark("screen")
    throttle.mark("stale")
    assert throttle.due(10.5) == ([], 11.0)
    assert throttle.due(11.0) == (["screen", "stale"], None)
    throttle.refused(11.0)  # again: twice as long
    throttle.mark("screen")
    assert throttle.due(12.5) == ([], 13.0)
    assert throttle.due(13.0) == (["screen"], None)
    for _ in range(10):
        throttle.refused(13.0)
    assert throttle.paused_until == 13.0 + PAUSE_MAX
    throttle.accepted()
    throttle.refused(100.0)  # from the first pause again
    assert throttle.paused_until == 101.0
    assert throttle.due(100.5) == ([], None)  # nothing waits


# -- intents ----------------------------------------------------------------------------------


def intent(key: str = "i1", **fields: Any) -> dict[str, Any]:
    return {
        "id": key,
        "tool": "dev.kiki.demo.echo",
        "input": {"text": "hi"},
        "by": "alice",
        "createdAt": NOW.isoformat(),
    } | fields


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_whole_numbers_in_an_intents_input_are_integers() -> None:
    """Yjs has no integer type and pycrdt reads every number as a float; the lexicons have
    integers and no floats."""
    arguments = {
        "offsetUs": -5_000_000.0,
        "volume": 0.5,
        "list": [1.0, {"n": 2.0}, True, "3.0", None],
        "big": 2.0**53,
        "deep": deep(63),
    }
    entry = parse("i1", intent(input=arguments))
    assert entry.input["offsetUs"] == -5_000_000
    assert type(entry.input["offsetUs"]) is int
    assert entry.input["volume"] == 0.5
    assert entry.input["list"] == [1, {"n": 2}, True, "3.0", None]
    assert [type(v) for v in entry.input["list"][:3]] == [int, dict, bool]
    assert type(entry.input["list"][1]["n"]) is int
    assert type(entry.input["big"]) is int
    inner = entry.input["deep"]
    while isinstance(inner, list):
        (inner,) = inner
    assert inner == 1


def test_an_integer_argument_read_as_a_float_validates(kiki: Registry) -> None:
    # What pycrdt reads of {"volumePercent": 50} written by a browser.
    read = {"volumePercent": 50.0}
    with pytest.raises(ValidationError):
        kiki.validator("dev.kiki.media.setVolume").input(read)
    entry = parse("i1", intent(tool="dev.kiki.media.setVolume", input=read))
    kiki.validator("dev.kiki.media.setVolume").input(entry.input)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bad id!", intent("bad id!")),
        ("x" * 65, intent("x" * 65)),
        ("i1", intent("i2")),
        ("i1", "run it"),
        ("i1", intent(tool=3)),
        ("i1", intent(input=[1])),
        ("i1", intent(by="")),
        ("i1", intent(deadline="soon")),
        ("i1", {k: v for k, v in intent().items() if k != "createdAt"}),
        ("i1", intent(createdAt="just now")),
        ("i1", intent(input={"deep": deep(64)})),  # 65 levels with the input
    ],
)
def test_what_is_not_an_intent_is_refused(key: str, value: Any) -> None:
    with pytest.raises(InvalidParams):
        parse(key, value)


def test_an_intent_is_expired_rate_limited_or_unknown_before_it_runs(kiki: Registry) -> None:
    admission = Admission(rate=1.0, burst=3.0)  # the expired one takes a token too
    tools = ["dev.kiki.demo.echo"]
    late = parse("i1", intent(deadline=(NOW - timedelta(seconds=1)).isoformat()))
    answer = admission.check(late, tools, NOW, 0.0)
    assert answer is not None
    assert (answer["status"], answer["error"]["name"]) == ("expired", "Timeout")
    ok = parse("i2", intent("i2", deadline=(NOW + timedelta(seconds=1)).isoformat()))
    assert admission.check(ok, tools, NOW, 0.0) is None
    assert admission.check(ok, tools, NOW, 0.0) is None
    limited = admission.check(ok, tools, NOW, 0.0)
    assert limited is not None
    assert limited["error"]["name"] == "LimitExceeded"
    assert admission.check(ok, tools, NOW, 1.0) is None  # refilled
    bob = parse("i3", intent("i3", by="bob", tool="dev.kiki.demo.nothing"))
    unknown = admission.check(bob, tools, NOW, 1.0)
    assert unknown is not None
    assert (unknown["status"], unknown["error"]["name"]) == ("refused", "NotFound")
    for entry in (answer, limited, unknown, result("ok", output={"text": "hi"}, now=NOW)):
        kiki.validator("dev.kiki.session.defs#result").validate(entry)


def test_an_intent_written_longer_ago_than_its_max_age_is_expired() -> None:
    """After a restart the link no longer knows the ids it pruned: an intent written again
    then is older than max_age (kept below the broker's idempotency window), so not run."""
    admission = Admission(rate=100.0, burst=100.0, max_age=300.0)
    tools = ["dev.kiki.demo.echo"]
    old = parse("i1", intent(createdAt=(NOW - timedelta(seconds=301)).isoformat()))
    answer = admission.check(old, tools, NOW, 0.0)
    assert answer is not None
    assert (answer["status"], answer["error"]["name"]) == ("expired", "Timeout")
    assert "300 s" in answer["error"]["message"]
    recent = parse("i2", intent("i2", createdAt=(NOW - timedelta(seconds=299)).isoformat()))
    assert admission.check(recent, tools, NOW, 0.0) is None
    ahead = parse("i3", intent("i3", createdAt=(NOW + timedelta(seconds=60)).isoformat()))
    assert admission.check(ahead, tools, NOW, 0.0) is None  # a writer's clock ahead


def test_an_output_too_big_for_a_result_is_told(kiki: Registry) -> None:
    small = succeeded({"text": "hi"}, NOW)
    assert small == {"status": "ok", "output": {"text": "hi"}, "at": small["at"]}
    big = succeeded({"text": "x" * MAX_OUTPUT}, NOW)
    assert (big["status"], big["error"]["name"]) == ("error", "LimitExceeded")
    assert "output" not in big
    kiki.validator("dev.kiki.session.defs#result").validate(big)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (PermissionDenied("policy"), "refused"),
        (ValidationError("input.text", "required"), "refused"),
        (ToolError("it broke"), "error"),
        (Unavailable("no broker"), "error"),
    ],
)
def test_the_brokers_answer_becomes_a_typed_result(error: KikiError, status: str) -> None:
    answer = failed(error, NOW)
    assert answer["status"] == status
    assert answer["error"]["name"] == type(error).__name__
    assert "output" not in answer


def test_old_and_surplus_finished_intents_are_pruned_oldest_first() -> None:
    def done(seconds_ago: float) -> dict[str, Any]:
        return result("ok", now=NOW - timedelta(seconds=seconds_ago))

    intents = {k: intent(k) for k in ("old", "a", "b", "c", "waiting")}
    results = {"old": done(700), "a": done(30), "b": done(20), "c": done(10), "orphan": done(1)}
    results["waiting"] = result("running", now=NOW)
    assert to_prune(intents, results, NOW, keep=600, max_entries=100) == ["old"]
    # Six entries, three kept: the oldest finished go (the running one stays).
    assert to_prune(intents, results, NOW, keep=600, max_entries=3) == ["old", "a", "b"]
    del results["orphan"]["status"]  # no final result, no intent: gone at once
    assert to_prune(intents, results, NOW, keep=600, max_entries=100) == ["orphan", "old"]


def test_values_are_made_json_safe() -> None:
    value = {"len": 2**64 - 1, "neg": -(2**60), "ok": 2**53, "t": (1, 2), "x": float("nan")}
    assert json_safe(value) == {
        "len": float(2**64 - 1),
        "neg": float(-(2**60)),
        "ok": 2**53,
        "t": [1, 2],
        "x": None,
    }
    with pytest.raises(InvalidParams):
        json_safe({"ok": {1: "a key that is not a string"}})
    with pytest.raises(InvalidParams):
        json_safe([b"bytes"])
    with pytest.raises(InvalidParams):
        json_safe({"name": "\ud800"})
    assert json_safe({"n": 2**53, "big": 2**53 + 2}, exact=False) == {
        "n": 2**53,
        "big": 2.0**53 + 2,
    }
    with pytest.raises(InvalidParams):
        json_safe({"inode": 2**53 + 1}, exact=True)


def test_a_whole_float_past_2_53_stays_a_float() -> None:
    entry = parse("i1", intent(input={"n": 1e20, "m": -(2.0**54)}))
    assert [type(v) for v in entry.input.values()] == [float, float]


def test_an_intent_written_in_the_future_is_refused() -> None:
    admission = Admission(rate=100.0, burst=100.0)
    ahead = NOW + timedelta(seconds=MAX_SKEW + 1)
    future = parse("i1", intent(createdAt=ahead.isoformat(), deadline=(ahead).isoformat()))
    answer = admission.check(future, ["dev.kiki.demo.echo"], NOW, 0.0)
    assert answer is not None
    assert (answer["status"], answer["error"]["name"]) == ("refused", "InvalidParams")


def test_the_rate_is_taken_before_anything_else() -> None:
    admission = Admission(rate=1.0, burst=1.0)
    assert admission.take(None, NOW, 0.0) is None
    refused = admission.take(3, NOW, 0.0)  # no name: the one bucket of those
    assert refused is not None
    assert refused["error"]["name"] == "LimitExceeded"
    late = parse("i1", intent(deadline=(NOW - timedelta(seconds=1)).isoformat()))
    assert admission.check(late, [], NOW, 0.0)["status"] == "expired"  # type: ignore[index]
    limited = admission.check(late, [], NOW, 0.0)
    assert limited is not None
    assert limited["error"]["name"] == "LimitExceeded"


def test_an_entry_running_longer_than_a_call_can_is_stuck() -> None:
    old = (NOW - timedelta(seconds=100)).isoformat()
    recent = (NOW - timedelta(seconds=10)).isoformat()
    results = {
        "lost": {"status": "running", "at": old},
        "called": {"status": "running", "at": old},
        "recent": {"status": "running", "at": recent},
        "done": {"status": "ok", "at": old},
    }
    assert stuck(results, NOW, 90.0, {"called"}) == ["lost"]


def test_only_stopping_and_cancelling_go_on_up_from_the_links_loops() -> None:
    class Panic(BaseException):  # what pycrdt raises, not an Exception
        pass

    assert not is_fatal(Panic())
    assert not is_fatal(BaseExceptionGroup("loops", [Panic(), ValueError()]))
    for stop in (KeyboardInterrupt(), SystemExit(), asyncio.CancelledError()):
        assert is_fatal(stop)
        assert is_fatal(BaseExceptionGroup("loops", [Panic(), stop]))
