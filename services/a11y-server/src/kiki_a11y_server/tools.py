"""The a11y-server's tools on the broker: ``dev.kiki.a11y.snapshot``, ``find`` and ``act``,
and the stream ``dev.kiki.a11y.subscribeChanges`` (:mod:`.changes`).

The server connects to ``tools.sock`` as a tool provider (libkiki's :class:`ToolProvider`) and
answers from its own in-memory desktop: no extra hop through ``a11y.sock``. The tools see the
server through a narrow interface: the core (:class:`~kiki_a11y_server.core.A11yCore`) for what
the caller may read, and one function that routes an action to its app and waits for the
answer. Each call is decided by the a11y policy for the caller the broker names
(``call.peer``), as a request on ``a11y.sock`` would be: the broker's own policy says who may
call a tool, the a11y policy which apps' trees the caller may read or act on. A call a trusted
delegate (the sync relay) made on behalf of a remote person carries that person
(``_meta["dev.kiki/onBehalfOf"]``, beside the caller), and is decided for them alone
(:mod:`libkiki.principals`: ``remote:`` rules, nothing by default), never for the delegate.
Both are believed for the same reason: they come on the connection this server opened to the
broker's socket, where only the broker answers, and the broker names a person only for a
delegate its policy trusts (anyone else's ``onBehalfOf`` it refuses). The broker may
start after us or restart: :meth:`ToolProvider.keep_registered` registers again, and its
absence is never fatal. The stream has no caller to decide for (one upstream serves every
subscriber the broker admits): it carries the trees the a11y policy lets anyone subscribe to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kiki_a11y_server.changes import NSID as CHANGES
from kiki_a11y_server.changes import ChangeFeed
from libkiki.a11y import wire
from libkiki.a11y.client import action_value, parse_ref, role_value
from libkiki.a11y.render import node_json, render_text
from libkiki.a11y.search import search
from libkiki.errors import InvalidParams, PermissionDenied, error_for_code
from libkiki.paths import TOOLS_SOCKET, socket_path
from libkiki.principals import Remote, Who, remote_of
from libkiki.streams_provider import StreamContext
from libkiki.tools import ON_BEHALF_OF_META, ToolCall, ToolProvider

if TYPE_CHECKING:
    from kiki_a11y_server.core import A11yCore

log = logging.getLogger(__name__)


# Routes an action for a caller to the app that owns the tree; the app's answer.
Act = Callable[[wire.ActionRequest, Who], Awaitable[wire.Message]]


def make_provider(core: A11yCore, act_for: Act) -> ToolProvider:
    provider = ToolProvider(socket_path(TOOLS_SOCKET))

    @provider.tool("dev.kiki.a11y.snapshot")
    async def snapshot(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        app_id = args.get("appId")
        trees = core.readable(_caller(call), app_id or "")
        if app_id and not trees:
            raise error_for_code(-32004, f"no app {app_id!r} has published a tree")
        rendering = render_text(
            trees,
            max_nodes=args.get("maxNodes", 400),
            max_chars=args.get("maxChars", 16_000),
            max_depth=args.get("maxDepth", 64),
        )
        return {
            "text": rendering.text,
            "shown": rendering.nodes,
            "total": rendering.total,
            "truncated": rendering.truncated,
        }

    @provider.tool("dev.kiki.a11y.find")
    async def find(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        role = args.get("role")
        state = args.get("state")
        try:
            states = wire.states_of(state) if state else 0
        except ValueError as exc:
            raise InvalidParams(str(exc)) from None
        query = wire.Query(
            0,
            0,
            args.get("appId", ""),
            role_value(role) if role else 0,
            args.get("name", ""),
            args.get("text", ""),
            states,
            args.get("limit", 0),  # 0: libkiki.a11y.search's default, as on a11y.sock
        )
        found, total = search(core.readable(_caller(call), query.app_id), query)
        return {"nodes": [node_json(node) for _, node in found], "total": total}

    @provider.tool("dev.kiki.a11y.act")
    async def act(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        tree_id, node_id = parse_ref(args["ref"])
        request = wire.ActionRequest(
            0, tree_id, node_id, action_value(args["action"]), args.get("value", "")
        )
        who = _caller(call)
        try:
            answer = await act_for(request, who)
        except PermissionDenied:
            if isinstance(who, Remote):
                log.info("%s refused: %s on %s", _relayed(who, call), args["action"], args["ref"])
            raise
        if isinstance(answer, wire.Error):
            raise error_for_code(answer.code, answer.message)
        if isinstance(who, Remote):  # the broker's audit has the call; this, what it reached
            log.info("%s: %s on %s", _relayed(who, call), args["action"], args["ref"])
        message = answer.message if isinstance(answer, wire.ActionResult) else ""
        return {"ok": True, "message": message}

    @provider.subscription(CHANGES)
    async def changes(params: dict[str, Any], stream: StreamContext) -> AsyncIterator[Any]:
        wake = asyncio.Event()
        feed = ChangeFeed(
            core.desktop,
            core.streamable,
            app_id=params.get("appId") or "",
            max_pending_ids=core.config.changes_max_pending_ids,
            max_message_bytes=core.config.changes_max_message_bytes,
            on_pending=wake.set,
        )
        core.desktop.watchers.append(feed)
        if feed.pending:  # the trees already there, whole, first
            wake.set()
        try:
            while True:
                await wake.wait()
                wake.clear()
                for message in feed.take():
                    yield message  # waits while the broker is not reading: changes merge
                # The bound on the rate: what comes meanwhile merges per tree.
                await asyncio.sleep(core.config.changes_interval)
        finally:
            core.desktop.watchers.remove(feed)

    return provider


def _caller(call: ToolCall) -> Who:
    """Whom the call is decided for: the remote person the broker says a trusted delegate
    called for, else the caller the broker names."""
    cred = call.peer
    if cred is None:  # a broker that names no caller: nobody's trees are anybody's
        raise PermissionDenied("the broker did not say who is calling")
    behalf = (call.request.meta or {}).get(ON_BEHALF_OF_META)
    return cred if behalf is None else remote_of(behalf)


def _relayed(remote: Remote, call: ToolCall) -> str:
    delegate = call.peer
    return f"{remote} (relayed by {delegate.describe() if delegate is not None else '?'})"
