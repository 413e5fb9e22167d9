"""asyncio layer of the a11y-server: moves frames between a11y.sock peers and the core.

What each request means is decided by :mod:`~kiki_a11y_server.core` (and the frames are checked
by :mod:`.protocol`); this module only reads, writes, waits for an app's answer to an action
(under the core's timeout) and cleans up after a peer that leaves.

Writes to a subscriber go straight to its transport while the transport's buffer is below
``write_buffer``; past it the subscriber's own pump task waits for the buffer to drain while new
updates coalesce in the desktop's bounded queue. What the requests of one read cause to be
sent to their peer is held and written at once when the read is handled (one system call, and
one wakeup of a peer that waits for the answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.core import A11yCore, Flush, Session
from kiki_a11y_server.protocol import A11yConnection, Answer, Request, Violation
from libkiki.a11y import wire
from libkiki.admission import AdmissionLimits
from libkiki.errors import LimitExceeded, PeerGone
from libkiki.framing import BufferPool
from libkiki.paths import A11Y_SOCKET
from libkiki.peer import identify
from libkiki.principals import Who
from libkiki.servers import serve_stream
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")


@dataclass(eq=False)
class Peer:
    """One connection: its session in the core, and what moving its bytes takes."""

    session: Session
    writer: asyncio.StreamWriter
    tg: asyncio.TaskGroup | None = None  # the connection's tasks (cancelled when it ends)
    blocked: bool = False
    lost: bool = False  # the connection broke under a read or a write (a disconnect)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None  # started the first time its writes block
    # Actions forwarded to this peer as an app: our request id -> the requester's future.
    awaiting: dict[int, asyncio.Future[wire.Message]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # While the requests of one read are answered, their frames wait here and go out in one
    # write (a Hello's answer and the snapshot of the Subscribe sent with it reach the peer
    # together); None: written at once.
    held: list[bytes] | None = None
    held_bytes: int = 0

    def write(self, payload: bytes) -> None:
        self.send(_LEN.pack(len(payload)) + payload)

    def send(self, data: bytes) -> None:
        """Framed bytes, after everything sent before them."""
        if self.held is not None:
            self.held.append(data)
            self.held_bytes += len(data)
        elif not self.writer.transport.is_closing():
            # One write(), not writelines(): CPython 3.13's writelines() never pauses the
            # protocol, so drain() would not wait for a peer that does not read.
            self.writer.write(data)

    def hold(self) -> None:
        """Frames sent from now on wait for :meth:`release` (no await in between)."""
        self.held = []
        self.held_bytes = 0

    def release(self) -> None:
        held, self.held = self.held, None
        self.held_bytes = 0
        if held and not self.writer.transport.is_closing():
            self.writer.write(held[0] if len(held) == 1 else b"".join(held))

    def buffered(self) -> int:
        """Bytes written and not yet taken by the peer's socket, held ones included."""
        return self.writer.transport.get_write_buffer_size() + self.held_bytes


class A11yServer:
    def __init__(self, ctx: ServiceContext, config: A11yConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.core = A11yCore(ctx, config)
        self.limits = AdmissionLimits.of(
            config.max_connections, config.max_connections_per_user, os.getuid()
        )
        pool = config.max_buffered_bytes
        # One user holding partial frames must not make the server refuse everyone else's, and
        # each user can still send one frame of the largest size.
        per_user = min(pool, max(pool // 4, config.max_frame + 4))
        self.buffers = BufferPool(pool, per_user, self.limits.exempt)
        self.peers: dict[int, Peer] = {}  # by session key
        self._keys = itertools.count(1)
        # Actions from the broker's `act` tool: one more requester, under the same limit.
        self.tool_actions_in_flight = 0
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
        writer.transport.set_write_buffer_limits(high=self.config.write_buffer)
        peer = Peer(Session(next(self._keys), cred, conn), writer)
        self.peers[peer.session.key] = peer
        try:
            async with asyncio.TaskGroup() as tg:
                peer.tg = tg
                try:
                    await self._serve_peer(peer, reader, tg)
                except ConnectionError:
                    peer.lost = True
                finally:
                    # Whatever this peer still had going (its own actions, its pump) ends with
                    # it; requesters waiting on it as an app are told now, not at their timeout.
                    # No pump is started for it from here on (its task group is ending).
                    peer.tg = None
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
            peer.tg = peer.pump = None

    async def _serve_peer(
        self, peer: Peer, reader: asyncio.StreamReader, tg: asyncio.TaskGroup
    ) -> None:
        conn, cred, writer = peer.session.conn, peer.session.cred, peer.writer
        counters = self.ctx.counters
        while data := await reader.read(65536):
            peer.hold()
            try:
                for event in conn.receive_data(data):
                    if isinstance(event, Violation):
                        counters["protocol_errors"] += 1
                        log.info("peer %s: %s", cred.describe(), event.error)
                        peer.write(event.reply[4:])
                        if event.fatal:
                            peer.release()
                            await writer.drain()
                            return
                    elif isinstance(event, Request):
                        counters["requests"] += 1
                        self._request(peer, event.message, tg)
                        # One read holds hundreds of requests, each answer up to a thousand
                        # nodes: a peer that asks and does not read waits here, not in our
                        # memory.
                        if peer.buffered() > self.config.write_buffer:
                            peer.release()
                            await writer.drain()
                            peer.hold()
                    elif isinstance(event, Answer):
                        fut = peer.awaiting.pop(event.message.request_id, None)
                        if fut is not None and not fut.done():
                            fut.set_result(event.message)
                    else:
                        counters["stray_answers"] += 1
            finally:
                peer.release()
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
        self.peers.pop(peer.session.key, None)
        self._fail_awaiting(peer)
        if self.core.leave(peer.session):
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
        sub = peer.session.sub
        if sub is None or peer.blocked:
            return
        frames = self.core.desktop.take(sub)
        if not frames:
            return
        parts: list[bytes] = []
        for frame in frames:
            parts += (_LEN.pack(len(frame)), frame)
        if peer.writer.transport.is_closing():
            return
        peer.send(b"".join(parts))
        if peer.buffered() > self.config.write_buffer:
            peer.blocked = True
            peer.wake.set()
            if peer.pump is None and peer.tg is not None:
                # Most subscribers never block: their pump is made the first time they do.
                peer.pump = peer.tg.create_task(self._pump(peer))
                peer.tasks.add(peer.pump)

    def _flush_all(self) -> None:
        for peer in list(self.peers.values()):
            if peer.session.sub is not None:
                self._flush(peer)

    # -- requests: the core decides, this moves the result -------------------------------------

    def _request(self, peer: Peer, message: wire.Message, tg: asyncio.TaskGroup) -> None:
        outcome = self.core.handle(peer.session, message)
        if outcome.reply is not None:
            peer.write(outcome.reply)
        try:
            if outcome.flush is Flush.SELF:
                self._flush(peer)
            elif outcome.flush is Flush.ALL:
                self._flush_all()
        except Exception:
            # A bug of ours costs the subscribers their update, not the requester its connection.
            self.ctx.counters["internal_errors"] += 1
            log.exception("flushing subscribers after %s failed", type(message).__name__)
        if outcome.action is not None:
            task = tg.create_task(self._act(peer, outcome.action))
            peer.tasks.add(task)
            task.add_done_callback(peer.tasks.discard)

    async def _act(self, peer: Peer, request: wire.ActionRequest) -> None:
        rid = request.request_id
        reply: bytes | None
        try:
            answer = await self._route(request, peer.session.cred)
            reply = self.core.action_answered(rid, answer)
        except Exception as exc:  # the core says what the requester is told (KikiError or bug)
            reply = self.core.action_failed(rid, exc)
        finally:
            peer.session.actions_in_flight -= 1
        if reply is not None:
            peer.write(reply)

    async def act_for_tool(self, request: wire.ActionRequest, who: Who) -> wire.Message:
        """An action asked through the broker's ``act`` tool by ``who`` (the caller the broker
        names, or the remote person a trusted delegate called for): routed like a
        connection's, under the same ``max_actions_in_flight`` limit (counted for all tool
        calls together)."""
        self.core.admit_action(self.tool_actions_in_flight)
        self.tool_actions_in_flight += 1
        try:
            return await self._route(request, who)
        finally:
            self.tool_actions_in_flight -= 1

    async def _route(self, request: wire.ActionRequest, who: Who) -> wire.Message:
        """Send the action to the app the core routes it to, and wait for its answer."""
        forward = self.core.route(request, who)
        try:
            owner = self.peers.get(forward.owner.key)
            if owner is None:
                raise PeerGone(f"the app of tree {forward.request.tree_id} is gone")
            forward_id = forward.request.request_id
            fut: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
            owner.awaiting[forward_id] = fut
            owner.write(wire.encode(forward.request))
            try:
                async with asyncio.timeout(forward.timeout):
                    return await fut
            except TimeoutError:
                raise forward.timed_out() from None
            finally:
                owner.awaiting.pop(forward_id, None)
        finally:
            self.core.settle(forward)

    async def reload_policy(self) -> None:
        if self.core.reload_policy():
            self._flush_all()

    async def keep_status(self, every: float = 2.0) -> None:
        """STATUS= at most every ``every`` seconds: a busy desktop must not flood the manager
        (a notify socket nobody drains would block us once its queue is full)."""
        mode = "activated" if self.ctx.listeners.activated else "bound"
        while True:
            text = self.core.status_text(mode)
            if text != self.ctx.status:
                self.ctx.status = text
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def serve(ctx: ServiceContext) -> AsyncIterator[None]:
    config: A11yConfig = ctx.config
    listener = ctx.listen()
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

            provider = make_provider(server.core, server.act_for_tool)
            tools = tg.create_task(provider.keep_registered())
        try:
            yield
        finally:
            status.cancel()
            if tools is not None:
                tools.cancel()
