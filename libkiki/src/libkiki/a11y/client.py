"""Reading and acting on the desktop's accessibility trees (``a11y.sock``).

For agents::

    async with A11yClient() as a11y:
        mirror = await a11y.subscribe()          # a snapshot, then kept current
        save = mirror.find(role="button", name="Save")[0]
        await a11y.act(ref(save), "press")
        print(render_text(mirror))               # libkiki.a11y.render

The mirror applies every update in sequence order; an update whose ``base_seq`` is not the
mirror's ``seq`` for that tree (a gap) makes the client ask the server for a fresh snapshot
(``Resync``), and so does the server's own ``Resync`` (sent when this client fell too far
behind). Until the snapshot arrives that tree is marked stale and its updates are ignored. One
``Resync`` is outstanding at a time: the server answers it with a snapshot of every tree the
subscription covers, taken after everything this client has received so far, so a gap seen
while one is outstanding is mended by the same snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libkiki.a11y import wire
from libkiki.a11y.search import DEFAULT_LIMIT, search
from libkiki.errors import (
    InvalidFrame,
    InvalidParams,
    KikiError,
    PeerGone,
    Timeout,
    Unavailable,
    error_for_code,
)
from libkiki.flatbuf import Limits
from libkiki.framing import FrameDecoder, Oversized, encode_frame
from libkiki.paths import A11Y_SOCKET, socket_path

log = logging.getLogger(__name__)

CLIENT_MAX_FRAME = 256 << 20
CLIENT_LIMITS = Limits(max_depth=8, max_tables=4_000_000, max_count={"Node": 2_000_000})


def ref(node: wire.Node) -> str:
    """A short reference to a node, stable while its app is connected: ``tree:node``."""
    return f"{node.tree_id}:{node.id}"


def parse_ref(text: str) -> tuple[int, int]:
    tree, sep, node = text.partition(":")
    if sep and tree.isdecimal() and node.isdecimal() and max(int(tree), int(node)) < 1 << 32:
        return int(tree), int(node)  # the wire's uints
    raise InvalidParams(f"{text!r} is not a node reference (tree:node, e.g. 3:17)")


def role_value(role: str | int) -> int:
    if isinstance(role, int):
        return role
    for name, value in wire.ROLES.items():
        if name.casefold() == role.casefold():
            return value
    raise InvalidParams(f"unknown role {role!r}")


def action_value(action: str | int) -> int:
    if isinstance(action, int):
        return action
    for name, value in wire.ACTIONS.items():
        if name.casefold() == action.casefold():
            return value
    raise InvalidParams(f"unknown action {action!r} (one of {', '.join(wire.ACTIONS)})")


@dataclass(eq=False)
class MirrorTree:
    tree_id: int
    app: wire.App
    root: int = 0
    seq: int = 0
    nodes: dict[int, wire.Node] = field(default_factory=dict)
    stale: bool = False


@dataclass(eq=False)
class Mirror:
    """A local copy of the trees a subscription delivers."""

    trees: dict[int, MirrorTree] = field(default_factory=dict)
    updates: int = 0
    # Trees waiting for a snapshot (0: all of them, after the server's own Resync notice).
    resyncing: set[int] = field(default_factory=set)

    def load(self, snapshot: wire.Snapshot) -> None:
        self.trees = {}
        self.resyncing = set()
        for t in snapshot.trees:
            app = t.app or wire.App(t.tree_id)
            self.trees[t.tree_id] = MirrorTree(
                t.tree_id, app, t.root_id, t.seq, {n.id: n for n in t.nodes}
            )

    def apply(self, update: wire.TreeUpdate) -> bool:
        """Apply one update; ``False`` (and nothing changed) when it does not follow on, or when
        the tree waits for a snapshot (:meth:`mark_stale`)."""
        if self.resyncing and (0 in self.resyncing or update.tree_id in self.resyncing):
            return False
        tree = self.trees.get(update.tree_id)
        if tree is None:
            if update.base_seq != 0:
                self.mark_stale(update.tree_id)
                return False
            tree = self.trees[update.tree_id] = MirrorTree(
                update.tree_id, update.app or wire.App(update.tree_id)
            )
        elif update.base_seq != tree.seq:
            self.mark_stale(update.tree_id)
            return False
        nodes = tree.nodes
        for r in update.removed:
            nodes.pop(r, None)
        for n in update.nodes:
            nodes[n.id] = n
        if update.root_id:
            tree.root = update.root_id
        tree.seq = update.seq
        self.updates += 1
        return True

    def mark_stale(self, tree_id: int) -> None:
        """``tree_id`` (0: every tree) waits for a snapshot; its updates are ignored until then."""
        self.resyncing.add(tree_id)
        for tree in self.trees.values() if tree_id == 0 else [self.trees.get(tree_id)]:
            if tree is not None:
                tree.stale = True

    def remove(self, tree_id: int) -> None:
        self.trees.pop(tree_id, None)

    def node(self, node_ref: str | tuple[int, int]) -> wire.Node | None:
        tree_id, node_id = parse_ref(node_ref) if isinstance(node_ref, str) else node_ref
        tree = self.trees.get(tree_id)
        return tree.nodes.get(node_id) if tree else None

    def __iter__(self) -> Iterator[MirrorTree]:
        return iter(self.trees.values())

    def __len__(self) -> int:
        return sum(len(t.nodes) for t in self.trees.values())

    def find(
        self,
        *,
        role: str | int | None = None,
        name: str | None = None,
        text: str | None = None,
        states: Iterable[str] = (),
        app_id: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[wire.Node]:
        """Nodes matching every criterion, as the server's ``Query`` finds them
        (:mod:`libkiki.a11y.search`: names and text are case-insensitive substrings; at most
        ``limit`` nodes, 100 by default, capped at 1000)."""
        return [
            node
            for _, node in self.search(
                role=role, name=name, text=text, states=states, app_id=app_id, limit=limit
            )[0]
        ]

    def search(
        self,
        *,
        role: str | int | None = None,
        name: str | None = None,
        text: str | None = None,
        states: Iterable[str] = (),
        app_id: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> tuple[list[tuple[MirrorTree, wire.Node]], int]:
        """Like :meth:`find`, with each node's tree and the count of every match."""
        query = wire.Query(
            0,
            0,
            app_id or "",
            role_value(role) if role is not None else 0,
            name or "",
            text or "",
            wire.states_of(*states),
            limit,
        )
        return search(self.trees.values(), query)


Event = wire.Snapshot | wire.TreeUpdate | wire.TreeGone | wire.Resync


class _Connection:
    """Frames in and out over one a11y.sock connection, with request/answer matching."""

    def __init__(self, path: str | os.PathLike[str] | None, timeout: float, peer: str) -> None:
        self.path = Path(path) if path is not None else socket_path(A11Y_SOCKET)
        self.timeout = timeout
        self.peer = peer
        self.server: wire.Hello | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[wire.Message]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        # The server's last error that answered no request: a refusal (too many connections,
        # too much buffered) is sent so, just before the server closes the connection.
        self._last_word: wire.Error | None = None
        # Raw frames as received, for `kiki a11y capture`.
        self.on_frame: Callable[[bytes], None] | None = None

    async def _open(self, *first: Any) -> list[wire.Message]:
        """Connect and say Hello. The requests in ``first`` go out in the same write as the
        Hello, so their answers (returned in order) come after one round trip; a server's
        refusal of the connection is raised here either way."""
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.path), limit=1 << 20
            )
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unavailable(f"the a11y-server is not running ({self.path}: {exc})") from None
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        self.spawn(self._read_loop())
        asked = [self._ask(m) for m in (wire.Hello(0, wire.PROTOCOL_VERSION, self.peer), *first)]
        try:
            self._write(b"".join(frame for _, frame in asked))
            # One deadline for all of them: they went out together, so the last answer is due
            # within the one timeout too (not a fresh timeout after each earlier answer).
            deadline = asyncio.get_running_loop().time() + self.timeout
            answers = [await self._await_answer(rid, None, deadline) for rid, _ in asked]
        finally:
            for rid, _ in asked:
                self._forget(rid)
        hello = answers[0]
        assert isinstance(hello, wire.Hello)
        self.server = hello
        return answers[1:]

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await self._stack.aclose()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in this connection's task group; cancelled when the connection closes."""
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, message: wire.Message) -> None:
        self._write(encode_frame(wire.encode(message), CLIENT_MAX_FRAME))

    def _write(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise PeerGone("the connection to the a11y-server is closed")
        self._writer.write(data)

    async def request(self, message: Any, timeout: float | None = None) -> wire.Message:  # noqa: ASYNC109
        rid, frame = self._ask(message)
        try:
            self._write(frame)
            return await self._await_answer(rid, timeout)
        finally:
            self._forget(rid)

    def _ask(self, message: Any) -> tuple[int, bytes]:
        """A request id for ``message`` (its answer's future waits under it) and its frame."""
        rid = next(self._ids)
        frame = encode_frame(
            wire.encode(dataclasses.replace(message, request_id=rid)), CLIENT_MAX_FRAME
        )
        self._waiting[rid] = asyncio.get_running_loop().create_future()
        return rid, frame

    async def _await_answer(
        self,
        rid: int,
        timeout: float | None,  # noqa: ASYNC109
        deadline: float | None = None,
    ) -> wire.Message:
        """The answer to request ``rid`` (its error raised as the typed error), due within
        ``timeout`` (default: the connection's) or by the loop time ``deadline``."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + (timeout or self.timeout)
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self._waiting[rid]
        except TimeoutError:
            raise Timeout(
                f"no answer from the a11y-server within {timeout or self.timeout}s"
            ) from None
        if isinstance(answer, wire.Error):
            raise error_for_code(answer.code, answer.message)
        return answer

    def _forget(self, rid: int) -> None:
        """No one waits for ``rid`` any more (answered, failed, or given up on)."""
        fut = self._waiting.pop(rid, None)
        if fut is None:
            return
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            fut.exception()  # a failure no one awaited (the connection closed) is not logged

    async def _read_loop(self) -> None:
        assert self._reader is not None
        decoder = FrameDecoder(CLIENT_MAX_FRAME)
        try:
            while data := await self._reader.read(1 << 20):
                for frame in decoder.feed(data):
                    if isinstance(frame, Oversized):
                        raise frame.error
                    if self.on_frame is not None:
                        self.on_frame(frame)
                    try:
                        message = wire.decode(frame, CLIENT_LIMITS)
                    except InvalidFrame as exc:
                        log.warning("a11y-server sent a bad frame: %s", exc)
                        continue
                    self._route(message)
        except (ConnectionError, KikiError) as exc:
            log.debug("a11y connection ended: %s", exc)
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(self._why_closed())

    def _why_closed(self) -> KikiError:
        if self._last_word is not None:
            return error_for_code(self._last_word.code, self._last_word.message)
        return PeerGone("the a11y-server closed the connection")

    def _route(self, message: wire.Message) -> None:
        if isinstance(message, wire.Error) and not message.request_id:
            self._last_word = message
        fut = self._waiting.get(message.request_id) if message.request_id else None
        self.received(message)
        if fut is not None and not fut.done():
            fut.set_result(message)

    def received(self, message: wire.Message) -> None:
        """Unsolicited messages and answers, in arrival order (before the answer is handed on)."""
        if isinstance(message, wire.Error) and not message.request_id:
            log.warning("a11y-server: %s (%d)", message.message, message.code)


def _subscription(
    apps: Iterable[str],
    tree_id: int,
    root_id: int,
    roles: Iterable[str | int],
    max_depth: int,
) -> wire.Subscribe:
    return wire.Subscribe(
        0, tuple(apps), tree_id, root_id, tuple(role_value(r) for r in roles), max_depth
    )


class A11yClient(_Connection):
    """Subscribe to a mirror of the trees, query the server, act on nodes."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 10.0,
        peer: str = "libkiki",
        max_events: int = 1024,
    ) -> None:
        super().__init__(path, timeout, peer)
        self.mirror = Mirror()
        self.resyncs = 0
        self._tick = asyncio.Event()
        self._events: asyncio.Queue[Event] = asyncio.Queue(max_events)
        self.events_dropped = 0
        self._first: wire.Subscribe | None = None  # sent with the Hello (subscribing())

    @classmethod
    def subscribing(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        apps: Iterable[str] = (),
        tree_id: int = 0,
        root_id: int = 0,
        roles: Iterable[str | int] = (),
        max_depth: int = 0,
        timeout: float = 10.0,
        peer: str = "libkiki",
        max_events: int = 1024,
    ) -> A11yClient:
        """A client that subscribes as it connects (the filter of :meth:`subscribe`): its
        ``Subscribe`` goes out in the same write as its ``Hello``, so ``async with`` returns
        after one round trip with the snapshot in :attr:`mirror`.

        ::

            async with A11yClient.subscribing(apps=["org.example.Editor"]) as a11y:
                print(render_text(a11y.mirror))
        """
        client = cls(path, timeout=timeout, peer=peer, max_events=max_events)
        client._first = _subscription(apps, tree_id, root_id, roles, max_depth)
        return client

    async def __aenter__(self) -> A11yClient:
        try:
            await self._open(*([self._first] if self._first is not None else []))
        except BaseException:
            await self._close()  # the reader task and the socket of a refused connection
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def received(self, message: wire.Message) -> None:
        match message:
            case wire.Snapshot():
                self.mirror.load(message)
            case wire.TreeUpdate():
                asked = bool(self.mirror.resyncing)
                if not self.mirror.apply(message) and not asked:
                    self._ask_resync(message.tree_id, "gap in sequence numbers")
            case wire.TreeGone():
                self.mirror.remove(message.tree_id)
            case wire.Resync():
                asked = bool(self.mirror.resyncing)
                self.mirror.mark_stale(message.tree_id)
                if not asked:
                    self._ask_resync(message.tree_id, message.reason)
            case _:
                super().received(message)
                return
        self._tick.set()
        try:
            self._events.put_nowait(message)
        except asyncio.QueueFull:
            self.events_dropped += 1

    def _ask_resync(self, tree_id: int, reason: str) -> None:
        self.resyncs += 1
        log.info("resync (tree %d): %s", tree_id, reason)
        with contextlib.suppress(KikiError):
            self.send(wire.Resync(0, tree_id, reason))

    async def subscribe(
        self,
        *,
        apps: Iterable[str] = (),
        tree_id: int = 0,
        root_id: int = 0,
        roles: Iterable[str | int] = (),
        max_depth: int = 0,
    ) -> Mirror:
        """Subscribe; returns the mirror once the snapshot is in it."""
        await self.request(_subscription(apps, tree_id, root_id, roles, max_depth))
        return self.mirror

    async def wait_for(self, predicate: Callable[[Mirror], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Wait (bounded) until ``predicate(mirror)`` is truthy; returns its value."""
        async with asyncio.timeout(timeout):
            while not (value := predicate(self.mirror)):
                self._tick.clear()
                await self._tick.wait()
            return value

    async def events(self) -> AsyncIterator[Event]:
        """Every snapshot, update, removal and resync notice, as the mirror applies them."""
        while True:
            get = asyncio.ensure_future(self._events.get())
            closed = asyncio.ensure_future(self.closed.wait())
            try:
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if get in done:
                yield get.result()
            else:
                get.cancel()
                return

    async def query(
        self,
        *,
        role: str | int | None = None,
        name: str = "",
        text: str = "",
        states: Iterable[str] = (),
        app_id: str = "",
        tree_id: int = 0,
        limit: int = DEFAULT_LIMIT,
    ) -> tuple[list[wire.Node], int]:
        """Ask the server (no subscription needed): the matching nodes and the total count."""
        answer = await self.request(
            wire.Query(
                0,
                tree_id,
                app_id,
                role_value(role) if role is not None else 0,
                name,
                text,
                wire.states_of(*states),
                limit,
            )
        )
        assert isinstance(answer, wire.QueryResult)
        return list(answer.nodes), answer.total

    async def act(
        self,
        node_ref: str | tuple[int, int],
        action: str | int,
        value: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- also bounds the app at the server
    ) -> str:
        """Perform ``action`` on the node; returns the app's message, raises its error."""
        tree_id, node_id = parse_ref(node_ref) if isinstance(node_ref, str) else node_ref
        timeout_ms = int(timeout * 1000) if timeout else 0
        answer = await self.request(
            wire.ActionRequest(0, tree_id, node_id, action_value(action), value, timeout_ms),
            timeout=(timeout or self.timeout) + 1,
        )
        assert isinstance(answer, wire.ActionResult)
        return answer.message

    async def info(self) -> wire.Info:
        answer = await self.request(wire.GetInfo(0))
        assert isinstance(answer, wire.Info)
        return answer
