"""The sans-I/O JSON-RPC 2.0 core: lines in, events and bytes out. No event loop, clock or os.

:class:`RpcCore` holds the state of one connection, in both directions:

* incoming -- :meth:`RpcCore.receive` parses one line (or an
  :class:`~libkiki.framing.Oversized` marker) and returns events: :class:`Incoming` for each
  request or notification to run, :class:`Send` for errors the core answers by itself (parse
  errors, invalid requests, limits), :class:`CancelRequested`, :class:`Dropped`. The caller runs
  each ``Incoming`` and hands its response back to :meth:`RpcCore.complete`, which returns the
  bytes to send -- for a batch, the whole array once its last entry is done -- and calls
  :meth:`RpcCore.release` once they are written.
* outgoing -- :meth:`RpcCore.request`, :meth:`RpcCore.notification` and :meth:`RpcCore.batch`
  build the bytes and track pending ids; responses arrive as :class:`ResponseReceived` (or
  :class:`UnmatchedResponse` for ids that are not, or no longer, pending).

Spec choices, for the record: an invalid request is answered even without an ``id`` (it is not
a valid notification), echoing its ``id`` when that member is itself valid and ``null``
otherwise; ``params`` that is neither array nor object makes the request invalid (-32600, the
spec says params MUST be structured); blank lines are ignored; ``_meta`` (MCP) is taken out of
named params and handed over separately.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from libkiki.errors import (
    InvalidRequest,
    KikiError,
    LimitExceeded,
    ParseError,
    ProtocolError,
    Unavailable,
    error_for_code,
)
from libkiki.framing import DEFAULT_MAX_LINE, Oversized
from libkiki.rpc.messages import (
    CANCELLED,
    PROGRESS,
    Call,
    CancelRequested,
    Dropped,
    Event,
    Incoming,
    Params,
    ProgressReceived,
    RequestId,
    ResponseReceived,
    Send,
    UnmatchedResponse,
    error_line,
    error_response,
    request_problem,
    valid_id,
)

__all__ = ["RpcCore"]

# Ids of requests we gave up on (timeout, cancellation) are remembered this long so that their
# late answers are recognised as expected rather than reported as strays.
_ABANDONED_MEMORY = 1024


@dataclass(slots=True, eq=False)
class _Batch:
    parts: list[bytes] = field(default_factory=list)
    remaining: int = 0


@dataclass(slots=True, eq=False)
class _Slot:
    id: RequestId
    notification: bool
    batch: _Batch | None
    cancelled: bool = False
    done: bool = False


class RpcCore:
    """State of one JSON-RPC connection. Every method is synchronous and cannot block."""

    def __init__(
        self,
        *,
        max_in_flight: int = 64,
        counters: Counter[str] | None = None,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.max_in_flight = max_in_flight
        # Nothing longer is sent: the peer, with the same default, would drop it unanswered.
        self.max_line = max_line
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._slots: dict[int, _Slot] = {}
        self._notes = 0  # of _slots, those of notifications: they have a limit of their own
        self._by_id: dict[str | int | float, int] = {}
        self._next_slot = 0
        self._draining = False
        self._next_id = 0
        self._pending: dict[int, str] = {}
        self._progress: set[int] = set()
        self._abandoned: dict[int, None] = {}  # insertion-ordered, oldest evicted first

    # -- incoming ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Entries started and not yet released (an answer being written still counts)."""
        return len(self._slots)

    def start_draining(self) -> None:
        """From now on new requests are answered Unavailable; responses are still accepted."""
        self._draining = True

    def receive(self, line: bytes | Oversized) -> list[Event]:
        """Process one line of input; never raises for anything the peer can send."""
        if isinstance(line, Oversized):
            return [self._error_send(line.error, None)]
        if not line or line.isspace():  # blank: ignored (isspace makes no copy)
            return []
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return [self._error_send(ParseError(), None)]
        events: list[Event] = []
        if not isinstance(obj, list):
            part = self._entry(obj, None, events)
            if part is not None:
                events.append(Send(part + b"\n"))
            return events
        if not obj:
            return [self._error_send(InvalidRequest(data="empty batch"), None)]
        if len(obj) > 2 * self.max_in_flight:
            # More entries than could ever run at once (requests and notifications each have
            # max_in_flight): refused whole. Each request in it (with an id that is not null)
            # is answered, so that the peer can tell which; entries that are not requests are
            # not (a short line of junk must not draw a huge answer). If none is a request, or
            # their answers would not fit in a line, one error with id null answers the line.
            limit = 2 * self.max_in_flight
            refusal = LimitExceeded(
                f"a batch of {len(obj)} entries is over the limit of {limit}",
                data={"limit": limit},
            )
            error = refusal.to_jsonrpc()
            parts: list[bytes] = []
            size = 1
            for entry in obj:
                if not (
                    isinstance(entry, dict)
                    and isinstance(entry.get("method"), str)
                    and entry.get("id") is not None
                    and valid_id(entry["id"])
                ):
                    continue
                parts.append(orjson.dumps(error_response(entry["id"], error)))
                size += len(parts[-1]) + 1
                if size > self.max_line:  # they would not fit in a line: one error says why
                    parts.clear()
                    break
            if not parts:
                return [self._error_send(refusal, None)]
            self.counters["errors"] += len(parts)
            return [Send(_array(parts))]
        batch = _Batch()
        for entry in obj:
            part = self._entry(entry, batch, events)
            if part is not None:
                batch.parts.append(part)
        if batch.remaining == 0 and batch.parts:
            events.append(Send(self._batch_answer(batch.parts)))
        return events

    def complete(self, slot: int, response: dict[str, Any] | None) -> bytes | None:
        """Record the end of ``slot``'s handler; return the bytes to send now, if any.

        ``response`` is None when the handler was cancelled; a response to a request the peer
        cancelled, or to a notification, is discarded. The slot stays in flight until
        :meth:`release`, so that answers a peer does not read count against its limit.
        """
        entry = self._slots.get(slot)
        if entry is None or entry.done:
            return None
        entry.done = True
        if entry.id is not None and not entry.notification:
            self._by_id.pop(entry.id, None)
        if entry.notification:
            return None
        part = None
        if response is not None and not entry.cancelled:
            part = orjson.dumps(response)
            if len(part) > self.max_line:
                # Sent, it would be dropped by a peer with the same limit, which would then
                # wait for an answer that never comes: it gets this error instead.
                error = LimitExceeded(
                    f"the answer of {len(part)} bytes is over the line limit of "
                    f"{self.max_line} bytes",
                    data={"limit": self.max_line, "size": len(part)},
                )
                response = error_response(entry.id, error.to_jsonrpc())
                part = orjson.dumps(response)
            if "error" in response:
                self.counters["errors"] += 1
        batch = entry.batch
        if batch is None:
            return None if part is None else part + b"\n"
        if part is not None:
            batch.parts.append(part)
        batch.remaining -= 1
        return self._batch_answer(batch.parts) if batch.remaining == 0 and batch.parts else None

    def _batch_answer(self, parts: list[bytes]) -> bytes:
        """The batch's answer array; over the line limit, its largest answers are replaced by
        the error an answer over the limit gets on its own, until it fits (if even that does
        not fit, one error with id null answers the line)."""
        data = _array(parts)
        if len(data) - 1 <= self.max_line:
            return data
        for i in sorted(range(len(parts)), key=lambda i: len(parts[i]), reverse=True):
            size = len(parts[i])
            error = LimitExceeded(
                f"the batch's answer of {len(data) - 1} bytes is over the line limit of "
                f"{self.max_line} bytes",
                data={"limit": self.max_line, "size": size},
            )
            rid = orjson.loads(parts[i]).get("id")
            smaller = orjson.dumps(error_response(rid, error.to_jsonrpc()))
            if len(smaller) >= size:
                break  # the rest are smaller still: nothing more to gain
            parts[i] = smaller
            self.counters["errors"] += 1
            data = _array(parts)
            if len(data) - 1 <= self.max_line:
                return data
        # Not even the errors fit (long ids): one error for the whole line, which the peer can
        # at least read.
        error = LimitExceeded(
            f"the batch's answer of {len(data) - 1} bytes is over the line limit of "
            f"{self.max_line} bytes",
            data={"limit": self.max_line},
        )
        return error_line(error, None)

    def release(self, slot: int) -> None:
        """``slot``'s answer is written (or abandoned): it no longer counts as in flight."""
        entry = self._slots.pop(slot, None)
        if entry is not None and entry.notification:
            self._notes -= 1

    def _error_send(self, error: KikiError, id: RequestId) -> Send:
        self.counters["errors"] += 1
        return Send(error_line(error, id))

    def _error_part(self, error: KikiError, id: RequestId) -> bytes:
        self.counters["errors"] += 1
        return orjson.dumps(error_response(id, error.to_jsonrpc()))

    def _entry(self, obj: Any, batch: _Batch | None, events: list[Event]) -> bytes | None:
        """Classify one message (or batch entry); return an error to answer it with, if any."""
        if not isinstance(obj, dict):
            return self._error_part(InvalidRequest(data="not an object"), None)
        if "method" not in obj:
            if "id" in obj and ("result" in obj or "error" in obj):
                events.append(self._response(obj))
                return None
            return self._error_part(InvalidRequest(data="neither a request nor a response"), None)
        problem = request_problem(obj)
        rid = obj.get("id")
        if problem is not None:
            return self._error_part(InvalidRequest(data=problem), rid if valid_id(rid) else None)
        method: str = obj["method"]
        notification = "id" not in obj
        if notification:
            self.counters["notifications"] += 1
            if method == CANCELLED:
                self._cancel(obj.get("params"), events)
                return None
            if method == PROGRESS and (event := self._progress_event(obj.get("params"))):
                events.append(event)
                return None
        else:
            self.counters["requests"] += 1
        refusal: KikiError | None = None
        if self._draining:
            refusal = Unavailable("the connection is closing")
        # Requests and notifications are counted apart: a peer's requests are never refused
        # because of the notifications it sent before them, which it cannot see finish.
        elif (
            self._notes if notification else len(self._slots) - self._notes
        ) >= self.max_in_flight:
            kind = "notifications" if notification else "requests"
            refusal = LimitExceeded(
                f"more than {self.max_in_flight} {kind} in flight on this connection",
                data={"limit": self.max_in_flight},
            )
        elif rid is not None and rid in self._by_id:
            refusal = InvalidRequest(data="the id is already used by a request in flight")
        if refusal is not None:
            if notification:
                events.append(Dropped(method, refusal.message))
                return None
            return self._error_part(refusal, rid)
        meta = None
        params = obj.get("params")
        if isinstance(params, dict) and "_meta" in params:
            # Taken out of the params in place: they were parsed from this line (or batch
            # entry) alone, and nothing reads them but the handler, which never sees _meta.
            raw_meta = params.pop("_meta")
            meta = raw_meta if isinstance(raw_meta, dict) else None
        slot = self._next_slot = self._next_slot + 1
        self._slots[slot] = _Slot(rid, notification, None if notification else batch)
        if notification:
            self._notes += 1
        else:
            if rid is not None:
                self._by_id[rid] = slot
            if batch is not None:
                batch.remaining += 1
        events.append(Incoming(slot, rid, method, obj, notification, meta))
        return None

    def _cancel(self, params: object, events: list[Event]) -> None:
        # MCP: a cancellation for an unknown or finished request is silently ignored.
        if not isinstance(params, dict):
            return
        rid = params.get("requestId")
        if rid is None or not valid_id(rid) or (slot := self._by_id.get(rid)) is None:
            return
        entry = self._slots[slot]
        if entry.cancelled:
            return
        entry.cancelled = True
        reason = params.get("reason")
        events.append(CancelRequested(slot, rid, reason if isinstance(reason, str) else None))

    def _progress_event(self, params: object) -> ProgressReceived | None:
        if not isinstance(params, dict):
            return None
        token = params.get("progressToken")
        if isinstance(token, int) and not isinstance(token, bool) and token in self._progress:
            return ProgressReceived(token, params)
        return None

    # -- outgoing ---------------------------------------------------------------------------

    @property
    def outgoing(self) -> int:
        """Our requests still waiting for an answer."""
        return len(self._pending)

    def request(
        self, method: str, params: Params | None = None, *, progress: bool = False
    ) -> tuple[int, bytes]:
        """Build a request; with ``progress`` its id is also sent as ``_meta.progressToken``."""
        rid = self._next_id + 1
        message = self._message(method, params, rid, progress)
        data = self._sized(orjson.dumps(message) + b"\n")  # may raise for unserialisable params
        self._next_id = rid
        self._pending[rid] = method
        if progress:
            self._progress.add(rid)
        return rid, data

    def notification(self, method: str, params: Params | None = None) -> bytes:
        return self._sized(orjson.dumps(self._message(method, params, None, False)) + b"\n")

    def batch(self, calls: list[Call]) -> tuple[list[int | None], bytes]:
        """Build a batch; the ids list has None in the place of each notification."""
        if not calls:
            raise ValueError("a batch needs at least one call")
        ids: list[int | None] = []
        messages = []
        rid = self._next_id
        for call in calls:
            this = None if call.notification else (rid := rid + 1)
            ids.append(this)
            messages.append(self._message(call.method, call.params, this, False))
        data = self._sized(orjson.dumps(messages) + b"\n")
        self._next_id = rid
        for this, call in zip(ids, calls, strict=True):
            if this is not None:
                self._pending[this] = call.method
        return ids, data

    def _sized(self, data: bytes) -> bytes:
        if len(data) - 1 > self.max_line:
            raise LimitExceeded(
                f"a message of {len(data) - 1} bytes is over the line limit of "
                f"{self.max_line} bytes",
                data={"limit": self.max_line, "size": len(data) - 1},
            )
        return data

    def abandon(self, rid: int) -> bool:
        """Stop waiting for ``rid`` (timeout, cancellation). False if it was not pending."""
        self._progress.discard(rid)
        if self._pending.pop(rid, None) is None:
            return False
        self._abandoned[rid] = None
        if len(self._abandoned) > _ABANDONED_MEMORY:
            del self._abandoned[next(iter(self._abandoned))]
        return True

    def abandon_all(self) -> list[int]:
        """The connection is gone: forget every pending request and return their ids."""
        ids = list(self._pending)
        self._pending.clear()
        self._progress.clear()
        return ids

    @staticmethod
    def _message(
        method: str, params: Params | None, rid: int | None, progress: bool
    ) -> dict[str, Any]:
        if not isinstance(method, str):
            raise TypeError("method must be a string")
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if progress:
            if not isinstance(params, dict | None):
                raise TypeError("progress needs named params (a dict) to carry _meta")
            params = dict(params or {})
            meta = params.get("_meta")
            params["_meta"] = {**(meta if isinstance(meta, dict) else {}), "progressToken": rid}
        if params is not None:
            if not isinstance(params, dict | list):
                raise TypeError("params must be a dict, a list or None")
            message["params"] = params
        if rid is not None:
            message["id"] = rid
        return message

    def _response(self, obj: dict[str, Any]) -> ResponseReceived | UnmatchedResponse:
        rid = obj["id"]
        error: KikiError | None = None
        if obj.get("jsonrpc") != "2.0" or ("result" in obj) == ("error" in obj):
            error = ProtocolError("malformed response from the peer")
        elif "error" in obj:
            member = obj["error"]
            if (
                isinstance(member, dict)
                and isinstance(member.get("code"), int)
                and not isinstance(member.get("code"), bool)
                and isinstance(member.get("message"), str)
            ):
                error = error_for_code(member["code"], member["message"], member.get("data"))
            else:
                error = ProtocolError("malformed error in a response from the peer")
        if isinstance(rid, int) and not isinstance(rid, bool) and rid in self._pending:
            del self._pending[rid]
            self._progress.discard(rid)
            return ResponseReceived(rid, obj.get("result"), error)
        abandoned = isinstance(rid, int) and not isinstance(rid, bool) and rid in self._abandoned
        return UnmatchedResponse(rid, abandoned, error)


def _array(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]\n"
