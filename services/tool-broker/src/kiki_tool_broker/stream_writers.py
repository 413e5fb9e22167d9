"""Writing the event streams to their subscribers' connections.

Each client connection with subscriptions has ONE writer task, which drains its ready
subscriptions' queues into ``kiki/event``, ``kiki/lost``, ``kiki/streamStatus`` and
``kiki/ended`` notifications. It takes a few items from each ready subscription in turn (round
robin: at most :data:`PER_SUB_ITEMS`, then the subscription goes to the back of the line if it
has more) and sends up to :data:`WRITE_ITEMS` of them as separate lines in one ``write()``
(:meth:`libkiki.rpc.Connection.notify_many`; not a JSON-RPC batch, which a peer counts against
its in-flight limit all at once), waiting only while the transport is paused: a subscriber that
does not read holds its own writer and its own bounded queue, nothing else. When the task is
idle and the connection's transport empty, that same turn is written without the task's turn
of the event loop instead: as soon as the provider's read that brought the messages has been
handled (so that what the provider wrote after them in that read, its answer to a call, is
written after them too), or, for messages queued outside any read (by a request's task: a
``kiki/subscribe`` queueing its subscription's status and the audit line of the subscribe),
in the next turn of the event loop (so that the answer the task writes in its own turn, the one
that names the subscription, goes first).

MCP hosts are not written their items: they are woken (``notifications/resources/updated``,
:meth:`StreamWriters.send_soon`) and read them (:mod:`kiki_tool_broker.mcp_resources`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import orjson

from kiki_tool_broker.streams import Ended, Item, Lost, Message, Status, StreamFanout
from libkiki.errors import KikiError, PeerGone
from libkiki.rpc import Connection, after_input, reading_input

log = logging.getLogger(__name__)

EVENT: Final = "kiki/event"
LOST: Final = "kiki/lost"
STATUS: Final = "kiki/streamStatus"
ENDED: Final = "kiki/ended"

WRITE_ITEMS: Final = 32  # notifications per write (separate lines)
PER_SUB_ITEMS: Final = 8  # taken from one subscription per turn: the others are not starved


class _Writer:
    """One client connection's writer: its subscriptions with something queued, in turn."""

    __slots__ = ("conn", "ready", "task", "wake")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ready: dict[int, None] = {}  # ordered set of subscriptions to drain
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class StreamWriters:
    """The writers of the client connections (by the fan-out's connection id)."""

    def __init__(self, fanout: StreamFanout, counters: Any) -> None:
        self.fanout = fanout
        self.counters = counters
        self.writers: dict[int, _Writer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._due: dict[int, None] = {}  # writers with something new, to flush
        # A flush is queued after the input being read, or in the next turn of the event loop.
        self._flush_after_input = False
        self._flush_soon = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the writers' (set by open)

    def __len__(self) -> int:
        return len(self.writers)

    def open(self, cid: int, conn: Connection) -> None:
        """``conn`` has subscriptions: it gets a writer (once)."""
        if cid not in self.writers:
            if self._loop is None:
                # Looked up once: on 3.11 every get_running_loop() is a getpid() system call.
                self._loop = asyncio.get_running_loop()
            writer = self.writers[cid] = _Writer(conn)
            writer.task = self._loop.create_task(self._write_loop(writer))

    def readable(self, cid: int, sub: int) -> None:
        """``sub``'s queue has something: its writer takes it in turn. Unless the writer's task
        is due already, the writer is flushed once the input being read now has been handled
        (:func:`libkiki.rpc.after_input`: every message of a provider's read queued first, and
        written before what the read answers), or, outside a read, in the next turn of the
        event loop (after the answer the running task is writing)."""
        writer = self.writers.get(cid)
        if writer is None:
            return
        writer.ready[sub] = None
        if writer.wake.is_set():
            return
        self._due[cid] = None
        if reading_input():
            # Also when a flush is queued for the next turn already: this read's answers are
            # written at its end, and what it queued must not come after them.
            if not self._flush_after_input:
                self._flush_after_input = True
                after_input(self._flushed_after_input)
        elif not self._flush_soon:
            assert self._loop is not None  # a writer was opened
            self._flush_soon = True
            self._loop.call_soon(self._flushed_soon)

    def _flushed_after_input(self) -> None:
        self._flush_after_input = False
        self._flush()

    def _flushed_soon(self) -> None:
        self._flush_soon = False
        self._flush()

    def _flush(self) -> None:
        """Write what the due writers have, now, where :meth:`_write_now` can; else their
        tasks take it."""
        due, self._due = self._due, {}
        for cid in due:
            writer = self.writers.get(cid)
            if writer is None or not writer.ready or writer.wake.is_set():
                continue
            try:
                written = self._write_now(writer)
            except Exception:
                # A fault, not a state (what it had taken is gone, logged): the others are
                # still written, and this one's task carries on with the rest of its queues.
                log.exception("%s: writing its streams failed", writer.conn.name)
                written = False
            if not written:
                writer.wake.set()

    def _write_now(self, writer: _Writer) -> bool:
        """Write one turn of the writer (what its task would write next) when the task is
        idle and the transport holds no unsent bytes: the messages then reach their subscriber
        in the turn of the event loop that read them, not one turn later. True when nothing is
        left for the task (which batches the rest and waits for the transport)."""
        conn = writer.conn
        if conn.closed or conn.write_buffer_size:
            return False
        notes = self._take(writer)
        # Refused only by a transport that is closing, i.e. a connection already gone: its
        # subscriptions end with it, nobody is left to tell.
        if conn.try_notify_many(notes):
            self.counters["stream_notifications"] += len(notes)
        return not writer.ready

    def _take(self, writer: _Writer) -> list[tuple[str, dict[str, Any]]]:
        """Up to :data:`WRITE_ITEMS` notifications from the ready subscriptions, round robin:
        the first in line takes its turn and, if it has more, goes to the back, so that every
        ready subscription is served."""
        fanout = self.fanout
        ready = writer.ready
        notes: list[tuple[str, dict[str, Any]]] = []
        while ready and len(notes) < WRITE_ITEMS:
            sub = next(iter(ready))
            items = fanout.drain(sub, PER_SUB_ITEMS)
            # Out of line only once drained: a drain that raises leaves it ready, or nothing
            # would ever take what it has (a queue not empty makes no new Readable).
            del ready[sub]
            notes.extend(note(item) for item in items)
            if fanout.pending(sub):
                ready[sub] = None
        return notes

    def close(self, cid: int) -> None:
        writer = self.writers.pop(cid, None)
        if writer is not None and writer.task is not None:
            writer.task.cancel()

    async def _write_loop(self, writer: _Writer) -> None:
        conn = writer.conn
        try:
            while True:
                await writer.wake.wait()
                writer.wake.clear()
                while writer.ready:
                    notes = self._take(writer)
                    if notes:
                        await conn.notify_many(notes)
                        self.counters["stream_notifications"] += len(notes)
        except (PeerGone, asyncio.CancelledError):
            return
        except KikiError as exc:
            log.info("%s: stopped writing its streams: %s", conn.name, exc)
        except Exception:
            log.exception("%s: stopped writing its streams", conn.name)

    def send_soon(self, conn: Connection, method: str, params: dict[str, Any]) -> None:
        """A wake-up notification (an MCP host's ``resources/updated``): now if the transport
        takes it, else once, by one task per connection, however often it is asked for
        meanwhile (equal ones coalesce, so what waits is bounded by the subscriptions)."""
        if conn.closed:
            return
        unsent: dict[bytes, tuple[str, dict[str, Any]]] | None = conn.state.get("stream_unsent")
        if not unsent and conn.try_notify(method, params):
            return
        if unsent is None:
            unsent = conn.state["stream_unsent"] = {}
        unsent[orjson.dumps([method, params], option=orjson.OPT_SORT_KEYS)] = (method, params)
        task: asyncio.Task[None] | None = conn.state.get("stream_unsent_task")
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(_send_unsent(conn, unsent))
            conn.state["stream_unsent_task"] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _send_unsent(conn: Connection, unsent: dict[bytes, tuple[str, dict[str, Any]]]) -> None:
    with contextlib.suppress(KikiError):
        while unsent:
            items = list(unsent.values())
            unsent.clear()
            await conn.notify_many(items)
    unsent.clear()


def note(item: Item) -> tuple[str, dict[str, Any]]:
    """A subscriber's item as the notification that carries it: (method, params)."""
    if isinstance(item, Message):
        return EVENT, {"subscription": item.sub, "seq": item.seq, "message": item.message}
    if isinstance(item, Lost):
        return LOST, {"subscription": item.sub, "count": item.count}
    if isinstance(item, Status):
        status = {
            "subscription": item.sub,
            "state": item.state,
            "reason": item.reason,
            "interruptions": item.interruptions,
        }
        return STATUS, status
    assert isinstance(item, Ended)
    return ENDED, {"subscription": item.sub, "reason": item.reason, "message": item.detail}
