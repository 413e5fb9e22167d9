"""The remote client's side of a session, sans-I/O: frames in, frames and events out.

:class:`SessionProtocol` holds the client's copy of the session document (a pycrdt ``Doc``) and
its awareness, and speaks y-websocket with pycrdt's own helpers: on opening it queues the token
frame (when the token travels apart from the URL) and its sync step 1; it answers the relay's
step 1 with what the relay lacks, applies step 2s and updates, and takes awareness states.
What it learns comes out as events (:class:`Synced`, :class:`DeviceChanged`,
:class:`ResultChanged`, :class:`PresenceChanged`); what it must send comes out of
:meth:`SessionProtocol.data_to_send`. It never reads a clock or a socket.

The client writes one part only: new entries of ``intents`` (a controller may add keys there
and nothing else). Its awareness state stays unset and unsent until it is given one, since an
observer sending any state is closed by the relay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pycrdt import (
    Awareness,
    Doc,
    Map,
    MapEvent,
    Subscription,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)

from libkiki.errors import Conflict, InvalidFrame, LimitExceeded, ProtocolError

QUERY_AWARENESS: Final = 3  # y-protocols' queryAwareness: answer with the states one holds
# What a client holds of a session at most: the relay's own bound of a document (its
# max_document), and the others' awareness states (256 clients of 16 small states each fit).
DEFAULT_MAX_DOCUMENT: Final = 64 << 20
DEFAULT_MAX_AWARENESS: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class Synced:
    """The relay's step 2 arrived: the document holds everything the relay had."""


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    key: str
    value: Any  # as pycrdt reads it (numbers as floats: see outcomes.plain); None: deleted


@dataclass(frozen=True, slots=True)
class ResultChanged:
    intent_id: str
    result: Any


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """Another client's awareness state came, changed or went."""


SessionEvent = Synced | DeviceChanged | ResultChanged | PresenceChanged


class SessionProtocol:
    """``max_document`` bounds the document (bytes of its encoding) and ``max_awareness`` the
    others' awareness states (bytes of their JSON): a session passing either raises
    :class:`LimitExceeded` from :meth:`receive`, however many frames brought it there."""

    def __init__(
        self,
        doc: Doc[Any] | None = None,
        *,
        max_document: int = DEFAULT_MAX_DOCUMENT,
        max_awareness: int = DEFAULT_MAX_AWARENESS,
    ) -> None:
        self.doc: Doc[Any] = doc or Doc()
        self.max_document = max_document
        self.max_awareness = max_awareness
        # Bytes of sync frames taken since the document was last measured: it grows by at most
        # that much, so it is encoded again (to measure it) only once they could pass the bound.
        self._unmeasured = 0
        self._measured = 0
        self._awareness_sizes: dict[int, int] = {}
        self.device: Map[Any] = self.doc.get("device", type=Map)
        self.intents: Map[Any] = self.doc.get("intents", type=Map)
        self.results: Map[Any] = self.doc.get("results", type=Map)
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)
        self.synced = False
        self._out: list[bytes | str] = []
        self._events: list[SessionEvent] = []
        self._following: Subscription | None = None
        self.results.observe(self._results_changed)

    # -- what goes out ---------------------------------------------------------------------------

    def open(self, token: str | None = None) -> None:
        """Queue what a client sends first: the token frame (when it is not in the URL), then
        its sync step 1."""
        if token is not None:
            self._out.append(json.dumps({"token": token}))
        self._out.append(create_sync_message(self.doc))

    def follow_device(self, follow: bool) -> None:
        """Whether to tell :class:`DeviceChanged` events. pycrdt builds every map event's old
        and new values in Python as it is applied (a whole screen, each time), so a client no
        one reads the changes of does not observe them; ``device`` is read when asked."""
        if follow and self._following is None:
            self._following = self.device.observe(self._device_changed)
        elif not follow and self._following is not None:
            self.device.unobserve(self._following)
            self._following = None

    def data_to_send(self) -> list[bytes | str]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[SessionEvent]:
        events, self._events = self._events, []
        return events

    def add_intent(self, intent: dict[str, Any]) -> None:
        """Write ``intent`` under its id and queue the update that carries it."""
        intent_id = intent["id"]
        if intent_id in self.intents:
            raise Conflict(f"intent {intent_id} is already in the session")
        before = self.doc.get_state()
        self.intents[intent_id] = intent
        self._out.append(create_update_message(self.doc.get_update(before)))

    def set_presence(self, state: dict[str, Any] | None) -> None:
        """Set (None: withdraw) this client's awareness state and queue it."""
        self.awareness.set_local_state(state)
        self._out.append(self._own_awareness())

    def peers(self) -> dict[int, dict[str, Any]]:
        """The other clients' awareness states, by their client id."""
        own = self.awareness.client_id
        return {cid: state for cid, state in self.awareness.states.items() if cid != own}

    # -- what comes in ---------------------------------------------------------------------------

    def receive(self, message: bytes | str) -> None:
        """One frame from the relay. Raises :class:`ProtocolError` or :class:`InvalidFrame` for a
        frame no relay sends; the connection is then unusable."""
        if isinstance(message, str):
            raise ProtocolError("the session sent a text frame")
        if not message:
            raise InvalidFrame("the session sent an empty frame")
        kind = message[0]
        try:
            if kind == YMessageType.SYNC:
                self._sync(message)
                self._bound_document(len(message))
            elif kind == YMessageType.AWARENESS:
                before = dict(self.awareness.states)
                self.awareness.apply_awareness_update(read_message(message[1:]), "remote")
                if self.awareness.states != before:
                    self._bound_awareness(before)
                    self._events.append(PresenceChanged())
            elif kind == QUERY_AWARENESS and self.awareness.get_local_state() is not None:
                self._out.append(self._own_awareness())
            # Other message types (y-protocols' auth, custom ones) are not for this client.
        except (ValueError, IndexError, UnicodeDecodeError, AssertionError, RuntimeError) as exc:
            raise InvalidFrame(f"the session sent a malformed message: {exc}") from None
        except BaseException as exc:
            # pycrdt's PanicException derives from BaseException: an update its Rust side
            # cannot apply. Anything else of that kind is not ours to catch.
            if type(exc).__name__ != "PanicException":
                raise
            raise InvalidFrame("the session sent an update that does not apply") from None

    def _bound_document(self, received: int) -> None:
        self._unmeasured += received
        if self._measured + self._unmeasured <= self.max_document:
            return
        self._measured, self._unmeasured = len(self.doc.get_update()), 0
        if self._measured > self.max_document:
            raise LimitExceeded(
                f"the session's document passed {self.max_document} bytes ({self._measured})"
            )

    def _bound_awareness(self, before: dict[int, Any]) -> None:
        states = self.awareness.states
        sizes = self._awareness_sizes
        for cid in before.keys() - states.keys():
            sizes.pop(cid, None)
        for cid, state in states.items():
            if cid != self.awareness.client_id and state is not before.get(cid):
                sizes[cid] = len(json.dumps(state))
        if (total := sum(sizes.values())) > self.max_awareness:
            raise LimitExceeded(
                f"the others' awareness states passed {self.max_awareness} bytes ({total})"
            )

    def _sync(self, message: bytes) -> None:
        reply = handle_sync_message(message[1:], self.doc)
        if reply is not None:
            self._out.append(reply)
        if message[1] == YSyncMessageType.SYNC_STEP2 and not self.synced:
            self.synced = True
            self._events.append(Synced())

    def _own_awareness(self) -> bytes:
        update = self.awareness.encode_awareness_update([self.awareness.client_id])
        message: bytes = create_awareness_message(update)
        return message

    def _device_changed(self, event: MapEvent) -> None:
        for key, change in _keys(event).items():
            self._events.append(DeviceChanged(str(key), change.get("newValue")))

    def _results_changed(self, event: MapEvent) -> None:
        for key, change in _keys(event).items():
            if change.get("action") != "delete":
                self._events.append(ResultChanged(str(key), change.get("newValue")))


def _keys(event: MapEvent) -> dict[str, dict[str, Any]]:
    """A map event's changed keys, each ``{"action", "oldValue"?, "newValue"?}`` (pycrdt sets
    the slot without declaring it)."""
    keys: dict[str, dict[str, Any]] = event.keys  # type: ignore[attr-defined]
    return keys
