"""The a11y-server's decisions, sans-I/O: a verified request from a connection in, what to send.

:class:`A11yCore` answers each request a connection's protocol core admitted
(:mod:`.protocol`): who may see and act on which tree (:mod:`.policy`), what a publisher's update
does to the desktop (:mod:`.desktop`, :mod:`.tree`), which app an action goes to and how long it
may take, what the counters say. It returns an :class:`Outcome` (a frame for the requester,
which subscribers have new frames to be sent, an admitted action to route); :mod:`.server` moves
the bytes and owns the futures that wait for an app's answer. Nothing here reads or writes a
socket or awaits.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiki_a11y_server.config import A11yConfig
from kiki_a11y_server.desktop import Desktop, Subscriber
from kiki_a11y_server.policy import A11yPolicy, Right
from kiki_a11y_server.protocol import PUBLISHER, SUBSCRIBER, A11yConnection
from kiki_a11y_server.tree import Tree, TreeLimits
from libkiki.a11y import wire
from libkiki.errors import (
    InvalidParams,
    KikiError,
    LimitExceeded,
    MethodNotFound,
    PeerGone,
    Timeout,
)
from libkiki.paths import config_dir
from libkiki.peer import PeerCred
from libkiki.principals import Who
from libkiki.service import ServiceContext

log = logging.getLogger(__name__)

INTERNAL_ERROR = -32603


@dataclass(eq=False)
class Session:
    """What the core knows of one connection (the server keeps its transport and futures)."""

    key: int
    cred: PeerCred
    conn: A11yConnection
    label: str = ""
    tree: Tree | None = None  # the tree it publishes, once its first update was accepted
    sub: Subscriber | None = None
    actions_in_flight: int = 0
    # Ids of the actions forwarded to this connection as an app.
    request_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class Flush(enum.Enum):
    """Whose subscription has new frames after a request."""

    NONE = 0
    SELF = 1  # the requester's (a new subscription, a resync)
    ALL = 2  # every subscriber's (a tree changed)


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes | None = None  # an encoded frame for the requester
    flush: Flush = Flush.NONE
    # An admitted action: the server routes it (A11yCore.route) and answers when the app does.
    action: wire.ActionRequest | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """An action on its way to the app that owns the tree."""

    owner: Session
    request: wire.ActionRequest  # as sent to the app: the id is the owner's
    timeout: float  # seconds
    what: str  # "<app> ... <action> on node <id>", for the timeout's message

    def timed_out(self) -> Timeout:
        return Timeout(f"{self.what} within {self.timeout:g}s")


def app_identity(cred: PeerCred) -> wire.App:
    """Who the kernel says the publisher is: its cgroup's app id, else its pid."""
    app_id = cred.app_id or f"pid-{cred.pid}"
    return wire.App(0, app_id, cred.pid, cred.uid, cred.unit or "")


class A11yCore:
    def __init__(self, ctx: ServiceContext, config: A11yConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.desktop = Desktop(
            max_pending_bytes=config.max_pending_bytes,
            max_pending_trees=config.max_pending_trees,
            tree_limits=TreeLimits(config.max_tree_nodes, config.max_tree_depth),
        )
        self.owners: dict[int, Session] = {}  # tree id -> its publisher
        # tree id -> the app id its publisher said it is for, trusted or not (deny rules)
        self.claims: dict[int, str] = {}
        self.named: set[int] = set()  # trees whose publisher's claim was taken
        self.policy_path = (
            Path(config.policy_file) if config.policy_file else config_dir() / "a11y-policy.toml"
        )
        self.policy = A11yPolicy.load(self.policy_path)
        # Every connection's Hello gets the same answer: encoded once, its request id patched.
        self._hello = wire.encode(
            wire.Hello(wire.PLACEHOLDER_ID, wire.PROTOCOL_VERSION, self.ctx.name)
        )

    # -- requests ------------------------------------------------------------------------------

    def handle(self, session: Session, message: wire.Message) -> Outcome:
        """Answer one request ``session`` sent; a refusal is an ``Error`` frame, never raised."""
        rid = message.request_id
        try:
            return self._handle(session, message)
        except KikiError as exc:
            self.ctx.counters["errors"] += 1
            return Outcome(wire.encode(wire.Error(rid, exc.jsonrpc_code, exc.message)))
        except Exception:
            # A bug of ours: logged with its traceback, never shown to the peer.
            self.ctx.counters["internal_errors"] += 1
            log.exception(
                "handling %s from %s failed", type(message).__name__, session.cred.describe()
            )
            return Outcome(wire.encode(wire.Error(rid, INTERNAL_ERROR, "Internal error")))

    def _handle(self, session: Session, message: wire.Message) -> Outcome:
        rid = message.request_id
        match message:
            case wire.Hello():
                session.label = message.peer[:256]
                return Outcome(wire.with_request_id(self._hello, rid))
            case wire.GetInfo():
                return Outcome(wire.encode(self.info(rid)))
            case wire.TreeUpdate():
                return self._publish(session, message)
            case wire.Subscribe():
                self.check_targets(session.cred, "subscribe", message.tree_id, message.apps)
                self.desktop.unsubscribe(session.key)
                visible = self.visible(session.cred, "subscribe")
                session.sub = self.desktop.subscribe(session.key, message, visible)
                session.conn.became(SUBSCRIBER)
                self.ctx.counters["subscriptions"] += 1
                return Outcome(flush=Flush.SELF)
            case wire.Resync():
                self.desktop.resync(session.key, rid)
                self.ctx.counters["resyncs_requested"] += 1
                return Outcome(flush=Flush.SELF)
            case wire.Query():
                apps = (message.app_id,) if message.app_id else ()
                self.check_targets(session.cred, "read", message.tree_id, apps)
                nodes, total = self.desktop.query(message, self.visible(session.cred, "read"))
                return Outcome(wire.encode_raw(rid, wire.RawQueryResult(nodes, total)))
            case wire.ActionRequest():
                self.admit_action(session.actions_in_flight)
                session.actions_in_flight += 1
                return Outcome(action=message)
            case _:  # the protocol core admits nothing else (RULES)
                raise MethodNotFound(f"the server does not take {type(message).__name__}")

    def _publish(self, session: Session, update: wire.TreeUpdate) -> Outcome:
        tree = session.tree
        if tree is None:
            app, claimed = self._identity(session, update.app)
            tree = self.desktop.new_tree(app)
            # Known before the update goes out: who may see it can depend on its publisher
            # (a rule's `publishers`) and its claim (deny rules), and the first update is the
            # tree's first appearance.
            self.owners[tree.tree_id] = session
            if claimed:
                self.claims[tree.tree_id] = claimed
                if app.app_id == claimed:
                    self.named.add(tree.tree_id)
        try:
            change = self.desktop.publish(tree, update)
        except BaseException as exc:
            if isinstance(exc, InvalidParams):
                self.ctx.counters["updates_rejected"] += 1
            if session.tree is None:  # whatever went wrong, the tree was never made
                self.desktop.trees.pop(tree.tree_id, None)
                self.owners.pop(tree.tree_id, None)
                self.claims.pop(tree.tree_id, None)
                self.named.discard(tree.tree_id)
            raise
        if session.tree is None:
            session.tree = tree
            session.conn.became(PUBLISHER)
            log.info("tree %d published by %s", tree.tree_id, session.cred.describe())
        self.ctx.counters["updates"] += 1
        reply = None
        if update.request_id:
            reply = wire.encode(wire.Ack(update.request_id, tree.tree_id, change.seq))
        return Outcome(reply, Flush.ALL)

    def _identity(self, session: Session, claim: wire.App | None) -> tuple[wire.App, str]:
        """The app a new tree is for: its publisher's, or the one a trusted publisher names
        (``[[publisher]]`` in the policy; its app id, pid, unit and label, never a uid: the
        tree is its publisher's user's); and the app id claimed ("" for none), which deny
        rules hold on even when the claim is ignored."""
        own = app_identity(session.cred)._replace(label=session.label)
        if claim is None or not (claim.app_id or claim.pid > 0):
            return own, ""
        # A process without an app id is named by its pid, by the rule of app_identity.
        claimed = claim.app_id[:256] or f"pid-{claim.pid}"
        if not self.policy.may_name(session.cred, claimed):
            log.info(
                "%s named its app %r: ignored (no [[publisher]] rule lets it)",
                session.cred.describe(),
                claimed,
            )
            return own, claimed
        self.ctx.counters["named_apps"] += 1
        named = wire.App(
            0,
            claimed,
            claim.pid,
            session.cred.uid,
            claim.unit[:256],
            (claim.label or session.label)[:256],
        )
        return named, claimed

    def publisher_of(self, tree_id: int) -> PeerCred | None:
        """Who published tree ``tree_id`` (the kernel's word), None once it is gone."""
        owner = self.owners.get(tree_id)
        return owner.cred if owner is not None else None

    def claim_of(self, tree_id: int) -> str:
        """The app id tree ``tree_id``'s publisher claimed it is for ("" for none)."""
        return self.claims.get(tree_id, "")

    def leave(self, session: Session) -> bool:
        """``session``'s connection is gone; True when that removed a tree (every subscriber
        has a frame to be sent)."""
        if session.sub is not None:
            self.desktop.unsubscribe(session.key)
            session.sub = None
        tree = session.tree
        if tree is None:
            return False
        self.desktop.remove_tree(tree.tree_id)  # decided with its publisher still known
        self.owners.pop(tree.tree_id, None)
        self.claims.pop(tree.tree_id, None)
        self.named.discard(tree.tree_id)
        log.info("tree %d of %s removed (its app left)", tree.tree_id, tree.app.app_id)
        return True

    # -- actions -------------------------------------------------------------------------------

    def admit_action(self, in_flight: int) -> None:
        if in_flight >= self.config.max_actions_in_flight:
            raise LimitExceeded(f"at most {self.config.max_actions_in_flight} actions in flight")

    def route(self, request: wire.ActionRequest, who: Who) -> Forward:
        """Where ``who``'s action goes: the request to send the tree's app, which will answer
        it (its connection expects the answer from now until :meth:`settle`)."""
        if (target := self.desktop.trees.get(request.tree_id)) is not None:
            # before saying anything of its nodes
            self.policy.check(
                who,
                "act",
                target.app,
                self.publisher_of(target.tree_id),
                self.claim_of(target.tree_id),
            )
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
        owner.conn.expect(forward_id)
        forwarded = wire.ActionRequest(
            forward_id, tree.tree_id, node.id, request.action, request.value, int(timeout * 1000)
        )
        what = f"{tree.app.app_id} did not answer {name} on node {node.id}"
        return Forward(owner, forwarded, timeout, what)

    @staticmethod
    def settle(forward: Forward) -> None:
        """The server no longer waits for the app's answer (it came, or the wait ended)."""
        forward.owner.conn.forget(forward.request.request_id)

    def action_answered(self, request_id: int, answer: wire.Message) -> bytes | None:
        """The frame for the requester of action ``request_id``, which the app answered."""
        self.ctx.counters["actions"] += 1
        if isinstance(answer, wire.Error):
            return wire.encode(wire.Error(request_id, answer.code, answer.message))
        if isinstance(answer, wire.ActionResult):
            return wire.encode(wire.ActionResult(request_id, answer.message))
        return None

    def action_failed(self, request_id: int, exc: Exception) -> bytes:
        """The frame for the requester of action ``request_id``, which could not be done."""
        if isinstance(exc, KikiError):
            self.ctx.counters["actions_failed"] += 1
            return wire.encode(wire.Error(request_id, exc.jsonrpc_code, exc.message))
        self.ctx.counters["internal_errors"] += 1
        log.error("routing an action failed", exc_info=exc)
        return wire.encode(wire.Error(request_id, INTERNAL_ERROR, "Internal error"))

    # -- authorization (kiki_a11y_server.policy) -------------------------------------------------

    def reload_policy(self) -> bool:
        """Load the policy file again; a publisher that may no longer name the app of a tree
        it named loses the name (the tree is its publisher's own from then on, and its
        subscribers resync). True when that gave subscribers frames to be sent."""
        self.policy = A11yPolicy.load(self.policy_path)
        log.info("reloaded %s", self.policy_path)
        renamed = False
        for tree_id in sorted(self.named):
            owner = self.owners.get(tree_id)
            claimed = self.claims.get(tree_id, "")
            if owner is None or self.policy.may_name(owner.cred, claimed):
                continue
            self.named.discard(tree_id)
            own = app_identity(owner.cred)._replace(label=owner.label)
            self.desktop.rename(tree_id, own)
            renamed = True
            log.warning(
                "tree %d: %s may no longer name it %r; it is %s's",
                tree_id,
                owner.cred.describe(),
                claimed,
                own.app_id,
            )
        return renamed

    def visible(self, who: Who, right: Right) -> Callable[[wire.App], bool] | None:
        """Which trees ``who`` may see for ``right``; None for every tree. The policy in force
        when asked decides (a reload applies to what a subscription is sent next)."""
        if self.policy.sees_all(who, right):
            return None
        return lambda app: self.policy.allows(
            who, right, app, self.publisher_of(app.tree_id), self.claim_of(app.tree_id)
        )

    def streamable(self, app: wire.App) -> bool:
        """Whether the change stream, shared by subscribers it cannot name, may carry ``app``'s
        tree: everyone may subscribe to it (:meth:`A11yPolicy.public`, the policy in force
        when asked)."""
        return self.policy.public(
            "subscribe", app, self.publisher_of(app.tree_id), self.claim_of(app.tree_id)
        )

    def check_targets(self, who: Who, right: Right, tree_id: int, apps: Sequence[str]) -> None:
        """A request that names trees (by id or app id) none of which ``who`` may see is
        refused (PermissionDenied), rather than answered as if they were not there."""
        if not tree_id and not apps:
            return
        named = [
            t.app
            for t in self.desktop
            if (not tree_id or t.tree_id == tree_id) and (not apps or t.app.app_id in apps)
        ]
        allowed = self.visible(who, right)
        if named and allowed is not None and not any(allowed(app) for app in named):
            tree_id = named[0].tree_id
            self.policy.check(
                who, right, named[0], self.publisher_of(tree_id), self.claim_of(tree_id)
            )

    def readable(self, who: Who, app_id: str = "") -> list[Tree]:
        """The trees (of ``app_id``, when given) ``who`` may read; PermissionDenied when it
        names an app none of whose trees it may read."""
        self.check_targets(who, "read", 0, (app_id,) if app_id else ())
        visible = self.visible(who, "read")
        return [
            t
            for t in self.desktop
            if (not app_id or t.app.app_id == app_id) and (visible is None or visible(t.app))
        ]

    # -- what the service says of itself -------------------------------------------------------

    def info(self, request_id: int) -> wire.Info:
        counters = self.ctx.counters
        counters["trees"] = len(self.desktop.trees)
        counters["nodes"] = self.desktop.node_count
        counters["subscribers"] = len(self.desktop.subscribers)
        counters["change_streams"] = len(self.desktop.watchers)  # the broker's upstreams
        counters["subscriber_resyncs"] = sum(s.resyncs for s in self.desktop.subscribers.values())
        return wire.Info(
            request_id,
            self.ctx.name,
            self.ctx.version,
            self.ctx.info()["pid"],
            int((time.monotonic() - self.ctx.started) * 1000),
            self.ctx.status,
            tuple(sorted(counters.items())),
        )

    def status_text(self, mode: str) -> str:
        trees = len(self.desktop.trees)
        return (
            f"serving a11y.sock ({mode}): {trees} app tree{'s' if trees != 1 else ''}, "
            f"{len(self.desktop.subscribers)} subscribers"
        )
