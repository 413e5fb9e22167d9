"""One subscriber's bounded queue of stream items, as pure state (no asyncio, no sockets).

What a subscriber receives, in stream order: :class:`Message` (with its per-subscription
``seq``: 1, 2, 3, ... for every message offered to it), :class:`Lost`, :class:`Status` and, last,
:class:`Ended`. The fan-out (:mod:`kiki_tool_broker.streams`) offers each message of a topic to
every subscriber's :class:`SubscriberQueue`; the server drains a queue when its connection can
be written to.

* The queue is bounded (``max_messages`` and ``max_bytes``). One that is not drained loses its
  OLDEST queued messages: streams here carry changing state (screen changes, playback,
  progress, providers), so a subscriber catching up is better served by the newest messages
  than by stale ones it would have to resynchronise past anyway, and a message never waits in
  the broker longer than a queue's worth of newer ones. The loss is a :class:`Lost` item in its
  place in the stream, with the exact count; the sequence numbers jump by the same count, so a
  client can check it.
* Anything that breaks the continuity of a stream (messages lost, the upstream interrupted) is
  kept as one *gap* between two messages: gaps next to each other merge, so the queue holds at
  most ``max_messages + 1`` gaps besides its messages, however often a provider comes and goes
  while nobody reads (a gap drains as :class:`Lost` and/or :class:`Status`, ``interruptions``
  saying how many times the upstream was cut meanwhile).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

SubId = int
WaitReason = Literal["providerGone", "providerWithdrew"]
EndReason = Literal["unsubscribed", "closed", "refused", "providerEnded", "denied", "shutdown"]


@dataclass(frozen=True, slots=True)
class Message:
    sub: SubId
    seq: int
    message: Any


@dataclass(frozen=True, slots=True)
class Lost:
    """``count`` messages were dropped here, unread: the next ``seq`` jumps by as many."""

    sub: SubId
    count: int


@dataclass(frozen=True, slots=True)
class Status:
    """The upstream's state from here on. ``interruptions``: times it was cut since the last
    status this subscriber was given, ``reason`` why the last of them (a ``live`` with 0 is a
    first opening, or a reopening already reported as ``waiting``, completing)."""

    sub: SubId
    state: Literal["live", "waiting"]
    reason: WaitReason | None
    interruptions: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The broker ended the subscription; nothing follows."""

    sub: SubId
    reason: EndReason
    detail: str | None = None


Item = Message | Lost | Status | Ended


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int
    bytes: int
    items: int  # messages and gaps


_Entry = tuple[int, Any, int]  # seq, message, size


@dataclass(slots=True)
class _Gap:
    lost: int = 0
    interruptions: int = 0
    state: Literal["live", "waiting"] | None = None
    reason: WaitReason | None = None

    def absorb(self, later: _Gap) -> None:
        self.lost += later.lost
        self.interruptions += later.interruptions
        if later.state is not None:
            self.state = later.state
        if later.reason is not None:  # why it was last cut, also once it is live again
            self.reason = later.reason


class SubscriberQueue:
    """A subscriber's queue (see the module's docstring). Each method that adds an item says
    whether the queue was empty before it: the moment to tell the writer it has work."""

    __slots__ = ("bytes", "items", "max_bytes", "max_messages", "messages", "seq")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.items: deque[_Entry | _Gap | Ended] = deque()
        self.seq = 0  # of the last message offered
        self.messages = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def offer(self, message: Any, size: int) -> tuple[bool, int]:
        """Queue a message (``size`` bytes) with the next seq, dropping the oldest queued ones
        to make room: (whether the queue was empty, how many were dropped)."""
        self.seq += 1
        dropped = 0
        while self.messages and (
            self.messages >= self.max_messages or self.bytes + size > self.max_bytes
        ):
            self._drop_oldest()
            dropped += 1
        was_empty = not self.items
        self.items.append((self.seq, message, size))
        self.messages += 1
        self.bytes += size
        return was_empty, dropped

    def skip(self) -> bool:
        """A message this subscriber does not get: counted as lost, so ``seq`` still counts
        every message."""
        self.seq += 1
        return self._push_gap(_Gap(lost=1))

    def status(
        self,
        state: Literal["live", "waiting"],
        reason: WaitReason | None = None,
        *,
        interrupted: bool = False,
    ) -> bool:
        """The upstream went ``state`` (``interrupted``: it was cut, for ``reason``)."""
        return self._push_gap(_Gap(interruptions=int(interrupted), state=state, reason=reason))

    def end(self, item: Ended) -> bool:
        """The last item: nothing is queued after it."""
        self.items.append(item)
        return len(self.items) == 1

    def drain(self, sub: SubId, max_items: int | None = None) -> tuple[list[Item], bool]:
        """Take up to ``max_items`` queued entries (all by default), in order, as ``sub``'s
        items; and whether its :class:`Ended` was among them."""
        out: list[Item] = []
        q = self.items
        taken = 0
        while q and (max_items is None or taken < max_items):
            entry = q.popleft()
            taken += 1
            if isinstance(entry, tuple):
                seq, message, size = entry
                self.messages -= 1
                self.bytes -= size
                out.append(Message(sub, seq, message))
            elif isinstance(entry, _Gap):
                if entry.lost:
                    out.append(Lost(sub, entry.lost))
                if entry.state is not None:
                    out.append(Status(sub, entry.state, entry.reason, entry.interruptions))
            else:
                out.append(entry)
                return out, True
        return out, False

    def clear(self) -> None:
        self.items.clear()
        self.messages = self.bytes = 0

    def stats(self) -> QueueStats:
        return QueueStats(self.messages, self.bytes, len(self.items))

    def _drop_oldest(self) -> None:
        # Drops only ever happen at the front, so a gap holding losses is always the first
        # item, and its lost messages are exactly the seqs between the last one drained and
        # the first one still queued.
        q = self.items
        head = q.popleft()
        if isinstance(head, _Gap):
            gap, entry = head, q.popleft()
        else:
            gap, entry = _Gap(), head
        assert isinstance(entry, tuple)  # gaps never touch, and an Ended ends the queue
        gap.lost += 1
        self.messages -= 1
        self.bytes -= entry[2]
        if q and isinstance(nxt := q[0], _Gap):
            q.popleft()
            gap.absorb(nxt)
        q.appendleft(gap)

    def _push_gap(self, gap: _Gap) -> bool:
        q = self.items
        if q and isinstance(q[-1], _Gap):
            q[-1].absorb(gap)
            return False
        q.append(gap)
        return len(q) == 1
