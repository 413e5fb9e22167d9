"""asyncio glue for MPRIS: following players on the session bus and calling them.

The watcher adds three match rules (``NameOwnerChanged`` for ``org.mpris.MediaPlayer2.*``,
``PropertiesChanged`` and ``Seeked`` at ``/org/mpris/MediaPlayer2``) and reads those signals as
the bus delivers them; the state lives in :class:`~kiki_dbus_gateway.media.Players`. A player is
added when the bus says its name got an owner and removed when it says the owner left, in the
order the bus tells (in the signal handler itself), and asked ``GetAll`` in the background: one
discovery per name, cancelled when the name goes, its answer dropped if the name has another
owner by then (and again for an interface whose properties it invalidates); after that the
gateway only listens.

Calls go to the player's unique name (a name taken over by another process meanwhile never
gets a call meant for the first; a reply from anyone else is refused, see
:mod:`~kiki_dbus_gateway.dbus_calls`) with a deadline: a player that does not answer in
``call_timeout`` is :class:`~libkiki.errors.Timeout`, one that leaves the bus before answering
is :class:`~libkiki.errors.PeerGone` (the bus says ``NoReply``; a name with no owner any more
says ``ServiceUnknown``). Nothing a player sends can raise out of the signal handler: a body of
the wrong shape is counted (``bad_signals``) and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from kiki_dbus_gateway.dbus_calls import BUS, bus_call, bus_method
from kiki_dbus_gateway.media import (
    MPRIS_PATH,
    MPRIS_PREFIX,
    PLAYER_IFACE,
    ROOT_IFACE,
    Player,
    Players,
    is_player_name,
)
from libkiki.errors import KikiError

log = logging.getLogger(__name__)

PROPS: Final = "org.freedesktop.DBus.Properties"
MATCHES: Final = (
    f"type='signal',sender='{BUS}',interface='{BUS}',member='NameOwnerChanged',"
    "arg0namespace='org.mpris.MediaPlayer2'",
    f"type='signal',interface='{PROPS}',member='PropertiesChanged',path='{MPRIS_PATH}'",
    f"type='signal',interface='{PLAYER_IFACE}',member='Seeked',path='{MPRIS_PATH}'",
)


class MprisWatcher:
    def __init__(
        self, bus: MessageBus, players: Players, call_timeout: float, counters: Counter[str]
    ) -> None:
        self.bus = bus
        self.players = players
        self.call_timeout = call_timeout
        self.counters = counters
        self._tasks: set[asyncio.Task[None]] = set()
        self._discovering: dict[str, asyncio.Task[None]] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._held: dict[tuple[str, str], tuple[Player, dict[str, Any]]] = {}
        self._flushing = False

    async def start(self) -> None:
        """Listen first, then list: a player appearing in between is seen either way."""
        self.bus.add_message_handler(self._on_message)
        for rule in MATCHES:
            await bus_method(self.bus, "AddMatch", "s", [rule], self.call_timeout)
        (names,) = await bus_method(self.bus, "ListNames", "", [], self.call_timeout)
        for name in sorted(n for n in names if isinstance(n, str) and is_player_name(n)):
            try:
                (owner,) = await bus_method(
                    self.bus, "GetNameOwner", "s", [name], self.call_timeout
                )
            except KikiError:
                continue  # gone already
            suffix = name[len(MPRIS_PREFIX) :]
            if suffix not in self.players.by_name and isinstance(owner, str):
                self._appeared(suffix, owner)  # (a NameOwnerChanged meanwhile has the last word)

    async def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _appeared(self, name: str, owner: str) -> None:
        """Add the player now, in the order the bus told, and ask its state in the background:
        one discovery per name, cancelled when the name goes (a name taken and released in a
        loop leaves neither a ghost player nor a task per turn)."""
        self._gone(name)
        player = self.players.add(name, owner)
        if player is None:
            log.warning(
                "ignoring the player %s: %d players already", name, self.players.max_players
            )
            return
        self._discovering[name] = self._spawn(self._discover(player))

    def _gone(self, name: str) -> None:
        task = self._discovering.pop(name, None)
        if task is not None:
            task.cancel()
        self.players.remove(name)

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            return False
        try:
            self._on_signal(msg)
        except (TypeError, ValueError, IndexError, KeyError):
            self.counters["bad_signals"] += 1
        return False  # other handlers (dbus-fast's own name cache) see it too

    def _on_signal(self, msg: Message) -> None:
        member, body = msg.member, msg.body
        if member == "NameOwnerChanged" and msg.sender == BUS:
            name, old, new = body
            if not (isinstance(name, str) and is_player_name(name)):
                return
            suffix = name[len(MPRIS_PREFIX) :]
            if new:
                self._appeared(suffix, new)
            elif old:
                self._gone(suffix)
            return
        if msg.path != MPRIS_PATH or not msg.sender:
            return
        owned = self.players.owned_by(msg.sender)
        if not owned:
            return
        if member == "PropertiesChanged" and msg.interface == PROPS:
            iface, changed, invalidated = body
            if iface not in (ROOT_IFACE, PLAYER_IFACE) or not isinstance(changed, dict):
                return
            self.counters["properties_changed"] += 1
            for player in owned:
                self._merge(player, changed)
                if invalidated:
                    self._refresh(player, iface)
        elif member == "Seeked" and msg.interface == PLAYER_IFACE:
            self._flush()  # what came before the jump, first
            now = time.monotonic()
            for player in owned:
                self.players.seeked(player, body[0], now)

    def _merge(self, player: Player, changed: dict[str, Any]) -> None:
        """Hold a player's changes until the loop's next turn: the signals read off the socket
        together are applied once, the last value of each property winning (a player sending
        thousands a second costs a dict update each, not a state update)."""
        key = (player.name, player.owner)
        held = self._held.get(key)
        if held is None:
            self._held[key] = (player, dict(changed))
        else:
            held[1].update(changed)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        held, self._held = self._held, {}
        self._flushing = False
        now = time.monotonic()
        for player, changed in held.values():
            self.players.update(player, changed, now)

    def _refresh(self, player: Player, iface: str) -> None:
        # One GetAll in flight per player and interface, however often it invalidates.
        key = (player.name, iface)
        if key not in self._refreshing:
            self._refreshing.add(key)
            self._spawn(self._get_all(player, iface, key))

    async def _get_all(self, player: Player, iface: str, key: tuple[str, str]) -> None:
        try:
            body = await self.call(player, PROPS, "GetAll", "s", [iface])
            if isinstance(body[0], dict):
                self.players.update(player, body[0], time.monotonic())
        except KikiError as exc:
            log.debug("GetAll %s of %s failed: %s", iface, player.name, exc)
        finally:
            self._refreshing.discard(key)

    async def _discover(self, player: Player) -> None:
        try:
            results = await asyncio.gather(
                self.call(player, PROPS, "GetAll", "s", [ROOT_IFACE]),
                self.call(player, PROPS, "GetAll", "s", [PLAYER_IFACE]),
                return_exceptions=True,
            )
        finally:
            if self._discovering.get(player.name) is asyncio.current_task():
                del self._discovering[player.name]
        if self.players.by_name.get(player.name) is not player:
            return  # the name went, or has another owner, since: not this one's state
        now = time.monotonic()
        for result in results:
            if isinstance(result, list) and result and isinstance(result[0], dict):
                self.players.update(player, result[0], now)
            else:
                # Listed all the same, with what it did say: its calls will time out or fail
                # on their own, typed, and a later PropertiesChanged fills it in.
                self.counters["discovery_errors"] += 1
        self.players.announce(player.name)

    async def call(
        self, player: Player, interface: str, member: str, signature: str, body: list[Any]
    ) -> list[Any]:
        message = Message(
            destination=player.owner,
            path=MPRIS_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        return await bus_call(self.bus, message, self.call_timeout, f"the player {player.name}")

    async def set_property(self, player: Player, name: str, value: Variant) -> None:
        await self.call(player, PROPS, "Set", "ssv", [PLAYER_IFACE, name, value])
