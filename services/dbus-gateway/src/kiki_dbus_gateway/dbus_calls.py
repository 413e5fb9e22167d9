"""Calls on the session bus whose answers can be believed.

dbus-daemon delivers a ``METHOD_RETURN`` to its destination whoever sent it, and dbus-fast
takes the first reply whose serial matches: a connection that predicts the gateway's next
serial could answer in the bus daemon's name (``GetConnectionCredentials``: any uid). So every
call here goes to a name whose replies are checked: ``org.freedesktop.DBus`` (the daemon signs
its own replies with that name) or a unique name (a well-known name is resolved first,
:class:`WellKnownName`), and a reply from anyone else is a failure
(:class:`~libkiki.errors.Unavailable`), never an answer.

Errors: a peer that does not answer in time is :class:`~libkiki.errors.Timeout`, one that left
the bus :class:`~libkiki.errors.PeerGone` (the bus says ``NoReply``; a name with no owner says
``ServiceUnknown``/``NameHasNoOwner``), a method it does not have
:class:`~libkiki.errors.Conflict` (``NotSupported``).

On a connection with :class:`Replies` attached (the gateway's main one), a call's reply is
matched to it by serial and sender in the connection's first message handler and its deadline
is a timer on the call's future: no ``asyncio.timeout`` scope, no dbus-fast reply callbacks,
and the connection's other handlers never see the replies. A reply with the right serial from
the wrong connection is passed over, not taken: the call still gets its peer's answer, so a
connection guessing the next serial (serials are sequential) cannot make it fail. Elsewhere
(the monitor's one call, the parts of the gateway tests put on a bus of their own) dbus-fast's
``call`` with a timeout, which takes the first reply with the serial: a forged one there is
refused (:class:`~libkiki.errors.Unavailable`) and the genuine one lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from libkiki.errors import Conflict, KikiError, PeerGone, Timeout, Unavailable

log = logging.getLogger(__name__)

BUS: Final = "org.freedesktop.DBus"
BUS_PATH: Final = "/org/freedesktop/DBus"
GONE_ERRORS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.Disconnected",
    }
)
UNSUPPORTED_ERRORS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.NotSupported",
        "org.freedesktop.DBus.Error.PropertyReadOnly",
    }
)


def expected_sender(message: Message) -> str:
    """Who may answer ``message``: the bus daemon, or the unique name it was sent to."""
    destination = message.destination or ""
    if destination == BUS or destination.startswith(":"):
        return destination
    raise ValueError(f"{destination!r} is not a unique name: its answer could not be checked")


async def bus_call(
    bus: MessageBus,
    message: Message,
    timeout: float,  # noqa: ASYNC109 -- the deadline is the call's, as a peer sees it
    who: str,
) -> list[Any]:
    """``message``'s reply body; typed errors for a peer that fails, leaves or never answers,
    and for a reply that did not come from the connection the call was sent to."""
    expected = expected_sender(message)
    replies = _REPLIES.get(bus)
    try:
        if replies is not None:
            reply = await replies.call(message, timeout, expected)
        else:
            async with asyncio.timeout(timeout):
                reply = await bus.call(message)
    except TimeoutError:
        raise Timeout(
            f"{who} did not answer {message.member} within {timeout:g}s",
            data={"error": "Timeout"},
        ) from None
    except (EOFError, OSError) as exc:
        raise Unavailable(f"the session bus connection failed: {exc}") from None
    if reply is None or not answers(reply, expected):
        raise Unavailable(
            f"an answer to {message.member} came from {getattr(reply, 'sender', None)},"
            f" not {who} ({expected}): refused"
        )
    if reply.message_type == MessageType.ERROR:
        name = reply.error_name or ""
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        if name in GONE_ERRORS:
            raise PeerGone(
                f"{who} left the bus before answering {message.member}", data={"error": "PeerGone"}
            )
        if name in UNSUPPORTED_ERRORS:
            raise Conflict(
                f"{who} cannot {message.member}: {text[:200]}",
                data={"error": "NotSupported", "dbusError": name},
            )
        raise Unavailable(f"{who} answered {message.member} with {name}: {text[:200]}")
    return list(reply.body)


def answers(reply: Message, expected: str) -> bool:
    """Whether ``reply`` may be the answer of a call sent to ``expected``.

    The bus daemon answers for a peer that cannot (``NoReply``, ``ServiceUnknown``): its errors
    are believed from it, and no connection can send in its name (the daemon sets ``sender``).
    """
    return reply.sender == expected or (
        reply.sender == BUS and reply.message_type is MessageType.ERROR
    )


class Replies:
    """The replies to :func:`bus_call`'s calls on one connection, by serial and sender.

    :meth:`start` it before any other message handler is added to the connection: its handler
    takes the replies it waits for and hides them from the rest (dbus-fast's own calls, such as
    ``request_name``, are left to dbus-fast). A reply with a waiting serial that does not come
    from the call's peer (:func:`answers`) is left to the other handlers and the call keeps
    waiting for its peer. A call's deadline is a timer that fails its
    future with ``TimeoutError``; a call on a connection that has ended, or waiting when it
    ends, fails with ``EOFError``, which :func:`bus_call` makes
    :class:`~libkiki.errors.Unavailable`.
    """

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        # serial -> (who may answer it, the caller's future)
        self._waiting: dict[int, tuple[str, asyncio.Future[Message]]] = {}
        self._watch: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Calls sent and not answered yet."""
        return len(self._waiting)

    def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        _REPLIES[self.bus] = self
        self._watch = asyncio.get_running_loop().create_task(self._watch_connection())

    async def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        if _REPLIES.get(self.bus) is self:
            del _REPLIES[self.bus]
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        self._fail_all()

    async def _watch_connection(self) -> None:
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self._fail_all()

    def _fail_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for _, future in waiting.values():
            if not future.done():
                future.set_exception(EOFError("the connection ended"))

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.METHOD_RETURN or msg.message_type is MessageType.ERROR:
            waiting = self._waiting.get(msg.reply_serial)
            if waiting is not None and answers(msg, waiting[0]):
                del self._waiting[msg.reply_serial]
                if not waiting[1].done():
                    waiting[1].set_result(msg)
                return True
        return False

    async def call(
        self,
        message: Message,
        timeout: float,  # noqa: ASYNC109 -- as bus_call's
        sender: str,
    ) -> Message:
        """The reply to ``message`` from ``sender`` (or the bus daemon's error for it)."""
        if not self.bus.connected:
            raise EOFError("the connection has ended")
        loop = asyncio.get_running_loop()
        serial = message.serial = self.bus.next_serial()
        future: asyncio.Future[Message] = loop.create_future()
        timer = loop.call_later(timeout, _expire, future)
        self._waiting[serial] = (sender, future)
        try:
            self.bus.send(message)
            return await future
        finally:
            self._waiting.pop(serial, None)
            timer.cancel()


def _expire(future: asyncio.Future[Message]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


_REPLIES: dict[MessageBus, Replies] = {}


async def bus_method(
    bus: MessageBus,
    member: str,
    signature: str,
    body: list[Any],
    timeout: float,  # noqa: ASYNC109 -- as bus_call's
) -> list[Any]:
    """A method of the bus daemon itself (``AddMatch``, ``GetNameOwner``, …)."""
    message = Message(
        destination=BUS,
        path=BUS_PATH,
        interface=BUS,
        member=member,
        signature=signature,
        body=body,
    )
    return await bus_call(bus, message, timeout, "the bus")


def owner_changes(name: str) -> str:
    """The match rule for ``NameOwnerChanged`` of one well-known name."""
    return f"type='signal',sender='{BUS}',interface='{BUS}',member='NameOwnerChanged',arg0='{name}'"


class WellKnownName:
    """The unique name that owns a well-known name now, followed through ``NameOwnerChanged``
    (only the bus daemon's): calls go to it (their replies checked against it) and the service's
    signals are taken from it alone. A name with no owner is activated once per call
    (``StartServiceByName``, as a call to the well-known name would have); still none, or a
    service the bus could not start (its program failed: logged), is ``missing()``."""

    def __init__(
        self,
        bus: MessageBus,
        name: str,
        timeout: float,
        missing: Callable[[], KikiError],
    ) -> None:
        self.bus = bus
        self.name = name
        self.timeout = timeout
        self.missing = missing
        self.owner: str | None = None
        self._changes = 0  # NameOwnerChanged seen: a lookup answered before one is stale

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        await bus_method(self.bus, "AddMatch", "s", [owner_changes(self.name)], self.timeout)

    def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.sender == BUS
            and msg.member == "NameOwnerChanged"
            and msg.signature == "sss"
            and msg.body[0] == self.name
        ):
            self._changes += 1
            self.owner = msg.body[2] or None
        return False

    async def resolve(self) -> str:
        if self.owner is not None:
            return self.owner
        changes = self._changes
        try:
            owner = await self._lookup()
        except PeerGone:
            try:
                await bus_method(self.bus, "StartServiceByName", "su", [self.name, 0], self.timeout)
                owner = await self._lookup()
            except (PeerGone, Conflict):  # nothing to start (ServiceUnknown), or gone again
                raise self.missing() from None
            except Unavailable as exc:  # the bus tried and failed (Spawn.ChildExited, ...)
                log.warning("the bus could not start %s: %s", self.name, exc.message)
                raise self.missing() from None
        if self._changes == changes:
            self.owner = owner
        # else the name moved while we asked: the signal is newer than the answer
        if self.owner is None:
            raise self.missing()
        return self.owner

    async def _lookup(self) -> str:
        (owner,) = await bus_method(self.bus, "GetNameOwner", "s", [self.name], self.timeout)
        if not isinstance(owner, str) or not owner.startswith(":"):
            raise Unavailable(f"the bus named {owner!r} as the owner of {self.name}")
        return owner

    def forget(self, owner: str) -> None:
        """A call to ``owner`` found it gone: ask again next time."""
        if self.owner == owner:
            self.owner = None
