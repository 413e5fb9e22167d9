"""One bridged app: its walk, its event batches, its actions, its Kiki publisher (asyncio).

Each app has its own task and its own publisher connection (one Kiki tree). Events only mark
paths dirty in the app's :class:`~kiki_a11y_server.atspi.model.AppModel` and wake the task; the
task fetches what is dirty (and the subtrees that appeared), publishes one update, and goes
again while events came meanwhile, so a storm costs one fetch per node per round, never a
queue. Every AT-SPI call is bounded: an app that stops answering marks its tree stale (the root
gets ``busy``) and is asked again every ``probe_interval``; still silent after ``gone_after``,
its tree is closed (the server sends ``TreeGone``), and it is walked and published afresh if it
answers later. Nothing one app does holds up another's task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiki_a11y_server.atspi import cache
from kiki_a11y_server.atspi.actions import plan
from kiki_a11y_server.atspi.bounds import BoundsWatch
from kiki_a11y_server.atspi.calls import ROOT, AtspiError, Calls
from kiki_a11y_server.atspi.identity import OtherUsersApp, app_of
from kiki_a11y_server.atspi.model import ALL, PATCHED, AppModel, Batch, Fetched, aspect_of
from kiki_a11y_server.atspi.walk import walk
from libkiki.a11y import wire
from libkiki.a11y.publisher import A11yPublisher
from libkiki.backoff import RestartBackoff
from libkiki.errors import KikiError, Timeout

log = logging.getLogger(__name__)

AGENT = wire.CAUSES["agent"]
ADOPT = 64  # parents asked for per round, of events about paths not in the mirror
RETRIES = 5  # fetching a new child again (0.1 s, then doubling: about 3 s in all)
APP = wire.CAUSES["app"]


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 32  # accessibles fetched at once per app
    max_nodes: int = 20_000
    max_children: int = 2_000
    max_dirty: int = 2_000
    use_cache: bool = True  # Cache.GetItems for the initial state where the app offers it
    probe_interval: float = 1.0
    watch_interval: float = 1.0  # an app's windows are asked where they are this often
    gone_after: float = 10.0
    max_unacked: int = 8  # updates sent and not yet acknowledged by the server
    agent_window: float = 0.5  # updates this soon after an action are marked caused by the agent


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class AppMirror:
    def __init__(
        self,
        calls: Calls,
        bus_name: str,
        socket: Path | None,
        limits: Limits,
        *,
        own_uid: int | None = None,
    ) -> None:
        self.calls = calls
        self.own_uid = own_uid  # the user whose apps are bridged (None: the process's)
        self.bus_name = bus_name
        self.socket = socket
        self.limits = limits
        self.model = AppModel(
            max_nodes=limits.max_nodes, max_children=limits.max_children, max_dirty=limits.max_dirty
        )
        self.wakeup = asyncio.Event()
        self.published = asyncio.Event()  # set after each publish (tests, benchmark)
        self.publisher: A11yPublisher | None = None
        self.label = bus_name
        self.app: wire.App | None = None  # which app it is (identity.app_of), named to the server
        self._aspects: dict[str, set[str]] = {}
        self._early: set[str] = set()  # events about paths not in the mirror (yet)
        self._retries: dict[str, int] = {}  # new children that failed to fetch: tries so far
        self._incomplete: list[str] = []  # published from the cache, not filled in yet
        self._short_lists: list[str] = []  # of those, whose children the cache did not hold
        self.filled = asyncio.Event()  # the whole tree's details are in (actions wait for it)
        self.filled.set()
        self.source = ""  # how the last whole state was read: "cache" or "walk"
        self.stale = False
        self.suspect = False  # an action timed out: ask the app before anything else
        self.updates = 0
        self._acks: collections.deque[asyncio.Future[int]] = collections.deque()
        self.patched = 0  # events whose own payload was the change (no call made)
        self._acted = -1e9
        self._gate = asyncio.Semaphore(limits.concurrency)
        self.bounds = BoundsWatch(max_paths=limits.max_nodes, max_repeats=limits.max_dirty)
        self._unanswered = 0  # watches in a row the app did not answer
        self.foreign = False  # another user's app: never bridged, its events ignored

    # -- events (called from the bus's message handler: no awaiting) ---------------------------

    def event(self, path: str, aspect: str = ALL) -> None:
        if self.foreign:
            return
        if self.model.mark(path, aspect):
            self.wakeup.set()
        elif len(self._early) < self.limits.max_dirty:
            # Not in the mirror: a node a walk under way has fetched and not applied yet, or
            # one the mirror missed (an object that did not answer while it was being made,
            # as Chromium's web document while the page loads). The next round sees to it.
            self._early.add(path)
            self.wakeup.set()

    async def _adopt(self) -> None:
        """Events about paths not in the mirror: those there by now are marked; for the
        others their parent is asked (at most ``ADOPT`` a round), and a parent in the
        mirror is fetched again, which walks the child in."""
        early, self._early = self._early, set()
        unknown = [path for path in early if not self.model.mark(path, ALL)][:ADOPT]
        if not unknown:
            return
        parents = await asyncio.gather(*(self._parent(path) for path in unknown))
        for parent in parents:
            if parent:
                self.model.mark(parent, "children")

    async def _parent(self, path: str) -> str:
        async with self._gate:
            try:
                return await self.calls.parent(self.bus_name, path)
            except AtspiError:
                return ""

    def _apply(self, fetched: dict[str, Fetched], root: str = "") -> Batch:
        return self.model.apply(fetched, root=root)

    def signal(self, path: str, member: str, body: list[Any]) -> None:
        """An AT-SPI event (``siiva{sv}``: detail, detail1, detail2, any_data, properties)."""
        if self.foreign:
            return
        detail, one, two = str(body[0]), int(body[1]), int(body[2])
        data = body[3].value if hasattr(body[3], "value") else body[3]
        if member == "BoundsChanged" and not self.bounds.event(path, data):
            return
        if self.model.patch(path, member, detail, one, two, data):
            self.patched += 1
            self.wakeup.set()
        else:
            self.event(path, aspect_of(member, detail))

    # -- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Mirror the app until cancelled (its bus name left); reconnects to the server."""
        backoff = RestartBackoff()
        while True:
            try:
                await self._session(backoff)
            except OtherUsersApp as exc:
                self.foreign = True
                log.warning("not bridging %s: %s", self.bus_name, exc)
                return
            except Timeout as exc:
                self.stale = True
                log.info("%s: %s", self.label, exc)
            except (KikiError, OSError) as exc:
                log.info("%s: %s", self.label, exc)
            self.publisher = None
            await asyncio.sleep(backoff.exited(time.monotonic()))
            if self.stale:
                await self._await_answer()

    async def _session(self, backoff: RestartBackoff) -> None:
        # Before anything is read from it: another user's app is not bridged at all, and an
        # app whose user the bus does not say is not bridged yet (the error retries).
        self.app = await app_of(self.calls, self.bus_name, own_uid=self.own_uid)
        # The server's connection is made while the app's whole state is read: only the
        # label it is opened with (the root's name, asked first) is waited for.
        label = asyncio.ensure_future(self.calls.name(self.bus_name, ROOT))
        initial = asyncio.ensure_future(self._initial())
        # Its failure is the session's only when the session gets to wait for it.
        initial.add_done_callback(_retrieve)
        try:
            self.label = await label or self.bus_name
            async with A11yPublisher(
                self.socket, label=self.label, on_action=self._on_action
            ) as pub:
                fetched = await initial
                await self._serve(pub, fetched, backoff)
        finally:
            label.cancel()
            initial.cancel()

    async def _serve(
        self, pub: A11yPublisher, fetched: dict[str, Fetched], backoff: RestartBackoff
    ) -> None:
        """Publish the app's whole state, then follow its changes until the server's
        connection closes."""
        self.publisher = pub
        self.model.reset()
        await self._publish_whole(fetched)
        backoff.ready(time.monotonic())
        log.info(
            "%s: %d nodes published (tree %d, from a %s)",
            self.label,
            len(fetched),
            pub.tree_id,
            self.source,
        )
        closed = asyncio.ensure_future(pub.closed.wait())
        try:
            watched = time.monotonic()
            while not pub.closed.is_set():
                woken = asyncio.ensure_future(self.wakeup.wait())
                wait = watched + self.limits.watch_interval - time.monotonic()
                try:
                    await asyncio.wait(
                        {woken, closed},
                        timeout=max(wait, 0),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woken.cancel()
                if pub.closed.is_set():
                    return
                # On a clock, not when idle: an app animating something (a spinner's
                # bounds-changed many times a second) is never idle.
                if time.monotonic() >= watched + self.limits.watch_interval:
                    await self._watch()
                    watched = time.monotonic()
                if not self.wakeup.is_set():
                    continue
                self.wakeup.clear()
                await self._round()
        finally:
            closed.cancel()
            self._drop_acks()

    async def _round(self) -> None:
        try:
            if self.suspect:
                self.suspect = False
                await self.calls.ping(self.bus_name)
            if self.model.resync:
                await self._publish_whole(await self._initial())
                return
            await self._adopt()
            self._aspects = self.model.take_dirty()
            for path in self.model.take_extents():  # a moved window's nodes, a chunk a round
                self._aspects.setdefault(path, set()).add("bounds")
            if self.model.extents_due:
                self.wakeup.set()
            fetched = await self._walk([(p, False) for p in self._aspects])
            batch = self._apply(fetched)
            if batch.nodes or self.stale:
                await self._publish(batch.nodes)
            if not self.wakeup.is_set():
                await self._settle(keep=0)  # idle: every update acknowledged (or refused)
        except Timeout as exc:
            log.warning("%s does not answer (%s): its tree is stale", self.label, exc)
            await self._go_stale()
        except KikiError as exc:
            if (
                not isinstance(exc, AtspiError)
                and self.publisher
                and self.publisher.closed.is_set()
            ):
                raise
            log.warning("%s: %s; walking it again", self.label, exc)
            self.model.resync = True
            self.wakeup.set()

    async def _publish(self, nodes: list[wire.Node], root: int = 0) -> None:
        assert self.publisher is not None
        if self.stale:
            self.stale = False
            nodes = self._with_root(nodes, busy=False)
        recent = time.monotonic() - self._acted < self.limits.agent_window
        await self._settle(keep=self.limits.max_unacked - 1)
        # Not waiting for each acknowledgement keeps a quick second change (a text's delete,
        # then its insert) from waiting a round trip to the server; the connection keeps the
        # order, and a refusal found later makes the next round a resync.
        self._acks.append(asyncio.ensure_future(self._send(nodes, root, AGENT if recent else APP)))
        if root:
            await self._settle(keep=0)  # a whole tree: acknowledged before anything else
        self.updates += 1
        self.published.set()
        self.published = asyncio.Event()

    def _send(self, nodes: list[wire.Node], root: int, cause: int) -> Awaitable[int]:
        assert self.publisher is not None
        if self.app is None or self.publisher.tree_id:
            return self.publisher.publish(nodes, root_id=root, cause=cause)
        # The update that makes the tree names the app it is for (the server takes the name
        # from a publisher its policy trusts, and ignores it otherwise).
        app = self.app._replace(label=self.label)
        return self._first(wire.TreeUpdate(0, 0, 0, 0, 0, root, tuple(nodes), (), cause, app))

    async def _first(self, update: wire.TreeUpdate) -> int:
        assert self.publisher is not None
        ack = await self.publisher.request(update)
        assert isinstance(ack, wire.Ack)
        self.publisher.tree_id, self.publisher.seq = ack.tree_id, ack.seq
        return ack.seq

    async def _settle(self, keep: int) -> None:
        """Collect acknowledgements: those already in, and the oldest past ``keep``
        outstanding; a refusal raises here."""
        while self._acks and (self._acks[0].done() or len(self._acks) > keep):
            ack = self._acks.popleft()
            try:
                await ack
            except BaseException:
                self._drop_acks()
                raise

    def _drop_acks(self) -> None:
        while self._acks:
            self._acks.popleft().cancel()

    def _with_root(self, nodes: list[wire.Node], *, busy: bool) -> list[wire.Node]:
        entry = self.model.entries[self.model.root_id]
        listed = {n.id: n for n in nodes}
        root = listed.get(entry.node.id, entry.node)
        bit = wire.STATES["busy"]
        listed[root.id] = root._replace(states=root.states | bit if busy else root.states & ~bit)
        return list(listed.values())

    # -- an idle app ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Ask the app where its windows are (every ``watch_interval``). A window that moves
        changes the screen position of every node in it, and GTK says so of none of them (no
        bounds-changed, no window:move), so a window whose extents changed gets every node under
        it asked for its extents. The same call is how a hung app is noticed when nothing
        else asks it anything."""
        windows = self.model.windows()
        try:
            if not windows:
                await self.calls.ping(self.bus_name)
                self._unanswered = 0
                return
            now = await asyncio.gather(
                *(self._extents(path) for path, _ in windows), return_exceptions=True
            )
            for result in now:
                if isinstance(result, Timeout):
                    raise result
        except Timeout as exc:
            # Twice in a row before the tree goes stale: a busy app (a browser loading a page
            # on a loaded machine) can miss one deadline, and a stale tree comes back whole
            # with new ids.
            self._unanswered += 1
            if self._unanswered >= 2:
                log.warning("%s does not answer (%s): its tree is stale", self.label, exc)
                self._unanswered = 0
                await self._go_stale()
            return
        self._unanswered = 0
        seen = {
            path: got
            for (path, _), got in zip(windows, now, strict=True)
            if not isinstance(got, BaseException)
        }
        moved, repeated = self.bounds.watched(seen, dict(windows))
        for path in moved:
            if self.model.mark_extents_under(path):
                self.wakeup.set()
        for path in repeated:
            if self.model.mark(path, "bounds"):
                self.wakeup.set()

    async def _extents(self, path: str) -> tuple[int, int, int, int] | None:
        async with self._gate:
            return await self.calls.extents(self.bus_name, path)

    # -- a hung app ----------------------------------------------------------------------------

    async def _go_stale(self) -> None:
        self.stale = True
        assert self.publisher is not None
        with contextlib.suppress(KikiError):
            await self.publisher.publish(self._with_root([], busy=True), wait=False)
        try:
            async with asyncio.timeout(self.limits.gone_after):
                await self._await_answer()
        except TimeoutError:
            log.warning(
                "%s: silent for %g s more; its tree is gone", self.label, self.limits.gone_after
            )
            raise Timeout(f"{self.label} stopped answering") from None
        self.model.resync = True  # it answers again: whatever it did meanwhile, walk it anew
        self.wakeup.set()

    async def _await_answer(self) -> None:
        while True:
            try:
                await self.calls.ping(self.bus_name)
                return
            except Timeout:
                await asyncio.sleep(self.limits.probe_interval)

    # -- walking -------------------------------------------------------------------------------

    async def _refresh(self, path: str) -> Fetched | KikiError:
        known = self.model.known(path)
        if known is None:
            return await self._fetch(path)
        async with self._gate:
            try:
                aspects = self._aspects.get(path, {ALL}) - {PATCHED}
                if not aspects:
                    return known  # the events carried every change
                return await self.calls.refresh(self.bus_name, known, aspects)
            except AtspiError as exc:
                return exc

    async def _fetch(self, path: str) -> Fetched | KikiError:
        async with self._gate:
            try:
                return await self.calls.fetch(self.bus_name, path)
            except AtspiError as exc:  # gone meanwhile (defunct), or a broken object
                return exc

    async def _initial(self) -> dict[str, Fetched]:
        """The whole app: its structure from ``Cache.GetItems`` where offered (one call for
        what a walk asks node by node; the rest is filled in by :meth:`_fill_in`), else
        walked."""
        items = await self.calls.cache_items(self.bus_name) if self.limits.use_cache else None
        if items:
            fetched, short = cache.from_items(self.bus_name, items)
            if ROOT in fetched:
                self._incomplete, self._short_lists = list(fetched), short
                self.source = "cache"
                return fetched
        self.source = "walk"
        return await self._walk([(ROOT, True)])

    async def _publish_whole(self, fetched: dict[str, Fetched]) -> None:
        self.filled.clear()
        try:
            batch = self._apply(fetched, root=ROOT)
            await self._publish(batch.nodes, root=self.model.root_id)
            await self._fill_in()
        finally:
            self.filled.set()

    async def _fill_in(self) -> None:
        """What the cache's answer lacked, as one update: bounds, actions and values of the
        nodes published from it, and the children it did not hold (their lists asked for,
        the new subtrees walked)."""
        known = {p: f for p in self._incomplete if (f := self.model.known(p)) is not None}
        short = [p for p in self._short_lists if p in known]
        self._incomplete, self._short_lists = [], []
        if not known:
            return
        self.model.fetching = set(known)  # events meanwhile: fetched again next round
        lists = await asyncio.gather(*(self._children(p) for p in short))
        missing: list[tuple[str, bool]] = []
        for path, listed in zip(short, lists, strict=True):
            known[path] = dataclasses.replace(known[path], children=listed)
            missing += [(c, True) for c in listed if c not in known]
        done = await asyncio.gather(
            *(self._complete(f) for f in known.values()), return_exceptions=True
        )
        for result in done:
            if isinstance(result, Timeout):
                raise result
        fetched = {f.path: f for f in done if isinstance(f, Fetched)}
        fetched.update(await self._walk(missing))
        batch = self._apply(fetched)
        if batch.nodes:
            await self._publish(batch.nodes)

    async def _complete(self, first: Fetched) -> Fetched:
        async with self._gate:
            return await self.calls.complete(self.bus_name, first)

    async def _children(self, path: str) -> tuple[str, ...]:
        async with self._gate:
            try:
                return await self.calls.children(self.bus_name, path)
            except AtspiError:
                return ()

    async def _walk(self, start: list[tuple[str, bool]]) -> dict[str, Fetched]:
        fetched, failed = await walk(
            self._fetch,
            self.model,
            start,
            max_nodes=self.limits.max_nodes,
            max_children=self.limits.max_children,
            refresh=self._refresh,
        )
        for path, parent in failed:
            if path == ROOT and (ROOT, True) in start:
                raise AtspiError(f"{self.bus_name} has no accessible root")
            if parent:
                self._retry(parent, path)
            else:
                self._mark_parent(path)
        return fetched

    def _retry(self, parent: str, child: str) -> None:
        """A new child that did not answer (an object not ready yet: Chromium's web document
        while the page loads) is left out; its parent is fetched again a little later, at
        most ``RETRIES`` times per child, so that a child that is really broken costs a few
        calls, not a loop."""
        tries = self._retries.get(child, 0)
        if tries >= RETRIES:
            return
        self._retries[child] = tries + 1
        if len(self._retries) > self.limits.max_dirty:
            self._retries.clear()  # bounded: old entries only cost a few extra tries
        delay = 0.1 * 2**tries
        asyncio.get_running_loop().call_later(delay, self.event, parent)

    def _mark_parent(self, path: str) -> None:
        node_id = self.model.ids.get(path, 0)
        entry = self.model.entries.get(node_id)
        parent = self.model.entries.get(entry.parent) if entry else None
        if parent is not None:
            self.event(parent.path)

    # -- actions -------------------------------------------------------------------------------

    async def _on_action(self, request: wire.ActionRequest) -> str:
        await self.filled.wait()  # a node's actions are known once its details are in
        planned = plan(self.model, request.node_id, request.action, request.value)
        self._acted = time.monotonic()
        try:
            return await self.calls.perform(self.bus_name, planned)
        except Timeout:
            self.suspect = True
            self.wakeup.set()
            raise
        finally:
            self._acted = time.monotonic()
