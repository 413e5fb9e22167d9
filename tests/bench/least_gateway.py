"""The least gateway: the floor of any Python gateway for one media command, for bench_media.py.

    least_gateway.py BUS_ADDRESS TOOLS_SOCKET PLAYER NSID

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

No player tracking, no policy, no task per call: the JSON-RPC lines are read and the D-Bus
replies handled in the callbacks of the event loop (an asyncio ``Protocol`` and a dbus-fast
message handler). It prints ``ready`` once registered and runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import orjson
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from libkiki.errors import MethodNotFound, NotFound, Timeout, Unavailable

LEXICON = Path(__file__).resolve().parents[2] / "schemas/lexicons/dev/kiki/media/play.json"
BUS = "org.freedesktop.DBus"
MAX_LINE = 1 << 20
DEADLINE = 1.0  # as the gateway's call_timeout in the benchmark's stack
NOT_FOUND, TIMEOUT = NotFound.jsonrpc_code, Timeout.jsonrpc_code
UNAVAILABLE, METHOD_NOT_FOUND = Unavailable.jsonrpc_code, MethodNotFound.jsonrpc_code


class LeastProvider(asyncio.Protocol):
    """The broker's side: JSON-RPC lines in, answers out."""

    def __init__(self, bus: MessageBus, owner: str, player: str, nsid: str, answer: Any) -> None:
        self.bus = bus
        self.owner = owner
        self.player = player
        self.nsid = nsid
        self.answer = answer
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.registered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # D-Bus serial -> (the JSON-RPC id, its deadline)
        self.waiting: dict[int, tuple[Any, asyncio.TimerHandle]] = {}
        bus.add_message_handler(self.on_bus_message)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        if len(self.buf) > MAX_LINE:
            self.close()
            return
        for line in lines:
            if line.strip():
                self.on_line(line)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def write(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(orjson.dumps(message) + b"\n")

    def error(self, id: Any, code: int, text: str) -> None:
        self.write({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}})

    def on_line(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.close()
            return
        if not isinstance(msg, dict):
            self.close()
            return
        method = msg.get("method")
        if method is None:  # the answer to our registration
            if not self.registered.done():
                self.registered.set_result(msg)
            return
        if "id" not in msg:  # a notification (cancelled, list_changed): nothing to do
            return
        id = msg["id"]
        params = msg.get("params")
        if method != "tools/call" or not isinstance(params, dict):
            self.error(id, METHOD_NOT_FOUND, f"no method {method}")
            return
        if params.get("name") != self.nsid:
            self.error(id, NOT_FOUND, "no such tool")
            return
        arguments = params.get("arguments")
        if not isinstance(arguments, dict) or arguments.get("player") != self.player:
            self.error(id, NOT_FOUND, "no such player")
            return
        serial = self.bus.next_serial()
        message = Message(
            destination=self.owner,
            path="/org/mpris/MediaPlayer2",
            interface="org.mpris.MediaPlayer2.Player",
            member="Play",
            serial=serial,
        )
        timer = asyncio.get_running_loop().call_later(DEADLINE, self.expire, serial)
        self.waiting[serial] = (id, timer)
        self.bus.send(message)

    def expire(self, serial: int) -> None:
        waiting = self.waiting.pop(serial, None)
        if waiting is not None:
            self.error(waiting[0], TIMEOUT, "the player did not answer in time")

    def on_bus_message(self, msg: Message) -> bool:
        kind = msg.message_type
        if kind is not MessageType.METHOD_RETURN and kind is not MessageType.ERROR:
            return False
        waiting = self.waiting.get(msg.reply_serial)
        if waiting is None:
            return False
        if msg.sender != self.owner and not (msg.sender == BUS and kind is MessageType.ERROR):
            return False  # not the player's: the call waits for its own reply
        del self.waiting[msg.reply_serial]
        id, timer = waiting
        timer.cancel()
        if kind is MessageType.ERROR:
            self.error(id, UNAVAILABLE, f"the player answered {msg.error_name}")
        else:
            result = {"structuredContent": self.answer, "isError": False}
            self.write({"jsonrpc": "2.0", "id": id, "result": result})
        return True


async def main(address: str, tools: str, player: str, nsid: str, answer: Any) -> None:
    lexicon = json.loads(LEXICON.read_text())
    lexicon["id"] = nsid
    bus = await MessageBus(bus_address=address).connect()
    name = Message(
        destination=BUS,
        path="/org/freedesktop/DBus",
        interface=BUS,
        member="GetNameOwner",
        signature="s",
        body=[f"org.mpris.MediaPlayer2.{player}"],
    )
    reply = await bus.call(name)
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        raise SystemExit(f"{player} is not on the bus: {reply}")
    owner: str = reply.body[0]
    loop = asyncio.get_running_loop()
    _, provider = await loop.create_unix_connection(
        lambda: LeastProvider(bus, owner, player, nsid, answer), tools
    )
    registration = {"tools": [nsid], "lexicons": [lexicon], "maxInFlight": 64}
    provider.write(
        {"jsonrpc": "2.0", "id": 0, "method": "kiki/registerTools", "params": registration}
    )
    answered = await provider.registered
    if "result" not in answered:
        raise SystemExit(f"the broker refused the registration: {answered}")
    print("ready", flush=True)
    # Nothing more comes on stdin: readable means closed.
    loop.add_reader(sys.stdin.fileno(), provider.connection_lost, None)
    await provider.closed
    loop.remove_reader(sys.stdin.fileno())
    provider.close()
    bus.disconnect()


if __name__ == "__main__":
    address, tools, player, nsid = sys.argv[1:5]
    asyncio.run(main(address, tools, player, nsid, json.loads(sys.stdin.readline())))
