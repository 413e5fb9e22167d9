"""The least gateway: the floor of any Python gateway for one media command, for bench_media.py.

    least_gateway.py loop|asyncio BUS_ADDRESS TOOLS_SOCKET PLAYER NSID

One process doing only what a gateway cannot leave out to answer ``play`` for one player:

- it registers ``NSID`` with the real broker as a provider does (``kiki/registerTools`` with
  the tool's lexicon: ``dev.kiki.media.play``'s under the NSID, so the broker validates the
  same input and output), and answers the broker's ``tools/call`` on that connection;
- for each call (its ``player`` must be ``PLAYER``) it sends the MPRIS ``Play`` with dbus-fast
  to the player's unique name, looked up once at start, and answers when the reply comes: a
  reply is taken only from that name (or the bus daemon's error), and a call the player does
  not answer within the deadline is answered ``Timeout``;
- its answer is the nowPlaying it reads as one JSON line on stdin at start (what the real
  gateway answered last), so the broker checks an output of the same size and shape.

No player tracking, no policy, no task per call. Two ways to run it:

- ``loop``: no event loop library at all: one ``selectors`` loop over the broker's socket and
  the bus's, dbus-fast's message reader and marshalling on the bus connection dbus-fast opened
  (authenticated, ``Hello`` said). The least a Python process can do per call.
- ``asyncio``: an asyncio ``Protocol`` for the broker and a dbus-fast message handler for the
  replies, everything in the loop's callbacks: the floor of a gateway on asyncio, as Kiki's
  services are.

It prints ``ready`` once registered and runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_reader import build_message_reader

from libkiki.errors import MethodNotFound, NotFound, Timeout, Unavailable

LEXICON = Path(__file__).resolve().parents[2] / "schemas/lexicons/dev/kiki/media/play.json"
BUS = "org.freedesktop.DBus"
MAX_LINE = 1 << 20
DEADLINE = 1.0  # as the gateway's call_timeout in the benchmark's stack


class Core:
    """Sans-I/O: the broker's lines in (:meth:`feed`), the bus's replies in (:meth:`on_reply`);
    answers out through ``write`` and D-Bus calls through ``send``. The caller keeps each
    call's deadline: :meth:`feed` returns the serials it sent, :meth:`on_reply` the serial it
    answered, :meth:`expire` answers one that is late."""

    def __init__(
        self,
        owner: str,
        player: str,
        nsid: str,
        answer: Any,
        write: Callable[[bytes], None],
        send: Callable[[Message], object],
        next_serial: Callable[[], int],
    ) -> None:
        self.owner = owner
        self.player = player
        self.nsid = nsid
        self.answer = answer
        self.write = write
        self.send = send
        self.next_serial = next_serial
        self.buf = b""
        self.registered: dict[str, Any] | None = None  # the broker's answer to it
        self.waiting: dict[int, Any] = {}  # D-Bus serial -> the JSON-RPC id

    def register(self) -> None:
        lexicon = json.loads(LEXICON.read_text())
        lexicon["id"] = self.nsid
        params = {"tools": [self.nsid], "lexicons": [lexicon], "maxInFlight": 64}
        self.reply({"jsonrpc": "2.0", "id": 0, "method": "kiki/registerTools", "params": params})

    def reply(self, message: dict[str, Any]) -> None:
        self.write(orjson.dumps(message) + b"\n")

    def error(self, id: Any, code: int, text: str) -> None:
        self.reply({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}})

    def feed(self, data: bytes) -> list[int] | None:
        """The serials of the D-Bus calls ``data`` started; None: the broker broke the
        protocol (a line too long, not JSON), close."""
        *lines, self.buf = (self.buf + data).split(b"\n")
        if len(self.buf) > MAX_LINE:
            return None
        sent = []
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(msg, dict):
                return None
            serial = self.on_message(msg)
            if serial is not None:
                sent.append(serial)
        return sent

    def on_message(self, msg: dict[str, Any]) -> int | None:
        method = msg.get("method")
        if method is None:  # the answer to our registration
            self.registered = msg
            return None
        if "id" not in msg:  # a notification (cancelled, list_changed): nothing to do
            return None
        id = msg["id"]
        params = msg.get("params")
        if method != "tools/call" or not isinstance(params, dict):
            self.error(id, MethodNotFound.jsonrpc_code, f"no method {method}")
            return None
        if params.get("name") != self.nsid:
            self.error(id, NotFound.jsonrpc_code, "no such tool")
            return None
        arguments = params.get("arguments")
        if not isinstance(arguments, dict) or arguments.get("player") != self.player:
            self.error(id, NotFound.jsonrpc_code, "no such player")
            return None
        serial = self.next_serial()
        self.waiting[serial] = id
        self.send(
            Message(
                destination=self.owner,
                path="/org/mpris/MediaPlayer2",
                interface="org.mpris.MediaPlayer2.Player",
                member="Play",
                serial=serial,
            )
        )
        return serial

    def on_reply(self, msg: Message) -> int | None:
        """The serial ``msg`` answered, if it is a reply to one of ours from the player."""
        kind = msg.message_type
        if kind is not MessageType.METHOD_RETURN and kind is not MessageType.ERROR:
            return None
        serial = msg.reply_serial
        if serial not in self.waiting:
            return None
        if msg.sender != self.owner and not (msg.sender == BUS and kind is MessageType.ERROR):
            return None  # not the player's: the call waits for its own reply
        id = self.waiting.pop(serial)
        if kind is MessageType.ERROR:
            self.error(id, Unavailable.jsonrpc_code, f"the player answered {msg.error_name}")
        else:
            result = {"structuredContent": self.answer, "isError": False}
            self.reply({"jsonrpc": "2.0", "id": id, "result": result})
        return serial

    def expire(self, serial: int) -> None:
        id = self.waiting.pop(serial, None)
        if id is not None:
            self.error(id, Timeout.jsonrpc_code, "the player did not answer in time")


async def connect_bus(address: str, player: str) -> tuple[MessageBus, str]:
    """dbus-fast's connection (authenticated, ``Hello`` said) and the player's unique name."""
    bus = await MessageBus(bus_address=address).connect()
    reply = await bus.call(
        Message(
            destination=BUS,
            path="/org/freedesktop/DBus",
            interface=BUS,
            member="GetNameOwner",
            signature="s",
            body=[f"org.mpris.MediaPlayer2.{player}"],
        )
    )
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        raise SystemExit(f"{player} is not on the bus: {reply}")
    return bus, str(reply.body[0])


def run_loop(address: str, tools: str, player: str, nsid: str, answer: Any) -> None:
    """The ``loop`` way: ``selectors`` over the two sockets and stdin."""
    loop = asyncio.new_event_loop()
    bus, owner = loop.run_until_complete(connect_bus(address, player))
    dbus = bus._sock  # dbus-fast's socket, read and written here from now on
    assert dbus is not None
    loop.remove_reader(dbus.fileno())
    broker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    broker.connect(tools)
    core = Core(
        owner,
        player,
        nsid,
        answer,
        broker.sendall,
        lambda message: dbus.sendall(message._marshall(False)),
        bus.next_serial,
    )
    core.register()
    while core.registered is None:
        data = broker.recv(65536)
        if not data or core.feed(data) is None:
            raise SystemExit("the broker closed the connection before answering")
    if "result" not in core.registered:
        raise SystemExit(f"the broker refused the registration: {core.registered}")
    print("ready", flush=True)
    deadlines: dict[int, float] = {}

    def on_reply(message: Message) -> None:
        serial = core.on_reply(message)
        if serial is not None:
            del deadlines[serial]

    def on_end(exc: Exception | None) -> None:
        raise SystemExit(f"the bus connection ended: {exc}")

    read_bus = build_message_reader(dbus, on_reply, on_end, False)
    selector = selectors.DefaultSelector()
    selector.register(broker, selectors.EVENT_READ, "broker")
    selector.register(dbus, selectors.EVENT_READ, "bus")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    while True:
        timeout = None
        if deadlines:
            timeout = max(0.0, min(deadlines.values()) - time.monotonic())
        for key, _ in selector.select(timeout):
            if key.data == "bus":
                read_bus()
            elif key.data == "broker":
                data = broker.recv(65536)
                sent = core.feed(data) if data else None
                if sent is None:
                    return
                for serial in sent:
                    deadlines[serial] = time.monotonic() + DEADLINE
            else:  # stdin is readable once it is closed
                return
        now = time.monotonic()
        for serial in [s for s, deadline in deadlines.items() if deadline <= now]:
            del deadlines[serial]
            core.expire(serial)


class _Broker(asyncio.Protocol):
    def __init__(self, core: Core, closed: asyncio.Future[None]) -> None:
        self.core = core
        self.closed = closed
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.transport: asyncio.Transport | None = None
        self.registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        sent = self.core.feed(data)
        if sent is None:
            if self.transport is not None:
                self.transport.close()
            return
        loop = asyncio.get_running_loop()
        for serial in sent:
            self.timers[serial] = loop.call_later(DEADLINE, self.expire, serial)
        if self.core.registered is not None and not self.registered.done():
            self.registered.set_result(None)

    def expire(self, serial: int) -> None:
        self.timers.pop(serial, None)
        self.core.expire(serial)

    def on_bus_message(self, message: Message) -> bool:
        serial = self.core.on_reply(message)
        if serial is None:
            return False
        self.timers.pop(serial).cancel()
        return True

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def run_asyncio(address: str, tools: str, player: str, nsid: str, answer: Any) -> None:
    """The ``asyncio`` way: every call handled in the loop's callbacks."""
    bus, owner = await connect_bus(address, player)
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    holder: list[_Broker] = []
    core = Core(
        owner, player, nsid, answer, lambda data: holder[0].write(data), bus.send, bus.next_serial
    )
    _, broker = await loop.create_unix_connection(lambda: _Broker(core, closed), tools)
    holder.append(broker)
    bus.add_message_handler(broker.on_bus_message)
    core.register()
    await broker.registered
    assert core.registered is not None
    if "result" not in core.registered:
        raise SystemExit(f"the broker refused the registration: {core.registered}")
    print("ready", flush=True)
    # Nothing more comes on stdin: readable means closed.
    loop.add_reader(sys.stdin.fileno(), broker.connection_lost, None)
    await closed
    loop.remove_reader(sys.stdin.fileno())
    if broker.transport is not None:
        broker.transport.close()
    bus.disconnect()


if __name__ == "__main__":
    way, address, tools, player, nsid = sys.argv[1:6]
    answer = json.loads(sys.stdin.readline())
    if way == "loop":
        run_loop(address, tools, player, nsid, answer)
    else:
        asyncio.run(run_asyncio(address, tools, player, nsid, answer))
