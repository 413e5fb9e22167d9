"""One live session: its Yjs document, its members and their awareness (sans-I/O).

The y-websocket wire (y-protocols) is read and written with pycrdt's codecs only. A message in,
an :class:`Outcome` out: what goes back to the sender, what is relayed to every other member,
and the document update that must be durable before the relay. A refusal is a
:class:`~libkiki.errors.KikiError` whose ``ws_close_code`` closes that member alone.

A client's update is applied first to a *shadow*: a second document kept equal to the live one.
Only an update the shadow took is applied to the live document, so an update that makes pycrdt
fail or panic (``PanicException`` is a ``BaseException``) never touches it; the shadow is then
rebuilt from the live document. Keeping the shadow costs one more apply per update instead of
a copy of the whole document per update.

The shadow also tells which parts of the document an update touches
(:mod:`libkiki.sync.parts`): the shadow's roots of the parts are observed deeply, and the
update of a member whose role may not write a part it changed is refused with 1008 (the shadow
is rebuilt; the live document never saw it). A member that may write every part (the
``device`` role) pays for none of the part checks. Yjs integrates an item whose dependencies
are missing later, when they arrive (possibly in another member's update), and keeps a deletion
of ids it has not seen until they exist. From any member an update must leave nothing waiting:
every struct it carries within the clocks the shadow holds after it, every deletion among ids
the shadow knows (refused with 1008 otherwise). For a member with a forbidden part, what it
would touch cannot be told yet; for every member, pycrdt's ``get_update()`` omits what waits,
so the snapshot a compaction or a hibernation stores would lose it.

Yjs client ids are bound to their writers, as awareness client ids are: the first member to
write structs under an id owns it, by its token's role and ``sub`` (a stock client reconnecting
with its document writes on under its id), for as long as the session stays in memory. An
update whose structs advance an id someone else owns is refused with 1008: written under the
device link's id at a clock it has not used yet, it would make the link's own next write a
duplicate that every replica drops. An update whose structs are all under its writer's own ids
is told by pycrdt's ``get_update(update, <those ids, every clock>)`` keeping no struct; any
other is judged by the shadow's state vectors before and after it, which name the ids it
advanced (pycrdt's ``get_state(update)`` only names clients whose structs start at clock 0). A
delete set names the ids it deletes, not its writer's: left to the part rules. The ``device``
role is never refused on ownership (it may write every part, and the two ends decide ownership
apart: refused, the link would be refused on every reconnect); it still claims ids nobody
owns. Any other writer owns at most ``MAX_YJS_IDS`` ids (more: 1013).

Some parts are *add-only* for some roles (a ``controller`` adds intents): while such a
member's update is applied, the shadow's map events of those parts are read as they come, and
anything but a new key holding a JSON object whose ``by`` is the member's token ``sub`` (a
change, a deletion, a nested type, another ``by``) refuses the update with 1008, as above.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pycrdt import (
    Array,
    Awareness,
    ContentAttribute,
    Doc,
    IdMap,
    IdSet,
    Map,
    Text,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    get_update,
    handle_sync_message,
    read_message,
)
from pycrdt._sync import Decoder, Encoder

from kiki_sync_relay.limits import Limits
from libkiki.errors import InvalidFrame, LimitExceeded, PermissionDenied, ProtocolError
from libkiki.sync.parts import PARTS, Part, add_only, added_entry_problem, forbidden
from libkiki.sync.tokens import WRITERS

QUERY_AWARENESS = 3
# y-protocols' encoding of an update that carries nothing (no structs, no deletions): what a
# client with nothing new answers to the relay's step 1, observers included.
EMPTY_UPDATE = b"\x00\x00"
MAX_YJS_IDS = 64  # Yjs client ids one writer (not the device) may own; a stock client uses one
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)
_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Member:
    """A client of the session: its role (what it may write), and the awareness states it set.
    ``bounded``: whether it may hold at most ``max_awareness_clients`` awareness states (not the
    link upstream, which speaks for every client of the upstream session)."""

    role: str
    jti: str = ""
    sub: str = ""
    bounded: bool = True
    id: int = field(default_factory=lambda: next(_ids))
    awareness: set[int] = field(default_factory=set)
    forbidden: tuple[Part, ...] = field(init=False)
    add_only: tuple[Part, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.forbidden = forbidden(self.role)
        self.add_only = add_only(self.role)

    @property
    def writer(self) -> tuple[str, str]:
        """Who owns the Yjs client ids this member writes under: its role and token sub."""
        return (self.role, self.sub)

    @property
    def writes(self) -> bool:
        return self.role in WRITERS


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: tuple[bytes, ...] = ()  # to the sender
    relay: bytes | None = None  # to every other member
    durable: bytes | None = None  # the update to persist before ``relay`` goes out


NOTHING = Outcome()


@dataclass(frozen=True, slots=True)
class _Entry:
    """One entry of an awareness update: a client id, its clock, its state (JSON)."""

    client: int
    clock: int
    state: bytes
    present: bool  # whether it sets a state (else it removes one)


def _encode(entries: list[_Entry]) -> bytes:
    """An awareness update (y-protocols' encoding) of ``entries``."""
    encoder = Encoder()
    encoder.write_var_uint(len(entries))
    for entry in entries:
        encoder.write_var_uint(entry.client)
        encoder.write_var_uint(entry.clock)
        encoder.write_var_string(entry.state.decode())
    payload: bytes = encoder.to_bytes()
    return payload


def _apply_guarded(doc: Doc[Any], update: bytes) -> BaseException | None:
    try:
        doc.apply_update(update)
    except _FATAL:
        raise
    except BaseException as exc:  # pycrdt's PanicException too
        return exc
    return None


_TYPES: dict[str, type[Any]] = {"map": Map, "array": Array, "text": Text}
# A v1 update is the structs (a count of clients first), then the delete set.
_NO_STRUCTS = 0
_MARK = [ContentAttribute("d", 1)]
_EVERY_CLOCK = 2**32 - 1  # Yjs clocks are 32-bit


def _fresh_doc(state: bytes | None) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for part in PARTS:
        doc.get(part.root, type=_TYPES[part.kind])
    if state:
        doc.apply_update(state)
    return doc


class _Shadow:
    """The shadow document, and the parts each of its transactions changed: its parts' roots
    are observed deeply for good (subscribing per update costs more than the callback on the
    device's own writes)."""

    def __init__(self, state: bytes) -> None:
        self.doc = _fresh_doc(state)
        self.touched: set[str] = set()
        # While an add-only writer's update is applied: its parts and token sub, and the first
        # entry it may not write (read in the callback: an event is only valid there).
        self._adding: tuple[tuple[Part, ...], str] | None = None
        self.problem: str | None = None
        self._subscriptions = [
            self.doc.get(part.root, type=_TYPES[part.kind]).observe_deep(self._noting(part))
            for part in PARTS
        ]

    def _noting(self, part: Part) -> Callable[..., None]:
        def seen(events: list[Any], *_: object) -> None:
            self.touched.add(part.root)
            if self._adding is not None and self.problem is None and part in self._adding[0]:
                self.problem = _entries_problem(part, events, self._adding[1])

        return seen

    def apply(
        self, update: bytes, adding: tuple[tuple[Part, ...], str] | None = None
    ) -> BaseException | None:
        """Apply ``update``; ``adding``: the parts its writer may only add to, and its sub."""
        self.touched.clear()
        self.problem = None
        self._adding = adding
        try:
            return _apply_guarded(self.doc, update)
        finally:
            self._adding = None


def _entries_problem(part: Part, events: list[Any], sub: str) -> str | None:
    for event in events:
        if getattr(event, "path", None):
            return f"a nested change in the session's {part.root}"
        keys = getattr(event, "keys", None)
        # A change with no key changed went into the map's list half: the part written as a
        # text or an array.
        if not isinstance(keys, dict) or not keys:
            return f"the session's {part.root} written as another type"
        for key, change in keys.items():
            problem = added_entry_problem(
                part, str(key), change.get("action", ""), change.get("newValue"), sub
            )
            if problem is not None:
                return problem
    return None


def _clocks(state_vector: bytes) -> dict[int, int]:
    """A state vector (y-protocols: count, then (client, clock) pairs) as a dict."""
    reader = Decoder(state_vector)
    return {reader.read_var_uint(): reader.read_var_uint() for _ in range(reader.read_var_uint())}


def _all_of(clients: list[int]) -> bytes:
    """A state vector (y-protocols' encoding) holding every clock of ``clients``: what
    ``get_update(update, it)`` leaves out of ``update``."""
    encoder = Encoder()
    encoder.write_var_uint(len(clients))
    for client in clients:
        encoder.write_var_uint(client)
        encoder.write_var_uint(_EVERY_CLOCK)
    state: bytes = encoder.to_bytes()
    return state


def _carries_nothing(update: bytes) -> bool:
    """Whether ``update`` decodes to no structs and no deleted ranges, as Yjs' decodeUpdate
    reads it (what the edge checks): ``00 00``, what a client with nothing new answers to the
    relay's step 1, is one such update; a deletion entry with no ranges, or bytes after the
    delete set, change nothing either."""
    if update == EMPTY_UPDATE:
        return True
    reader = Decoder(update)
    try:
        if reader.read_var_uint() != _NO_STRUCTS:
            return False
        for _ in range(reader.read_var_uint()):
            reader.read_var_uint()  # the client
            if reader.read_var_uint() != 0:  # its ranges
                return False
    except (IndexError, RuntimeError):
        raise InvalidFrame("a malformed update") from None
    return True


def _waiting(doc: Doc[Any], update: bytes, state: bytes) -> bool:
    """Whether ``update``, applied to ``doc`` (now at ``state``), left anything for ``doc`` to
    integrate later: a struct beyond the clocks ``doc`` holds, or a deletion of an id it has
    not seen."""
    rest = get_update(update, state)
    if rest[0] != _NO_STRUCTS:
        return True
    deletions = rest[1:]
    if deletions == b"\x00":  # none
        return False
    clocks = _clocks(state)
    ranges = IdMap.from_set(IdSet.decode(deletions), _MARK)
    return any(span.end > clocks.get(client, 0) for client, span in ranges)


class Session:
    """The live document of session ``name``, loaded from ``updates`` (snapshot first)."""

    def __init__(self, name: str, updates: Iterable[bytes] = (), limits: Limits | None = None):
        self.name = name
        self.limits = limits or Limits()
        self.doc: Doc[Any] = Doc()
        self.size = 0  # bytes of the updates the document was built from: the size bound's measure
        for update in updates:
            self.doc.apply_update(update)
            self.size += len(update)
        self._shadow = _Shadow(self.doc.get_update())
        self.members: dict[int, Member] = {}
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)  # the relay itself is nobody's collaborator
        # awareness client id -> the member that first set it: only that member may change it.
        self.owners: dict[int, int] = {}
        # Yjs client id -> the writer (role, sub) that first wrote structs under it; and per
        # writer, a state vector holding all of its ids (what its own updates leave out).
        self.writers: dict[int, tuple[str, str]] = {}
        self._held: dict[tuple[str, str], bytes] = {}
        self.updates_since_snapshot = 0

    # -- members ----------------------------------------------------------------------------

    def join(self, member: Member) -> tuple[bytes, ...]:
        """Admit ``member``; what it is sent first: sync step 1, then everyone's awareness."""
        if len(self.members) >= self.limits.max_clients:
            raise LimitExceeded(f"session {self.name} has {len(self.members)} clients, its most")
        self.members[member.id] = member
        hello = [create_sync_message(self.doc)]
        if states := self._awareness_of(list(self.awareness.states)):
            hello.append(states)
        return tuple(hello)

    def leave(self, member: Member) -> bytes | None:
        """Remove ``member``; the awareness message telling the others its states are gone."""
        self.members.pop(member.id, None)
        self.owners = {c: m for c, m in self.owners.items() if m != member.id}
        gone = [i for i in member.awareness if i in self.awareness.states]
        member.awareness.clear()
        if not gone:
            return None
        self.awareness.remove_awareness_states(gone, member.id)
        return create_awareness_message(self.awareness.encode_awareness_update(gone))

    def _awareness_of(self, ids: list[int]) -> bytes | None:
        if not ids:
            return None
        return create_awareness_message(self.awareness.encode_awareness_update(ids))

    # -- messages ---------------------------------------------------------------------------

    def receive(self, member: Member, message: bytes) -> Outcome:
        if not message:
            raise InvalidFrame("an empty message")
        kind = message[0]
        if kind == YMessageType.SYNC:
            return self._sync(member, message)
        if kind == YMessageType.AWARENESS:
            return self._awareness(member, message)
        if kind == QUERY_AWARENESS:
            states = self._awareness_of(list(self.awareness.states))
            return Outcome(reply=(states,) if states else ())
        raise ProtocolError(f"unknown message type {kind}")

    def _payload(self, body: bytes) -> bytes:
        try:
            return read_message(body)
        except Exception as exc:
            raise InvalidFrame(f"a malformed message ({type(exc).__name__})") from None

    def _sync(self, member: Member, message: bytes) -> Outcome:
        if len(message) < 2:
            raise InvalidFrame("a sync message without its type")
        sub = message[1]
        if sub == YSyncMessageType.SYNC_STEP1:
            self._payload(message[2:])
            try:
                reply = handle_sync_message(message[1:], self.doc)
            except _FATAL:
                raise
            except BaseException as exc:
                raise InvalidFrame(f"a malformed state vector ({type(exc).__name__})") from None
            return Outcome(reply=(reply,) if reply else ())
        if sub not in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            raise ProtocolError(f"unknown sync message type {sub}")
        update = self._payload(message[2:])
        if _carries_nothing(update):
            return NOTHING
        if not member.writes:
            raise PermissionDenied("an observer may not write to the session")
        return self.apply(update, member)

    def apply(self, update: bytes, member: Member | None = None) -> Outcome:
        """Apply a client's ``update`` (checked on the shadow first) and say what to relay.
        ``member``: its writer (the parts it may not touch, or only add to); none: the device."""
        guarded = member.forbidden if member is not None else ()
        role = member.role if member is not None else "device"
        adding = (member.add_only, member.sub) if member is not None and member.add_only else None
        if self.size + len(update) > self.limits.max_document:
            raise LimitExceeded(
                f"session {self.name}'s document would exceed {self.limits.max_document} bytes"
            )
        failure = self._shadow.apply(update, adding)
        if failure is not None:
            # The shadow may hold part of it, or be unusable after a panic: rebuilt from the
            # live document, which never saw it.
            self._rebuild_shadow()
            raise InvalidFrame(f"an update that does not apply ({type(failure).__name__})")
        if guarded and (touched := [p.root for p in guarded if p.root in self._shadow.touched]):
            self._rebuild_shadow()
            raise PermissionDenied(f"a {role} may not write the session's {touched[0]}")
        if (problem := self._shadow.problem) is not None:
            self._rebuild_shadow()
            raise PermissionDenied(problem)
        # From every role: pycrdt's get_update() leaves out what still waits on a missing
        # dependency, so a snapshot (compaction, hibernation) would lose it for good.
        state = self._shadow.doc.get_state()
        if _waiting(self._shadow.doc, update, state):
            self._rebuild_shadow()
            raise PermissionDenied(
                f"a {role}'s update must not wait on changes the session has not seen"
            )
        writer = member.writer if member is not None else ("device", "")
        held = self._held.get(writer)
        if held is None or get_update(update, held)[0] != _NO_STRUCTS:
            self._claim(writer, _clocks(self.doc.get_state()), _clocks(state))
        self.doc.apply_update(update)
        self.size += len(update)
        self.updates_since_snapshot += 1
        return Outcome(relay=create_update_message(update), durable=update)

    def _claim(
        self, writer: tuple[str, str], before: dict[int, int], after: dict[int, int]
    ) -> None:
        """Make ``writer`` the owner of the ids the shadow's last apply advanced (``before`` and
        ``after``: its clocks), or refuse that apply if one is someone else's."""
        advanced = [c for c, clock in after.items() if clock > before.get(c, 0)]
        # The device role may write every part, and ownership is decided apart at each end
        # (the relay's owners are in memory): refusing the link on ownership could refuse it
        # on every reconnect. It still claims the ids nobody owns.
        device = writer[0] == "device"
        if not device:
            for client in advanced:
                if self.writers.get(client, writer) != writer:
                    self._rebuild_shadow()
                    raise PermissionDenied(f"Yjs client {client} belongs to another member")
        new = [c for c in advanced if c not in self.writers]
        own = [c for c, w in self.writers.items() if w == writer] if new else []
        if new and not device and len(own) + len(new) > MAX_YJS_IDS:
            self._rebuild_shadow()
            raise LimitExceeded(f"a writer may own at most {MAX_YJS_IDS} Yjs client ids")
        for client in new:
            self.writers[client] = writer
        if new or writer not in self._held:
            own = [c for c, w in self.writers.items() if w == writer]
            self._held[writer] = _all_of(own)

    def _rebuild_shadow(self) -> None:
        self._shadow = _Shadow(self.doc.get_update())

    def _awareness(self, member: Member, message: bytes) -> Outcome:
        payload = self._payload(message[1:])
        entries = self._changes(payload)
        # A stock y-websocket client times out the states of others it has not heard from for
        # 30 s and sends that removal too: a removal from anyone but the owner is dropped (not
        # applied, not relayed), so a stock client stays joined when someone's tab sleeps.
        kept = [e for e in entries if e.present or self._owner(e.client, member)]
        if len(kept) < len(entries):
            if not kept:
                return NOTHING
            payload = _encode(kept)
            message = create_awareness_message(payload)
        changes = [(e.client, e.present) for e in kept]
        if not member.writes:
            if not changes:
                return NOTHING
            raise PermissionDenied("an observer may not publish awareness")
        # Checked before anything is applied: a refused message leaves no state behind. A
        # member owns the ids it set (removed ones too) until it leaves; only it may change them.
        owned = {client for client, owner in self.owners.items() if owner == member.id}
        for client, present in changes:
            if not self._owner(client, member):
                raise PermissionDenied(f"awareness client {client} belongs to another member")
            if present:
                owned.add(client)
        if member.bounded and len(owned) > self.limits.max_awareness_clients:
            raise LimitExceeded(
                f"more than {self.limits.max_awareness_clients} awareness states from one client"
            )
        changed: dict[str, list[int]] = {}

        def seen(topic: str, event: tuple[dict[str, Any], Any]) -> None:
            if topic == "update":
                changed.update(event[0])

        subscription = self.awareness.observe(seen)
        try:
            self.awareness.apply_awareness_update(payload, member.id)
        except Exception as exc:
            raise InvalidFrame(f"a malformed awareness update ({type(exc).__name__})") from None
        finally:
            self.awareness.unobserve(subscription)
        for client, _ in changes:
            self.owners.setdefault(client, member.id)
        member.awareness.update(changed.get("added", ()), changed.get("updated", ()))
        member.awareness.difference_update(changed.get("removed", ()))
        return Outcome(relay=message)

    def _owner(self, client: int, member: Member) -> bool:
        """Whether ``member`` may change awareness client ``client``: it owns it, or no one
        does yet (an observer owns nothing)."""
        if not member.writes:
            return False
        return self.owners.get(client, member.id) == member.id

    def _changes(self, payload: bytes) -> list[_Entry]:
        """The entries of an awareness update that y-protocols would apply (with whether each
        sets a state). A stock y-websocket client sends back every awareness change it
        applies, the states the relay told it included (same clocks): those change nothing
        and are left out, so an echo is neither refused nor counted."""
        reader = Decoder(payload)
        clocks = {c: int(m["clock"]) for c, m in self.awareness.meta.items()}
        held = set(self.awareness.states)
        changes: list[_Entry] = []
        try:
            for _ in range(reader.read_var_uint()):
                client, clock = reader.read_var_uint(), reader.read_var_uint()
                state = reader.read_message()
                present = bool(state) and orjson.loads(state or b"null") is not None
                known = clocks.get(client, 0)
                if clock > known or (clock == known and not present and client in held):
                    clocks[client] = clock
                    if present:
                        held.add(client)
                    else:
                        held.discard(client)
                    changes.append(_Entry(client, clock, state or b"null", present))
        except (IndexError, RuntimeError, orjson.JSONDecodeError):
            raise InvalidFrame("a malformed awareness update") from None
        return changes

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole document as one update; what compaction stores in place of the log."""
        state: bytes = self.doc.get_update()
        self.size = len(state)
        self.updates_since_snapshot = 0
        return state
