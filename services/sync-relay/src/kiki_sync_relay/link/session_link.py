"""The device link's member of one session: it writes the device state and carries out intents.

It is a ``device``-role member of the session living in the relay's process: it holds a
replica of the session's document (a pycrdt ``Doc`` of its own, fed every durable update
through the relay's watchers), makes its changes there, and submits each transaction's update
to the relay as a client's (checked on the shadow, durable, then relayed). The session stays
in memory while it is linked.

- **State**: each key of :class:`~.state.DeviceState` is written into the ``device`` map when
  it changes, at most at its rate (:mod:`.throttle`), with ``updatedAt``; ``stale`` at once.
- **Intents**: each new one (in the order seen) is checked (:mod:`.intents`), answered at once
  when refused or expired, else marked ``running`` and called through the broker for its
  ``by`` (``on_behalf_of``) with its id as the idempotency key, at most ``max_running`` at
  once per session; its result replaces ``running``. One found ``running`` when the link
  starts (the relay stopped mid-call) is called again with the same key: the broker answers
  from its record instead of running it twice (unless it was written more than ``max_age``
  seconds ago: then the broker may have forgotten the key, and it is answered ``error``,
  whether it ran not known). An id is carried out once per link: seen twice (a merge, a
  reconnect), or again after it was pruned, it is not run again; across a restart, where the
  pruned ids are forgotten, the intent's age (``max_age``, below the broker's idempotency
  window) expires it, or the broker answers it from its record.
- **Pruning**: every ``prune_every`` seconds, and when the intents pass ``max_entries``; an
  entry ``running`` for longer than the call timeout plus a margin that no call of this link
  runs (its answer lost) is answered ``error`` then.
- **Values**: everything written is made JSON-safe first (:mod:`.values`: an int past ±2**53
  a float, no non-string keys). A write pycrdt still cannot take (it panics, a
  ``BaseException``) fails that write alone: the replica is rebuilt; a state key keeps its
  last value, a result becomes ``error``; never the relay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pycrdt import Doc, Map, MapEvent, TransactionEvent

from kiki_sync_relay.link import intents as rules
from kiki_sync_relay.link.broker import BrokerLink
from kiki_sync_relay.link.state import KEYS, DeviceState, now_iso
from kiki_sync_relay.link.throttle import INTERVALS, Throttle
from kiki_sync_relay.link.values import is_fatal, json_safe
from kiki_sync_relay.session import EMPTY_UPDATE, Member
from libkiki.errors import (
    Conflict,
    InvalidParams,
    KikiError,
    LimitExceeded,
    Timeout,
    Unavailable,
)

if TYPE_CHECKING:
    from kiki_sync_relay.relay import Live, Relay

log = logging.getLogger(__name__)
MAX_FORGOTTEN = 4096  # pruned ids remembered, so one written again is not run again
# Seconds intents wait for the broker (connected, its tools listed) before they are decided on
# what is known: at start, and while it is away.
BROKER_WAIT = 10.0
# Times a call is made again when the call it joined (same key) ended before its tool ran.
RETRIES_OF_A_JOIN = 2


@dataclass(frozen=True, slots=True)
class LinkSettings:
    device_id: str = "device"
    intent_rate: float = 2.0  # intents per second one person may send, on average
    intent_burst: float = 10.0  # ... and at once
    max_running: int = 8  # calls at once per session
    max_pending: int = 256  # intents accepted and not finished, per session
    keep: float = 600.0  # seconds a finished intent and its result stay
    # Seconds after its createdAt an intent is expired unrun: below the broker's
    # idempotency_window (600 s) by the clocks' difference allowed (see the README).
    max_age: float = 300.0
    max_entries: int = 256  # intents (and results) kept, the oldest finished pruned first
    prune_every: float = 30.0
    intervals: Mapping[str, float] = field(default_factory=lambda: dict(INTERVALS))


class SessionLink:
    def __init__(
        self,
        relay: Relay,
        name: str,
        state: DeviceState,
        broker: BrokerLink,
        settings: LinkSettings,
    ) -> None:
        self.relay = relay
        self.name = name
        self.state = state
        self.broker = broker
        self.settings = settings
        self.member = Member(role="device", sub=f"device:{settings.device_id}", bounded=False)
        self.linked = False
        self._live: Live | None = None
        self._doc: Doc[Any] = Doc()
        self._local = False
        self._captured: list[bytes] = []
        self._throttle = Throttle(settings.intervals)
        self._dirty = asyncio.Event()
        self._wake = asyncio.Event()
        self._queue: OrderedDict[str, None] = OrderedDict()
        self._started: set[str] = set()
        self._forgotten: OrderedDict[str, None] = OrderedDict()
        # Each call running, by its intent's id: one cut short when the loop ends is taken
        # again by the next run (found ``running``, called with the same key).
        self._running: dict[asyncio.Task[None], str] = {}
        # Results the session refused, to be written again (at most one per intent).
        self._unwritten: dict[str, dict[str, Any]] = {}
        self._slots = asyncio.Semaphore(settings.max_running)
        self._admission = rules.Admission(
            settings.intent_rate, settings.intent_burst, settings.max_age
        )

    # -- the session ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until cancelled (or a :class:`KikiError` on joining it)."""
        live = await self.relay.open(self.name)
        live.session.join(self.member)
        self.relay.hold(self.name, live)
        self._live = live
        watchers = self.relay.watchers.setdefault(self.name, set())
        watchers.add(self._remote)
        self.state.listeners.add(self._changed)
        try:
            self._load()
            self.linked = True
            for key in ("stale", *KEYS):
                self._throttle.mark(key)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._writer())
                group.create_task(self._intents_loop())
                group.create_task(self._pruner())
        finally:
            self.linked = False
            self.state.listeners.discard(self._changed)
            watchers.discard(self._remote)
            for task, key in list(self._running.items()):
                task.cancel()
                # Cut short, not finished: the next run in this process (the link restarted
                # after a failure) finds it ``running`` and calls it again with the same key,
                # as after a restart of the relay (the broker answers from its record).
                self._started.discard(key)
            live.session.leave(self.member)  # it set no awareness: nothing to tell the others
            self.relay.release(self.name, live)
            self._live = None

    def _load(self) -> None:
        """(Re)build the replica from the live document (a new Yjs client id each time)."""
        assert self._live is not None
        doc: Doc[Any] = Doc()
        doc.apply_update(self._live.session.doc.get_update())
        self._doc = doc
        self._device: Map[Any] = doc.get("device", type=Map)
        self._intents: Map[Any] = doc.get("intents", type=Map)
        self._results: Map[Any] = doc.get("results", type=Map)
        doc.observe(self._transaction)
        self._intents.observe(self._intents_changed)
        for key in list(self._intents.keys()):
            self._arrived(key)

    def _transaction(self, event: TransactionEvent) -> None:
        if self._local and event.update != EMPTY_UPDATE:
            self._captured.append(event.update)

    def _remote(self, update: bytes) -> None:
        try:
            self._doc.apply_update(update)
        except BaseException as exc:  # a replica that cannot take the live document's update
            # (pycrdt's panic included: it would reach the relay, which called this watcher)
            if is_fatal(exc):
                raise
            log.error("the device link's replica of %s failed (%s): rebuilt", self.name, exc)
            self._resync()

    def _resync(self) -> None:
        self._load()
        for key in ("stale", *KEYS):
            self._throttle.mark(key)
        self._dirty.set()

    def _write(self, change: Callable[[], None]) -> bool:
        """Make ``change`` in the replica, and submit it to the session as one update; False
        when the session refused it (the replica is rebuilt, the state written again after
        the throttle's pause)."""
        live = self._live
        if live is None:
            return False
        self._captured = []
        self._local = True
        try:
            with self._doc.transaction():
                change()
        except BaseException as exc:
            # pycrdt panics (a BaseException) on a value it cannot store: that write fails,
            # not the link nor the relay; the replica, which may hold part of it, is rebuilt.
            if is_fatal(exc):
                raise
            log.error("the device link could not write into %s: %r", self.name, exc)
            self.relay.counters["link_writes_failed"] += 1
            self._resync()
            raise InvalidParams(
                f"a value the session's document cannot hold: {exc!r}"[:512]
            ) from exc
        finally:
            self._local = False
        for update in self._captured:
            try:
                self.relay.submit(self.name, live, self.member, update)
            except KikiError as exc:
                # Refused (the document over its bound): the replica holds what the session
                # does not. It is rebuilt, and the state written again.
                log.error("the session %s refused the device link's update: %s", self.name, exc)
                self.relay.counters["link_updates_refused"] += 1
                self._resync()
                self._throttle.refused(time.monotonic())
                return False
        self._captured = []
        self._throttle.accepted()
        return True

    # -- the device state -----------------------------------------------------------------------

    def _changed(self, key: str) -> None:
        self._throttle.mark(key)
        self._dirty.set()

    async def _writer(self) -> None:
        while True:
            self._dirty.clear()
            now = time.monotonic()
            if self._unwritten and now >= self._throttle.paused_until:
                answers, self._unwritten = self._unwritten, {}
                self._write_results(answers)
            keys, wake = self._throttle.due(now)
            if keys:
                self._write_state(keys)
            if self._unwritten:
                at = self._throttle.paused_until
                wake = at if wake is None else min(wake, at)
            timeout = None if wake is None else max(0.0, wake - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()
            except TimeoutError:
                pass

    def _write_state(self, keys: list[str]) -> None:
        values: dict[str, Any] = {}
        for key in keys:
            value = self.state.stale_list() if key == "stale" else self.state.current(key)
            try:
                values[key] = json_safe(value)
            except InvalidParams as exc:  # it keeps its last value
                log.error("the device state's %s cannot be written: %s", key, exc)
                self.relay.counters["link_writes_failed"] += 1
        changed = {k: v for k, v in values.items() if self._device.get(k, _ABSENT) != v}
        if not changed:
            return

        def change() -> None:
            for key, value in changed.items():
                self._device[key] = value
            self._device["updatedAt"] = now_iso()

        try:
            self._write(change)
        except InvalidParams:
            return
        self.relay.counters["link_state_writes"] += 1

    # -- intents --------------------------------------------------------------------------------

    def _intents_changed(self, event: MapEvent) -> None:
        keys: dict[str, dict[str, Any]] = getattr(event, "keys", {})
        for key, change in keys.items():
            if change.get("action") == "delete":
                self._forget(str(key))
            else:
                self._arrived(str(key))

    def _arrived(self, key: str) -> None:
        if key not in self._started:
            self._queue[key] = None
            self._wake.set()

    async def _intents_loop(self) -> None:
        while True:
            await self._wake.wait()
            await self.broker.ready(BROKER_WAIT)
            self._wake.clear()
            answers: dict[str, dict[str, Any]] = {}
            while self._queue:
                key, _ = self._queue.popitem(last=False)
                if key not in self._started:
                    self._take(key, answers)
            if answers:
                self._write_results(answers)
            if len(self._intents) > self.settings.max_entries:
                self._prune()

    def _take(self, key: str, answers: dict[str, dict[str, Any]]) -> None:
        """Decide what becomes of intent ``key``: an answer now, or a call (started here)."""
        value = self._intents.get(key)
        if value is None:
            return
        existing = self._results.get(key)
        self._started.add(key)
        if rules.is_final(existing):
            return
        resumed = isinstance(existing, dict) and existing.get("status") == "running"
        wall = datetime.now(UTC)
        if not resumed:
            # The person's token first: a flood of malformed, expired or repeated intents is
            # limited as much as one of good ones.
            by = value.get("by") if isinstance(value, dict) else None
            limited = self._admission.take(by, wall, time.monotonic())
            if limited is not None:
                answers[key] = limited
                self.relay.counters["link_intents_refused"] += 1
                return
        try:
            intent = rules.parse(key, value)
        except InvalidParams as exc:
            answers[key] = rules.result("refused", error=exc, now=wall)
            return
        if resumed and self._admission.too_old(intent, wall):
            # The broker may have forgotten its key by now: called again, it could run twice.
            lost = Unavailable(
                f"the device stopped while it ran, and it was written more than "
                f"{self.settings.max_age:g} s ago: whether it ran is not known"
            )
            answers[key] = rules.result("error", error=lost, now=wall)
            return
        if not resumed:
            if key in self._forgotten:
                again = Conflict(f"intent {key} was carried out already")
                answers[key] = rules.result("refused", error=again, now=wall)
                return
            tools = self.state.values.get("tools") or []
            answer = self._admission.check(intent, tools, wall, time.monotonic(), taken=True)
            if answer is None and len(self._running) >= self.settings.max_pending:
                error = LimitExceeded(f"{len(self._running)} intents are running or waiting")
                answer = rules.result("refused", error=error, now=wall)
            if answer is not None:
                answers[key] = answer
                self.relay.counters["link_intents_refused"] += 1
                return
            answers[key] = rules.result("running", now=wall)
        task = asyncio.get_running_loop().create_task(self._call(intent))
        self._running[task] = intent.id
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    async def _call(self, intent: rules.Intent) -> None:
        async with self._slots:
            self.relay.counters["link_intents_called"] += 1
            await self.broker.ready(BROKER_WAIT)
            for attempt in range(1, RETRIES_OF_A_JOIN + 2):
                try:
                    output = await self.broker.call(
                        intent.tool,
                        intent.input,
                        key=intent.id,
                        on_behalf_of={"subject": intent.by, "session": self.name},
                    )
                    entry = rules.succeeded(output)
                except Unavailable as exc:
                    entry = rules.failed(exc)
                    # A call resumed while the one it repeats (cut short by the link's loop
                    # ending) still ran joined it, and that one ended before its tool ran:
                    # the broker forgot the key and says to call again.
                    if _rule(exc) == "idempotencyKey" and attempt <= RETRIES_OF_A_JOIN:
                        continue
                except KikiError as exc:
                    entry = rules.failed(exc)
                except Exception as exc:  # never left ``running``: whatever failed, it is told
                    log.exception("the device link's call of intent %s failed", intent.id)
                    failure = KikiError(f"the device could not make the call: {exc!r}"[:512])
                    entry = rules.result("error", error=failure)
                break
        self._write_results({intent.id: entry})

    def _write_results(self, answers: dict[str, dict[str, Any]]) -> None:
        """Write ``answers``; refused, they are written again after the throttle's pause (an
        intent is never left ``running`` for good). One the document cannot hold (a tool's
        output that is not JSON it takes) is written as an ``error``."""
        safe = {key: _safe_result(entry) for key, entry in answers.items()}

        def change() -> None:
            for key, entry in safe.items():
                self._results[key] = entry

        try:
            written = self._write(change)
        except InvalidParams:
            # Which one it was is not known: each is written alone, the one that fails as an
            # error (which holds only strings).
            written = True
            for key, entry in safe.items():
                self._write_one(key, entry)
        if not written:
            self._unwritten.update(safe)
            self._dirty.set()

    def _write_one(self, key: str, entry: dict[str, Any]) -> None:
        def change(value: dict[str, Any]) -> Callable[[], None]:
            return lambda: self._results.__setitem__(key, value)

        try:
            written = self._write(change(entry))
        except InvalidParams as exc:
            entry = rules.result("error", error=exc)
            written = self._write(change(entry))
        if not written:
            self._unwritten[key] = entry
            self._dirty.set()

    # -- pruning --------------------------------------------------------------------------------

    async def _pruner(self) -> None:
        while True:
            await asyncio.sleep(self.settings.prune_every)
            self._prune()

    def _prune(self) -> None:
        results = self._results.to_py() or {}
        lost = rules.stuck(
            results,
            datetime.now(UTC),
            self.broker.call_timeout + rules.STUCK_MARGIN,
            set(self._running.values()),
        )
        if lost:
            error = Timeout(
                f"no answer within {self.broker.call_timeout + rules.STUCK_MARGIN:g} s: "
                f"whether it ran is not known"
            )
            self._write_results({key: rules.result("error", error=error) for key in lost})
        gone = rules.to_prune(
            self._intents.to_py() or {},
            self._results.to_py() or {},
            datetime.now(UTC),
            self.settings.keep,
            self.settings.max_entries,
        )
        if not gone:
            return

        def change() -> None:
            for key in gone:
                for part in (self._intents, self._results):
                    if key in part:
                        del part[key]

        self._write(change)
        for key in gone:
            self._forget(key)

    def _forget(self, key: str) -> None:
        """``key`` left the intents (pruned, here or by another device writer): one that was
        taken is remembered, among the last :data:`MAX_FORGOTTEN`, so it is not run again."""
        if key not in self._started:
            return
        self._started.discard(key)
        self._forgotten[key] = None
        while len(self._forgotten) > MAX_FORGOTTEN:
            self._forgotten.popitem(last=False)


_ABSENT = object()


def _safe_result(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` JSON-safe (:mod:`.values`), or an ``error`` saying why it cannot be."""
    try:
        safe: dict[str, Any] = json_safe(entry, exact=True)
    except InvalidParams as exc:
        ran = InvalidParams(f"the tool ran, but its output cannot be written: {exc}")
        return rules.result("error", error=ran)
    return safe


def _rule(error: KikiError) -> Any:
    return error.data.get("rule") if isinstance(error.data, dict) else None
