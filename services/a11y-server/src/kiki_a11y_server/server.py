"""asyncio layer of the a11y-server: moves frames between a11y.sock peers and the desktop.

The protocol logic lives in :mod:`~kiki_a11y_server.protocol` (frames), :mod:`.tree` (update
rules) and :mod:`.desktop` (the merged view and subscriber queues); this module only reads,
writes, times out actions and cleans up after a peer that leaves.

Writes to a subscriber go straight to its transport while the transport's buffer is below
``write_buffer``; past it the subscriber's own pump task waits for the buffer to drain while new
updates coalesce in the desktop's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydantic

from kiki_a11y_server.desktop import Desktop, Subscriber
from kiki_a11y_server.policy import A11yPolicy, Right
from kiki_a11y_server.protocol import (
    PUBLISHER,
    SUBSCRIBER,
    A11yConnection,
    Answer,
    Request,
    Violation,
)
from kiki_a11y_server.tree import Tree, TreeLimits
from libkiki.a11y import wire
from libkiki.admission import AdmissionLimits
from libkiki.config import ServiceConfig
from libkiki.errors import (
    InvalidParams,
    KikiError,
    LimitExceeded,
    MethodNotFound,
    PeerGone,
    Timeout,
)
from libkiki.framing import BufferPool
from libkiki.paths import A11Y_SOCKET, config_dir, socket_path
from libkiki.peer import PeerCred, identify
from libkiki.servers import serve_stream
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")


class A11yConfig(ServiceConfig):
    max_frame: int = 16 << 20
    # Bytes of unfinished frames held for all connections together, and a quarter of that (at
    # least one max_frame) per uid; a peer whose frame would go past either gets -32005.
    max_buffered_bytes: int = pydantic.Field(default=128 << 20, ge=1 << 16)
    max_nodes_per_frame: int = pydantic.Field(default=100_000, ge=1)
    max_tree_nodes: int = pydantic.Field(default=200_000, ge=1)
    max_tree_depth: int = pydantic.Field(default=512, ge=1)
    # A subscriber's coalesced backlog beyond which it is told to resync.
    max_pending_bytes: int = pydantic.Field(default=4 << 20, ge=1024)
    # A subscriber's backlog of distinct trees (updates and removals) beyond which it resyncs.
    max_pending_trees: int = pydantic.Field(default=1024, ge=1)
    # A subscriber transport's buffer beyond which updates wait (and coalesce).
    write_buffer: int = pydantic.Field(default=1 << 20, ge=4096)
    action_timeout: float = pydantic.Field(default=5.0, gt=0)
    max_actions_in_flight: int = pydantic.Field(default=16, ge=1)
    # Offer dev.kiki.a11y.* tools on the broker's tools.sock, registering again whenever the
    # broker comes back (libkiki's ToolProvider.keep_registered); false: no broker tools.
    broker_tools: bool = True
    # Who may read, subscribe to and act on which tree; default <config dir>/a11y-policy.toml.
    policy_file: str = ""


@dataclass(eq=False)
class Peer:
    key: int
    cred: PeerCred
    conn: A11yConnection
    writer: asyncio.StreamWriter
    label: str = ""
    tree: Tree | None = None
    sub: Subscriber | None = None
    blocked: bool = False
    lost: bool = False  # the connection broke under a read or a write (a disconnect)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Actions forwarded to this peer as an app: our request id -> the requester's future.
    awaiting: dict[int, asyncio.Future[wire.Message]] = field(default_factory=dict)
    request_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    actions_in_flight: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def write(self, payload: bytes) -> None:
        if not self.writer.transport.is_closing():
            # One write(), not writelines(): CPython 3.13's writelines() never pauses the
            # protocol, so drain() would not wait for a peer that does not read.
            self.writer.write(_LEN.pack(len(payload)) + payload)

    def send(self, message: wire.Message) -> None:
        self.write(wire.encode(message))


def app_identity(cred: PeerCred) -> wire.App:
    """Who the kernel says the publisher is: its cgroup's app id, else its pid."""
    app_id = cred.app_id or f"pid-{cred.pid}"
    return wire.App(0, app_id, cred.pid, cred.uid, cred.unit or "")


class A11yServer:
    def __init__(self, ctx: ServiceContext, config: A11yConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.desktop = Desktop(
            max_pending_bytes=config.max_pending_bytes,
            max_pending_trees=config.max_pending_trees,
            tree_limits=TreeLimits(config.max_tree_nodes, config.max_tree_depth),
        )
        self.limits = AdmissionLimits.of(
            config.max_connections, config.max_connections_per_user, os.getuid()
        )
        pool = config.max_buffered_bytes
        # One user holding partial frames must not make the server refuse everyone else's, and
        # each user can still send one frame of the largest size.
        per_user = min(pool, max(pool // 4, config.max_frame + 4))
        self.buffers = BufferPool(pool, per_user, self.limits.exempt)
        self.peers: dict[int, Peer] = {}
        self.owners: dict[int, Peer] = {}  # tree id -> publisher
        self._keys = itertools.count(1)
        # Actions from the broker's `act` tool: one more requester, under the same limit.
        self.tool_actions_in_flight = 0
        self.policy_path = (
            Path(config.policy_file) if config.policy_file else config_dir() / "a11y-policy.toml"
        )
        self.policy = A11yPolicy.load(self.policy_path)
        ctx.reload_hooks.append(self.reload_policy)

    # -- connections ---------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            cred = await identify(sock)
        except OSError as exc:  # e.g. it left before it could be identified
            log.info("dropping a connection whose identity cannot be read: %s", exc)
            return
        conn = A11yConnection(
            self.config.max_frame, self.config.max_nodes_per_frame, self.buffers.account(cred.uid)
        )
        transport = writer.transport
        transport.set_write_buffer_limits(high=self.config.write_buffer)
        peer = Peer(next(self._keys), cred, conn, writer)
        self.peers[peer.key] = peer
        try:
            async with asyncio.TaskGroup() as tg:
                peer.tasks.add(tg.create_task(self._pump(peer)))
                try:
                    await self._serve_peer(peer, reader, tg)
                except ConnectionError:
                    peer.lost = True
                finally:
                    # Whatever this peer still had going (its own actions, its pump) ends with
                    # it; requesters waiting on it as an app are told now, not at their timeout.
                    self._fail_awaiting(peer)
                    for task in peer.tasks:
                        task.cancel()
        finally:
            if peer.lost:
                self.ctx.counters["disconnects"] += 1
            self._gone(peer)
            # Its unfinished frame goes now, not at some later garbage collection: the peer's
            # finished tasks hold exceptions whose frames hold the peer (a reference cycle).
            conn.close()
            peer.tasks.clear()
            peer.awaiting.clear()

    async def _serve_peer(
        self, peer: Peer, reader: asyncio.StreamReader, tg: asyncio.TaskGroup
    ) -> None:
        conn, cred, writer, counters = peer.conn, peer.cred, peer.writer, self.ctx.counters
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, Violation):
                    counters["protocol_errors"] += 1
                    log.info("peer %s: %s", cred.describe(), event.error)
                    peer.write(event.reply[4:])
                    if event.fatal:
                        await writer.drain()
                        return
                elif isinstance(event, Request):
                    counters["requests"] += 1
                    self._dispatch(peer, event.message, tg)
                    # One read holds hundreds of requests, each answer up to a thousand nodes:
                    # a peer that asks and does not read waits here, not in our memory.
                    if writer.transport.get_write_buffer_size() > self.config.write_buffer:
                        await writer.drain()
                elif isinstance(event, Answer):
                    fut = peer.awaiting.pop(event.message.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(event.message)
                else:
                    counters["stray_answers"] += 1
            await writer.drain()
        if (leftover := conn.eof()) is not None:
            counters["protocol_errors"] += 1
            log.info("peer %s: %s", cred.describe(), leftover.error)

    @staticmethod
    def _fail_awaiting(peer: Peer) -> None:
        for fut in peer.awaiting.values():
            if not fut.done():
                fut.set_exception(PeerGone("the app closed its connection before answering"))

    def _gone(self, peer: Peer) -> None:
        self.peers.pop(peer.key, None)
        if peer.sub is not None:
            self.desktop.unsubscribe(peer.key)
        self._fail_awaiting(peer)
        if peer.tree is not None:
            tree = peer.tree
            self.owners.pop(tree.tree_id, None)
            self.desktop.remove_tree(tree.tree_id)
            log.info("tree %d of %s removed (its app left)", tree.tree_id, tree.app.app_id)
            self._flush_all()

    async def _pump(self, peer: Peer) -> None:
        """Waits for a blocked subscriber's buffer to drain, then sends what piled up. A peer
        that disconnects meanwhile ends the pump quietly (the reader sees it too, or has): a
        disconnect, not a failure of the connection's task group."""
        while True:
            await peer.wake.wait()
            peer.wake.clear()
            try:
                await peer.writer.drain()
            except ConnectionError:
                peer.lost = True
                return
            peer.blocked = False
            self._flush(peer)

    def _flush(self, peer: Peer) -> None:
        if peer.sub is None or peer.blocked:
            return
        frames = self.desktop.take(peer.sub)
        if not frames:
            return
        parts: list[bytes] = []
        for frame in frames:
            parts += (_LEN.pack(len(frame)), frame)
        transport = peer.writer.transport
        if transport.is_closing():
            return
        transport.write(b"".join(parts))  # not writelines(): see Peer.write
        if transport.get_write_buffer_size() > self.config.write_buffer:
            peer.blocked = True
            peer.wake.set()

    def _flush_all(self) -> None:
        for peer in list(self.peers.values()):
            if peer.sub is not None:
                self._flush(peer)

    # -- requests ------------------------------------------------------------------------------

    def _dispatch(self, peer: Peer, message: wire.Message, tg: asyncio.TaskGroup) -> None:
        rid = message.request_id
        try:
            match message:
                case wire.Hello():
                    peer.label = message.peer[:256]
                    peer.send(wire.Hello(rid, wire.PROTOCOL_VERSION, self.ctx.name))
                case wire.GetInfo():
                    peer.send(self._info(rid))
                case wire.TreeUpdate():
                    self._publish(peer, message)
                case wire.Subscribe():
                    self.check_targets(peer.cred, "subscribe", message.tree_id, message.apps)
                    self.desktop.unsubscribe(peer.key)
                    visible = self.visible(peer.cred, "subscribe")
                    peer.sub = self.desktop.subscribe(peer.key, message, visible)
                    peer.conn.became(SUBSCRIBER)
                    self.ctx.counters["subscriptions"] += 1
                    self._flush(peer)
                case wire.Resync():
                    self.desktop.resync(peer.key, rid)
                    self.ctx.counters["resyncs_requested"] += 1
                    self._flush(peer)
                case wire.Query():
                    apps = (message.app_id,) if message.app_id else ()
                    self.check_targets(peer.cred, "read", message.tree_id, apps)
                    nodes, total = self.desktop.query(message, self.visible(peer.cred, "read"))
                    peer.write(wire.encode_raw(rid, wire.RawQueryResult(nodes, total)))
                case wire.ActionRequest():
                    self._admit_action(peer.actions_in_flight)
                    peer.actions_in_flight += 1
                    task = tg.create_task(self._act(peer, message))
                    peer.tasks.add(task)
                    task.add_done_callback(peer.tasks.discard)
                case _:  # the protocol core admits nothing else (RULES)
                    raise MethodNotFound(f"the server does not take {type(message).__name__}")
        except KikiError as exc:
            self.ctx.counters["errors"] += 1
            peer.send(wire.Error(rid, exc.jsonrpc_code, exc.message))
        except Exception:
            # A bug of ours: logged with its traceback, never shown to the peer.
            self.ctx.counters["internal_errors"] += 1
            log.exception(
                "handling %s from %s failed", type(message).__name__, peer.cred.describe()
            )
            peer.send(wire.Error(rid, -32603, "Internal error"))

    def _publish(self, peer: Peer, update: wire.TreeUpdate) -> None:
        tree = peer.tree
        if tree is None:
            app = app_identity(peer.cred)._replace(label=peer.label)
            tree = self.desktop.new_tree(app)
        try:
            change = self.desktop.publish(tree, update)
        except InvalidParams:
            self.ctx.counters["updates_rejected"] += 1
            if peer.tree is None:
                self.desktop.trees.pop(tree.tree_id, None)
            raise
        if peer.tree is None:
            peer.tree = tree
            peer.conn.became(PUBLISHER)
            self.owners[tree.tree_id] = peer
            log.info("tree %d published by %s", tree.tree_id, peer.cred.describe())
        self.ctx.counters["updates"] += 1
        if update.request_id:
            peer.send(wire.Ack(update.request_id, tree.tree_id, change.seq))
        self._flush_all()

    async def _act(self, peer: Peer, request: wire.ActionRequest) -> None:
        rid = request.request_id
        counters = self.ctx.counters
        try:
            answer = await self._route_action(request, peer.cred)
            counters["actions"] += 1
            if isinstance(answer, wire.Error):
                peer.send(wire.Error(rid, answer.code, answer.message))
            elif isinstance(answer, wire.ActionResult):
                peer.send(wire.ActionResult(rid, answer.message))
        except KikiError as exc:
            counters["actions_failed"] += 1
            peer.send(wire.Error(rid, exc.jsonrpc_code, exc.message))
        except Exception:
            counters["internal_errors"] += 1
            log.exception("routing an action failed")
            peer.send(wire.Error(rid, -32603, "Internal error"))
        finally:
            peer.actions_in_flight -= 1

    def _admit_action(self, in_flight: int) -> None:
        if in_flight >= self.config.max_actions_in_flight:
            raise LimitExceeded(f"at most {self.config.max_actions_in_flight} actions in flight")

    async def act_for_tool(self, request: wire.ActionRequest, cred: PeerCred) -> wire.Message:
        """An action asked through the broker's ``act`` tool by ``cred`` (the caller the broker
        names): routed like a connection's, under the same ``max_actions_in_flight`` limit
        (counted for all tool calls together)."""
        self._admit_action(self.tool_actions_in_flight)
        self.tool_actions_in_flight += 1
        try:
            return await self._route_action(request, cred)
        finally:
            self.tool_actions_in_flight -= 1

    # -- authorization (kiki_a11y_server.policy) -------------------------------------------------

    async def reload_policy(self) -> None:
        self.policy = A11yPolicy.load(self.policy_path)
        log.info("reloaded %s", self.policy_path)

    def visible(self, cred: PeerCred, right: Right) -> Callable[[wire.App], bool] | None:
        """Which trees ``cred`` may see for ``right``; None for every tree. The policy in force
        when asked decides (a reload applies to what a subscription is sent next)."""
        if self.policy.sees_all(cred, right):
            return None
        return lambda app: self.policy.allows(cred, right, app)

    def check_targets(
        self, cred: PeerCred, right: Right, tree_id: int, apps: Sequence[str]
    ) -> None:
        """A request that names trees (by id or app id) none of which ``cred`` may see is
        refused (PermissionDenied), rather than answered as if they were not there."""
        if not tree_id and not apps:
            return
        named = [
            t.app
            for t in self.desktop
            if (not tree_id or t.tree_id == tree_id) and (not apps or t.app.app_id in apps)
        ]
        if named and not any(self.policy.allows(cred, right, app) for app in named):
            self.policy.check(cred, right, named[0])

    async def _route_action(self, request: wire.ActionRequest, cred: PeerCred) -> wire.Message:
        if (target := self.desktop.trees.get(request.tree_id)) is not None:
            self.policy.check(cred, "act", target.app)  # before saying anything of its nodes
        tree, node = self.desktop.find_node(request.tree_id, request.node_id)
        name = wire.ACTION_NAMES.get(request.action, str(request.action))
        if request.action not in node.actions:
            can = ", ".join(wire.ACTION_NAMES[a] for a in node.actions) or "nothing"
            raise InvalidParams(f"node {node.id} does not support {name} (it supports {can})")
        owner = self.owners.get(tree.tree_id)
        if owner is None:
            raise PeerGone(f"the app of tree {tree.tree_id} is gone")
        timeout = self.config.action_timeout
        if request.timeout_ms:
            timeout = min(timeout, request.timeout_ms / 1000)
        forward_id = next(owner.request_ids)
        fut: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        owner.awaiting[forward_id] = fut
        owner.conn.expect(forward_id)
        owner.send(
            wire.ActionRequest(
                forward_id,
                tree.tree_id,
                node.id,
                request.action,
                request.value,
                int(timeout * 1000),
            )
        )
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise Timeout(
                f"{tree.app.app_id} did not answer {name} on node {node.id} within {timeout:g}s"
            ) from None
        finally:
            owner.awaiting.pop(forward_id, None)
            owner.conn.forget(forward_id)

    def _info(self, request_id: int) -> wire.Info:
        self.ctx.counters["trees"] = len(self.desktop.trees)
        self.ctx.counters["nodes"] = self.desktop.node_count
        self.ctx.counters["subscribers"] = len(self.desktop.subscribers)
        self.ctx.counters["subscriber_resyncs"] = sum(
            s.resyncs for s in self.desktop.subscribers.values()
        )
        return wire.Info(
            request_id,
            self.ctx.name,
            self.ctx.version,
            self.ctx.info()["pid"],
            int((time.monotonic() - self.ctx.started) * 1000),
            self.ctx.status,
            tuple(sorted(self.ctx.counters.items())),
        )

    async def keep_status(self, every: float = 2.0) -> None:
        """STATUS= at most every ``every`` seconds: a busy desktop must not flood the manager
        (a notify socket nobody drains would block us once its queue is full)."""
        mode = "activated" if self.ctx.listeners.activated else "bound"
        while True:
            trees = len(self.desktop.trees)
            text = (
                f"serving a11y.sock ({mode}): {trees} app tree{'s' if trees != 1 else ''}, "
                f"{len(self.desktop.subscribers)} subscribers"
            )
            if text != self.ctx.status:
                self.ctx.status = text
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: A11yConfig = ctx.config
    listener = ctx.listeners.unix("a11y", socket_path(A11Y_SOCKET))
    server = A11yServer(ctx, config)

    def refusal(error: LimitExceeded) -> bytes:
        return A11yConnection(config.max_frame).send(
            wire.Error(0, error.jsonrpc_code, error.message)
        )

    async with (
        serve_stream(
            listener,
            server.handle,
            limits=server.limits,
            refusal=refusal,
            counters=ctx.counters,
            name=A11Y_SOCKET,
        ),
        asyncio.TaskGroup() as tg,
    ):
        ctx.status = f"serving a11y.sock ({'activated' if ctx.listeners.activated else 'bound'})"
        status = tg.create_task(server.keep_status())
        tools = None
        if config.broker_tools:
            from kiki_a11y_server.tools import make_provider

            tools = tg.create_task(make_provider(server).keep_registered())
        try:
            yield
        finally:
            status.cancel()
            if tools is not None:
                tools.cancel()
