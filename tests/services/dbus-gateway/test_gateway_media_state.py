"""The media state without a bus: what a player's values become, the position between the
signals, the active-player rule, refusals, and a stream's coalesced backlog."""

from __future__ import annotations

from typing import Any

import pytest
from dbus_fast import Variant

from kiki_dbus_gateway.media import Player, Players, parse_track
from kiki_dbus_gateway.playback import APPEARED, CHANGED, GONE, PlaybackFeed
from libkiki.errors import Conflict, NotFound

pytestmark = pytest.mark.unit


def status(value: str) -> dict[str, Variant]:
    return {"PlaybackStatus": Variant("s", value)}


def test_metadata_of_the_wrong_types_keeps_only_the_good_fields() -> None:
    track, bad = parse_track(
        {
            "mpris:trackid": Variant("o", "/t/1"),
            "xesam:title": Variant("x", 1),
            "xesam:artist": Variant("s", "one"),
            "xesam:album": Variant("s", "A" * 5000),
            "mpris:length": Variant("x", 5_000_000),
            "xesam:url": Variant("s", "no url"),
            "mpris:artUrl": Variant("s", "file:///a.png"),
        }
    )
    assert bad == 3
    assert track == {
        "trackId": "/t/1",
        "album": "A" * 256,
        "lengthUs": 5_000_000,
        "artUrl": "file:///a.png",
    }
    assert parse_track("not a dict") == ({}, 1)


def test_the_position_is_extrapolated_while_playing_only() -> None:
    player = Player("p", ":1.1", 0)
    player.apply({**status("Playing"), "Position": Variant("x", 1_000_000)}, now=10.0)
    assert player.position(12.5) == 3_500_000
    player.apply({"Rate": Variant("d", 2.0)}, now=12.5)
    assert player.position(13.5) == 5_500_000
    player.apply(status("Paused"), now=13.5)
    assert player.position(100.0) == 5_500_000
    player.seeked(42, now=100.0)
    assert player.position(200.0) == 42


def test_the_position_stops_at_the_tracks_length() -> None:
    player = Player("p", ":1.1", 0)
    metadata = Variant(
        "a{sv}", {"mpris:trackid": Variant("o", "/t"), "mpris:length": Variant("x", 10)}
    )
    player.apply({**status("Playing"), "Metadata": metadata}, now=0.0)
    assert player.position(60.0) == 10


def test_a_new_track_starts_at_zero() -> None:
    player = Player("p", ":1.1", 0)
    player.apply({"Position": Variant("x", 9_000_000)}, now=0.0)
    player.apply({"Metadata": Variant("a{sv}", {"mpris:trackid": Variant("o", "/t/2")})}, now=1.0)
    assert player.position(1.0) == 0


def test_wrong_types_are_counted_and_leave_the_state() -> None:
    players = Players(4)
    player = players.add("p", ":1.1")
    assert player is not None
    players.update(
        player,
        {
            "Volume": Variant("s", "loud"),
            "PlaybackStatus": Variant("s", "Dancing"),
            "CanPlay": Variant("i", 1),
        },
        now=0.0,
    )
    assert players.counters["bad_values"] == 3
    assert player.describe(0.0) == {"player": "p", "status": "Stopped"}


def make(players: Players, name: str, owner: str) -> Player:
    player = players.add(name, owner)
    assert player is not None
    players.announce(name)
    return player


def test_a_player_is_not_callable_before_its_first_state() -> None:
    players = Players(4)
    assert players.add("early", ":1.1") is not None
    with pytest.raises(NotFound):
        players.resolve("early")
    assert players.listed() == []
    players.announce("early")
    assert players.resolve("early").name == "early"


def test_the_active_player_rule() -> None:
    players = Players(8)
    with pytest.raises(NotFound) as caught:
        players.resolve(None)
    assert caught.value.data == {"error": "NoPlayer"}
    a, b, c = (make(players, n, f":1.{i}") for i, n in enumerate(("a", "b", "c")))
    assert players.resolve(None) is a  # nothing ever changed: the first seen
    players.update(b, status("Paused"), now=1.0)
    assert players.resolve(None) is b  # the last status change
    players.update(c, status("Playing"), now=2.0)
    players.update(a, status("Playing"), now=3.0)
    assert players.resolve(None) is a  # the last to start playing
    players.update(a, status("Paused"), now=4.0)
    assert players.resolve(None) is c  # playing beats a later pause


def test_a_name_matches_exactly_then_its_instances() -> None:
    players = Players(8)
    vlc = make(players, "vlc", ":1.1")
    one = make(players, "mpv.instance1", ":1.2")
    two = make(players, "mpv.instance2", ":1.3")
    assert players.resolve("vlc") is vlc
    players.update(two, status("Playing"), now=1.0)
    assert players.resolve("mpv") is two
    assert players.resolve("mpv.instance1") is one
    with pytest.raises(NotFound):
        players.resolve("mp")


def test_a_capability_said_false_is_refused() -> None:
    player = Player("p", ":1.1", 0)
    player.require("CanGoNext", "go on")  # never said: the player decides
    player.apply({"CanGoNext": Variant("b", False)}, now=0.0)
    with pytest.raises(Conflict) as caught:
        player.require("CanGoNext", "go on")
    assert caught.value.data == {"error": "NotSupported", "capability": "CanGoNext"}
    player.apply({"CanGoNext": Variant("b", True), "CanControl": Variant("b", False)}, now=0.0)
    with pytest.raises(Conflict):
        player.require("CanGoNext", "go on")


def test_the_players_bound_ignores_more() -> None:
    players = Players(1)
    make(players, "a", ":1.1")
    assert players.add("b", ":1.2") is None
    assert players.counters["players_ignored"] == 1


def types(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["$type"], m.get("player") or m["nowPlaying"]["player"]["player"]) for m in messages]


def test_a_feed_merges_a_flood_into_one_message_with_the_last_state() -> None:
    players = Players(4)
    player = make(players, "p", ":1.1")
    woken: list[int] = []
    feed = PlaybackFeed(players, lambda: woken.append(1))
    players.listeners.append(feed)
    first = feed.take(0.0)
    assert types(first) == [(APPEARED, "p")]
    for i in range(10_000):
        players.update(player, {"Volume": Variant("d", i / 100)}, now=0.0)
    messages = feed.take(0.0)
    assert types(messages) == [(CHANGED, "p")]
    assert messages[0]["nowPlaying"]["player"]["volumePercent"] == 1000
    assert feed.take(0.0) == []


def test_a_feed_says_gone_only_of_players_it_showed() -> None:
    players = Players(4)
    feed = PlaybackFeed(players, lambda: None)
    players.listeners.append(feed)
    make(players, "brief", ":1.1")
    players.remove("brief")
    assert feed.take(0.0) == []  # came and went between two reads
    make(players, "stays", ":1.2")
    assert types(feed.take(0.0)) == [(APPEARED, "stays")]
    players.remove("stays")
    assert types(feed.take(0.0)) == [(GONE, "stays")]


@pytest.mark.parametrize("volume", [float("inf"), float("-inf"), float("nan")])
def test_a_volume_that_is_not_a_number_is_refused_and_everyone_is_still_served(
    volume: float,
) -> None:
    players = Players(4)
    feed = PlaybackFeed(players, lambda: None)
    players.listeners.append(feed)
    good = make(players, "good", ":1.1")
    bad = make(players, "bad", ":1.2")
    players.update(good, {"Volume": Variant("d", 0.5)}, now=1.0)
    players.update(bad, {"Volume": Variant("d", volume)}, now=1.0)
    assert players.counters["bad_values"] == 1
    # listPlayers, nowPlaying and the playback stream describe every player.
    assert [p.describe(2.0).get("volumePercent") for p in players.listed()] == [50, None]
    assert {m["$type"] for m in feed.take(2.0)} == {APPEARED}


def test_a_position_listed_before_the_metadata_is_kept() -> None:
    players = Players(4)
    player = make(players, "vlc", ":1.3")
    metadata = Variant(
        "a{sv}",
        {"mpris:trackid": Variant("o", "/t/1"), "mpris:length": Variant("x", 9_000_000)},
    )
    # D-Bus dicts have no order: a GetAll may list Position before Metadata.
    players.update(
        player,
        {
            "PlaybackStatus": Variant("s", "Paused"),
            "Position": Variant("x", 5_000_000),
            "Metadata": metadata,
            "Rate": Variant("d", 1.0),
        },
        now=1.0,
    )
    assert player.position(2.0) == 5_000_000
