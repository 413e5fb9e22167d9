"""A hostile MPRIS player for the gateway's tests and benchmark, written with dbus-fast's
low-level API so that it can send what no well-behaved library would.

``python hostile_player.py NAME [mute]`` owns ``org.mpris.MediaPlayer2.NAME`` on the session bus and
prints ``ready``. It answers ``GetAll`` with ``Metadata`` of the wrong types (a title that is
an integer, artists that are a string, a length that is a string, a URL that is not one) beside
one good field, says ``CanGoNext`` false, never answers ``Play``, and exits mid-call on
``Pause`` (without answering). Commands on stdin, one a line:

* ``flood N``: N ``PropertiesChanged`` (alternating ``Volume``) as fast as it can, then
  ``flooded`` on stdout;
* ``rate R S``: ``PropertiesChanged`` at R a second for S seconds, then ``flooded``;
* ``garbage``: signals whose bodies have the wrong shape, then ``sent``;
* ``quit``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

PATH = "/org/mpris/MediaPlayer2"
PROPS = "org.freedesktop.DBus.Properties"
PLAYER = "org.mpris.MediaPlayer2.Player"
ROOT = "org.mpris.MediaPlayer2"

ROOT_PROPS = {"Identity": Variant("s", "Hostile"), "CanQuit": Variant("b", False)}
PLAYER_PROPS = {
    "PlaybackStatus": Variant("s", "Paused"),
    "Metadata": Variant(
        "a{sv}",
        {
            "mpris:trackid": Variant("o", "/hostile/1"),
            "xesam:title": Variant("x", 42),
            "xesam:artist": Variant("s", "not a list"),
            "mpris:length": Variant("s", "long"),
            "xesam:url": Variant("s", "not a url"),
            "xesam:album": Variant("s", "Good Album"),
        },
    ),
    "CanControl": Variant("b", True),
    "CanPlay": Variant("b", True),
    "CanPause": Variant("b", True),
    "CanSeek": Variant("b", False),
    "CanGoNext": Variant("b", False),
    "CanGoPrevious": Variant("b", True),
    "Volume": Variant("d", 0.5),
    "Rate": Variant("s", "fast"),
    "Position": Variant("x", 1_000_000),
}


def changed(volume: float) -> Message:
    return Message.new_signal(
        PATH, PROPS, "PropertiesChanged", "sa{sv}as", [PLAYER, {"Volume": Variant("d", volume)}, []]
    )


async def drained(bus: MessageBus) -> None:
    """A round trip to the bus: what was sent before is in the daemon's hands. dbus-fast's
    writer fails on a full socket (EAGAIN) instead of waiting, so a flood must pace itself."""
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus.Peer",
            member="Ping",
        )
    )


def handler(bus: MessageBus, msg: Message, mute: bool) -> bool:
    if msg.message_type != MessageType.METHOD_CALL:
        return False
    if msg.interface == PROPS and msg.member == "GetAll":
        if mute:
            return True  # handled: never answered
        props = ROOT_PROPS if msg.body[0] == ROOT else PLAYER_PROPS
        bus.send(Message.new_method_return(msg, "a{sv}", [props]))
        return True
    if msg.interface == PLAYER and msg.member == "Play":
        return True  # handled: never answered
    if msg.interface == PLAYER and msg.member == "Pause":
        os._exit(0)  # gone mid-call, without a word
    bus.send(Message.new_method_return(msg))
    return True


async def main(name: str, mute: bool) -> None:
    bus = await MessageBus().connect()
    bus.add_message_handler(lambda msg: handler(bus, msg, mute))
    await bus.request_name(f"org.mpris.MediaPlayer2.{name}")
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "flood":
            for i in range(int(line[1])):
                bus.send(changed((i % 100) / 100))
                if i % 128 == 127:
                    await drained(bus)
            await drained(bus)
            print("flooded", flush=True)
        elif line[0] == "rate":
            rate, seconds = float(line[1]), float(line[2])
            start = time.monotonic()
            sent = 0
            while (elapsed := time.monotonic() - start) < seconds:
                due = int(elapsed * rate)
                while sent < due:
                    bus.send(changed((sent % 100) / 100))
                    sent += 1
                    if sent % 128 == 0:
                        await drained(bus)
                await asyncio.sleep(0.005)
            print("flooded", sent, flush=True)
        elif line[0] == "garbage":
            bus.send(Message.new_signal(PATH, PROPS, "PropertiesChanged", "s", [PLAYER]))
            bus.send(Message.new_signal(PATH, PROPS, "PropertiesChanged", "i", [7]))
            bus.send(Message.new_signal(PATH, PLAYER, "Seeked", "s", ["nowhere"]))
            bus.send(Message.new_signal(PATH, PLAYER, "Seeked", "", []))
            print("sent", flush=True)
        elif line[0] == "quit":
            break
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], "mute" in sys.argv[2:]))
