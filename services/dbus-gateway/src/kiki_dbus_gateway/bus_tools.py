"""``dev.kiki.Tools1``: the broker's tools for D-Bus callers (desktop apps, shell scripts).

On the gateway's object (``/dev/kiki/Gateway``), introspectable::

    ListTools() -> s          the tools the broker lets this caller call, as a JSON array
                              (MCP tools/list entries, listed on its behalf)
    Call(s nsid, s json_args) -> s    the tool's structured output, as JSON

The caller is identified by the bus, never by what it says: the gateway asks the bus daemon
(``GetConnectionCredentials`` of the message's sender) for its ``UnixUserID`` and
``ProcessID`` and makes the call on the broker *on behalf of* ``dbus:uid:<uid>`` (session
``pid:<pid>``), as a delegate (the broker's ``_meta["dev.kiki/onBehalfOf"]``). The broker's
policy then decides for the principal ``remote:dbus:uid:<uid>`` and its audit line names both
the gateway and that caller; a broker whose policy does not trust the gateway as a delegate
refuses every such call (``dev.kiki.Error.AccessDenied``). The bus daemon's answer is believed
only from the bus daemon (:mod:`kiki_dbus_gateway.dbus_calls`), and a caller of another uid
than the gateway's own is refused here (a user's gateway serves that user).

Errors are D-Bus errors named from libkiki's tree (``KikiError.dbus_name``): a tool that failed
is ``dev.kiki.Error.Tool`` (its message; the lexicon's error name, when it gave one, after the
message as a second string: ``NoPlayer``), a refusal ``dev.kiki.Error.AccessDenied``, bad JSON
``dev.kiki.Error.InvalidArgs``, a broker that is not there ``dev.kiki.Error.Unavailable``.

The methods are handled as raw messages (dbus-fast's exported interface would not tell the
method who is calling); the exported :class:`Tools1Interface` is there for introspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Final

import orjson
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

from kiki_dbus_gateway.dbus_calls import bus_method
from libkiki.errors import (
    InvalidParams,
    KikiError,
    LimitExceeded,
    PeerGone,
    PermissionDenied,
    ToolError,
    Unavailable,
)
from libkiki.tools import ToolClient

log = logging.getLogger(__name__)

INTERFACE: Final = "dev.kiki.Tools1"
MAX_NSID: Final = 317  # an NSID's longest form
# The broker's own call_timeout ends a slow tool first; a D-Bus caller waits 25 s by default.
BROKER_TIMEOUT: Final = 120.0


class Tools1Interface(ServiceInterface):
    """What introspection shows; the calls themselves never reach these methods."""

    def __init__(self) -> None:
        super().__init__(INTERFACE)

    @method(name="ListTools")
    def list_tools(self) -> "s":  # type: ignore[name-defined]  # noqa: F821, UP037
        raise Unavailable("handled by the gateway's message handler")

    @method(name="Call")
    def call(self, nsid: "s", json_args: "s") -> "s":  # type: ignore[name-defined]  # noqa: F821, UP037
        raise Unavailable("handled by the gateway's message handler")


def caller_of(credentials: dict[str, Any], own_uid: int) -> dict[str, str]:
    """``onBehalfOf`` for a D-Bus caller, from its ``GetConnectionCredentials`` answer. A
    user's gateway serves that user: a caller running as another uid (a bus that lets other
    users connect) is refused, whatever the broker's policy would say of it."""
    uid = credentials.get("UnixUserID")
    pid = credentials.get("ProcessID")
    uid_value = uid.value if uid is not None and uid.signature == "u" else None
    if not isinstance(uid_value, int):
        raise Unavailable("the bus did not say who is calling")
    if uid_value != own_uid:
        raise PermissionDenied(
            f"this gateway serves the D-Bus callers of uid {own_uid}, not uid {uid_value}"
        )
    caller = {"subject": f"dbus:uid:{uid_value}"}
    if pid is not None and pid.signature == "u":
        caller["session"] = f"pid:{pid.value}"
    return caller


def parse_args(nsid: Any, json_args: Any) -> dict[str, Any]:
    if not isinstance(nsid, str) or not 0 < len(nsid) <= MAX_NSID:
        raise InvalidParams("the first argument is a tool's NSID")
    try:
        args = orjson.loads(json_args) if json_args else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidParams(f"json_args is not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise InvalidParams("json_args is a JSON object")
    return args


class BusTools:
    """Serves ``dev.kiki.Tools1`` at ``path`` on ``bus`` through one broker connection."""

    def __init__(
        self,
        bus: MessageBus,
        path: str,
        broker: Path,
        *,
        max_in_flight: int,
        timeout: float,
        counters: Counter[str],
    ) -> None:
        self.bus = bus
        self.path = path
        self.broker = broker
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.counters = counters
        self._client: ToolClient | None = None
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.bus.export(self.path, Tools1Interface())
        self.bus.add_message_handler(self._on_message)

    async def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop()

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type != MessageType.METHOD_CALL
            or msg.interface != INTERFACE
            or msg.path != self.path
            or msg.member not in ("ListTools", "Call")
        ):
            return False
        if len(self._tasks) >= self.max_in_flight:
            self.counters["bus_calls_refused"] += 1
            error = LimitExceeded(f"{self.max_in_flight} D-Bus calls are in flight; try again")
            self.bus.send(Message.new_error(msg, error.dbus_name, error.message))
            return True
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, msg: Message) -> None:
        self.counters["bus_calls"] += 1
        try:
            if msg.member == "ListTools":
                caller = await self._caller(msg)
                # Listed on its behalf, as its calls are made: what the broker lets *it* call.
                out: Any = await self._with_client(lambda c: c.list(on_behalf_of=caller))
            else:
                if msg.signature != "ss":
                    raise InvalidParams("Call takes (ss): a tool's NSID and its arguments as JSON")
                args = parse_args(msg.body[0], msg.body[1])
                caller = await self._caller(msg)
                out = await self._with_client(
                    lambda c: c.call(msg.body[0], args, on_behalf_of=caller)
                )
            reply = Message.new_method_return(msg, "s", [orjson.dumps(out).decode()])
        except KikiError as exc:
            self.counters["bus_call_errors"] += 1
            reply = error_reply(msg, exc)
        except Exception:
            log.exception("dev.kiki.Tools1.%s failed", msg.member)
            reply = Message.new_error(msg, KikiError.dbus_name, "Internal error")
        with contextlib.suppress(Exception):
            await self.bus.send(reply)

    async def _caller(self, msg: Message) -> dict[str, str]:
        """Who sent ``msg``, as the bus daemon says (its answer believed from it alone)."""
        (credentials,) = await bus_method(
            self.bus, "GetConnectionCredentials", "s", [msg.sender], self.timeout
        )
        return caller_of(credentials, os.getuid())

    async def _with_client(self, use: Any) -> Any:
        """``use(client)`` on the broker connection, opened (again) as needed: a broker that
        restarted is reached on the next call."""
        client = await self._connect()
        try:
            return await use(client)
        except (PeerGone, OSError, ConnectionError):
            await self._drop()
            raise Unavailable("the tool broker went away during the call") from None

    async def _connect(self) -> ToolClient:
        async with self._connecting:
            if self._client is None:
                client = ToolClient(self.broker, timeout=BROKER_TIMEOUT)
                try:
                    await client.__aenter__()
                except (KikiError, OSError) as exc:
                    raise Unavailable(f"the tool broker is not reachable: {exc}") from None
                self._client = client
            return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


def error_reply(msg: Message, exc: KikiError) -> Message:
    name = exc.data.get("error") if isinstance(exc.data, dict) else None
    if isinstance(exc, ToolError) and isinstance(name, str):
        return Message(
            message_type=MessageType.ERROR,
            reply_serial=msg.serial,
            destination=msg.sender,
            error_name=exc.dbus_name,
            signature="ss",
            body=[exc.message, name],
        )
    return Message.new_error(msg, exc.dbus_name, exc.message)
