"""Who may call, and who may provide, which tool: decided from the peer's kernel-given identity.

The policy file (``/etc/kiki/tool-policy.toml``) lists rules; a rule names principals and tool
NSID globs::

    [[deny]]
    principals = ["app:org.example.Untrusted"]
    tools = ["dev.kiki.*"]

    [[allow]]
    principals = ["group:agents", "app:kiki-sync-relay", "user:alice+app:org.example.Music"]
    tools = ["dev.kiki.media.*", "dev.kiki.notify.notify"]

    [[provide]]
    principals = ["user:alice+app:kiki-dbus-gateway"]
    tools = ["dev.kiki.media.*", "dev.kiki.notify.*"]

Principals are :mod:`libkiki.principals`' (``uid:N``, ``user:NAME``, ``gid:N``,
``group:NAME``, ``app:ID``, ``*``, terms joined by ``+``), with its trust rules: in ``allow``
and ``provide`` rules ``app:ID`` alone grants to a system unit only; in a ``deny`` rule it
matches the id wherever it comes from. Tools: NSID globs (``*`` matches within and across
segments, ``?`` one character).

Calling. A matching ``deny`` refuses; a matching ``allow`` grants; otherwise the defaults
apply — root may call anything; ``query`` tools (read-only) are open to members of the
``default_group`` (``kiki`` unless the file says otherwise); ``procedure`` tools (side effects),
and queries too, to the caller whose uid is the providing process's uid (an app calling its own
tools, the broker's user calling the broker's) — anything else needs an explicit ``allow``.

Subscribing (event streams, lexicon ``subscription`` types) is a kind of access of its own: an
``allow`` or ``deny`` rule may name the kinds it covers, ``access = ["call"]`` or
``access = ["subscribe"]`` (both when left out, so a deny of ``dev.kiki.*`` also denies its
streams). Without a rule, subscribing has the defaults of a query: root, the provider's own user,
members of the ``default_group``. A stream its provider declares private (``kiki/registerTools``
``privateSubscriptions``: someone's own data, such as the notifications other apps show) has
narrower defaults: root and the provider's own user only; and only an ``allow`` rule that names
its NSID outright (no glob) and covers subscribing grants it to anyone else.

Providing (:meth:`Policy.may_provide`). Kiki's own services (root, the broker's own user, a
system unit ``kiki-*``: :func:`libkiki.principals.is_kiki_service`) may provide any NSID; a
matching ``provide`` rule grants its globs; ``dev.kiki.*`` is nobody else's; an app may provide
the NSIDs under its authority, the id of its installed manifest, when the kernel gives it that
app id. Anything else is refused. What a Kiki service or an installed app provided stays
reserved for its identity for the broker's lifetime (:mod:`kiki_tool_broker.registry`).

Calls on behalf of remote people. A ``[[delegate]]`` rule names the local processes trusted to
relay for people elsewhere (``principals`` only, matched like any rule: ``app:ID`` alone is a
system unit's)::

    [[delegate]]
    principals = ["app:kiki-sync-relay", "uid:1001"]

    [[allow]]
    principals = ["remote:did:plc:alice"]   # or "remote:*", any remote person
    tools = ["dev.kiki.media.*"]

A delegate's call or subscription that names its person (:class:`libkiki.principals.Remote`) is
decided for that person alone: only ``remote:`` principals match it (in ``allow`` and ``deny``
rules), and the defaults grant a remote person nothing: not the relay's uid, group or app id,
not root's.

A missing policy file means the defaults alone. Decisions are remembered per caller identity,
tool, kind and provider user, for as long as the policy is loaded: names are resolved once per
load, and a change to the user or group database takes effect at the next reload (SIGHUP), as a
change to the file does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from libkiki.errors import ConfigError
from libkiki.paths import state_dir
from libkiki.peer import PeerCred
from libkiki.principals import (
    Principals,
    Remote,
    globs,
    in_group,
    is_kiki_service,
    read_policy_file,
    resolve_group,
    rule_tables,
)

log = logging.getLogger(__name__)

Kind = Literal["query", "procedure", "subscription"]
Access = Literal["call", "subscribe"]
ACCESS: tuple[Access, ...] = ("call", "subscribe")
DEFAULT_GROUP = "kiki"
KIKI_NSIDS = "dev.kiki."


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller as policy sees it (and remembers its decisions by): its credentials, whose
    ``groups`` are the supplementary groups the kernel recorded at connect(), and, for a
    trusted delegate's call on behalf of someone remote, that person (then the one decided
    for)."""

    cred: PeerCred
    remote: Remote | None = None
    # Hashed once: a caller is the key of every decision it looks up, on every call.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.cred, self.remote)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, cred: PeerCred) -> Caller:
        return cls(cred)

    def describe(self) -> str:
        """Who is asking, as a refusal names it: the peer, or the person it relays for."""
        asker = self.cred.describe()
        return asker if self.remote is None else f"{self.remote} (relayed by {asker})"


@dataclass(frozen=True, slots=True)
class Rule:
    principals: Principals
    tools: tuple[re.Pattern[str], ...]
    granting: bool  # an allow or provide rule (a deny rule's app: matches a user's app id too)
    access: frozenset[str] = frozenset(ACCESS)  # the kinds of access an allow/deny rule covers
    # The NSIDs an allow rule names outright (no glob), when it covers subscribing: what may
    # grant a private stream (:meth:`Policy.allows`).
    names_private: frozenset[str] = frozenset()

    def matches(self, cred: PeerCred, nsid: str, access: Access = "call") -> bool:
        return (
            access in self.access
            and any(p.fullmatch(nsid) for p in self.tools)
            and self.principals.matches(cred, granting=self.granting)
        )

    def matches_remote(self, remote: Remote, nsid: str, access: Access) -> bool:
        return (
            access in self.access
            and any(p.fullmatch(nsid) for p in self.tools)
            and self.principals.matches_remote(remote)
        )

    def grants_private(self, caller: Caller, nsid: str) -> bool:
        """Whether this allow rule grants subscribing to the private stream ``nsid``: it must
        name it outright and cover subscribing (a glob does not reach a private stream, nor
        does ``access = ["call"]``)."""
        if nsid not in self.names_private:
            return False
        who = caller.cred if caller.remote is None else caller.remote
        return self.principals.admits(who, granting=self.granting)


_SECTIONS = ("allow", "deny", "provide", "delegate")


def _delegates(doc: object, source: str) -> tuple[Principals, ...]:
    return tuple(
        Principals.parse(entry["principals"], where)
        for where, entry in rule_tables(doc, "delegate", source, ("principals",))
    )


def _rules(doc: object, section: str, source: str) -> tuple[Rule, ...]:
    # provide rules are about registering, which has no kinds of access
    defaults: dict[str, list[str]] | None = None
    if section != "provide":
        defaults = {"access": list(ACCESS)}
    rules = []
    for where, entry in rule_tables(doc, section, source, ("principals", "tools"), defaults):
        access = frozenset(entry.get("access", ACCESS))
        if not access <= set(ACCESS):
            raise ConfigError(f"{where}: access is a list of {' and '.join(ACCESS)}")
        # A private stream is granted only by naming it: a stream's NSID is never a tool's,
        # so a rule naming one outright (and covering subscribe) says who may follow it.
        explicit = section == "allow" and "subscribe" in access
        rules.append(
            Rule(
                Principals.parse(entry["principals"], where),
                globs(entry["tools"]),
                granting=section != "deny",
                access=access,
                names_private=frozenset(
                    t for t in entry["tools"] if explicit and not _GLOB.search(t)
                ),
            )
        )
    return tuple(rules)


_GLOB = re.compile(r"[*?\[]")


# Decisions remembered per policy; past this many, the memory starts over (a bound, not a cache
# policy: real devices have a handful of callers and tools).
_MAX_DECISIONS = 4096

Decision = tuple[bool, str]


@dataclass(frozen=True, slots=True)
class Provision:
    """May this peer provide this NSID, why, and does its identity keep the NSID reserved."""

    allowed: bool
    reason: str
    reserve: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    default_group: str = DEFAULT_GROUP
    provide: tuple[Rule, ...] = ()
    delegate: tuple[Principals, ...] = ()
    _decisions: dict[tuple[Caller, str, str, frozenset[int], bool], Decision] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _default_gid: list[int | None] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read a policy file; a missing file means the defaults alone (a dangling symlink on
        its path is an error, not a missing file: its deny rules would vanish without a word)."""
        doc = read_policy_file(path)
        if doc is None:
            return cls()
        unknown = set(doc) - {*_SECTIONS, "default_group"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        group = doc.get("default_group", DEFAULT_GROUP)
        if not isinstance(group, str):
            raise ConfigError(f"{path}: default_group must be a string")
        gid = resolve_group(group)
        if gid is None:  # then queries are open to nobody by default
            log.warning("%s: default_group: no group %r (yet): no caller is in it", path, group)
        policy = cls(
            _rules(doc.get("allow"), "allow", str(path)),
            _rules(doc.get("deny"), "deny", str(path)),
            group,
            _rules(doc.get("provide"), "provide", str(path)),
            _delegates(doc.get("delegate"), str(path)),
        )
        policy._default_gid.append(gid)
        return policy

    def allows(
        self,
        caller: Caller,
        nsid: str,
        kind: Kind,
        provider_uids: Iterable[int],
        *,
        private: bool = False,
    ) -> Decision:
        """``(allowed, reason)``; the reason is for the audit log and the denial message.
        ``private``: a stream its provider declared private (:meth:`_decide_private`)."""
        uids = provider_uids if type(provider_uids) is frozenset else frozenset(provider_uids)
        key = (caller, nsid, kind, uids, private)
        found = self._decisions.get(key)
        if found is None:
            if private:
                found = self._decide_private(caller, nsid, uids)
            elif caller.remote is not None:
                found = self._decide_remote(caller.remote, nsid, kind)
            else:
                found = self._decide(caller.cred, nsid, kind, key[3])
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = found
        return found

    def is_delegate(self, cred: PeerCred) -> bool:
        """Whether a ``[[delegate]]`` rule trusts ``cred`` to call for remote people."""
        return any(p.matches(cred) for p in self.delegate)

    def _decide_private(self, caller: Caller, nsid: str, provider_uids: frozenset[int]) -> Decision:
        """Subscribing to a private stream (one whose data is someone's own, such as the
        notifications other apps show a user): a deny rule refuses as ever; an allow rule
        grants only when it names the stream outright (no glob) and covers subscribing; else
        only root and the provider's own user (a session's agent runs as the session's user)
        may, never ``default_group``, and never a remote person by default."""
        if caller.remote is not None:
            if any(r.matches_remote(caller.remote, nsid, "subscribe") for r in self.deny):
                return False, "denied by policy"
        elif any(rule.matches(caller.cred, nsid, "subscribe") for rule in self.deny):
            return False, "denied by policy"
        if any(rule.grants_private(caller, nsid) for rule in self.allow):
            return True, "allowed by a rule naming the private stream"
        why = "a private stream needs an allow rule naming it (no glob) for subscribing"
        if caller.remote is not None:
            return False, why
        if caller.cred.uid == 0:
            return True, "root"
        if caller.cred.uid in provider_uids:
            return True, "same user as the provider"
        return False, f"{why}, unless its provider's own user"

    def _decide_remote(self, remote: Remote, nsid: str, kind: Kind) -> Decision:
        access: Access = "subscribe" if kind == "subscription" else "call"
        if any(rule.matches_remote(remote, nsid, access) for rule in self.deny):
            return False, "denied by policy"
        if any(rule.matches_remote(remote, nsid, access) for rule in self.allow):
            return True, "allowed by policy"
        return False, "a remote caller needs an allow rule naming remote:"

    def _group_id(self) -> int | None:
        if not self._default_gid:  # resolved once per load, on first use
            self._default_gid.append(resolve_group(self.default_group))
        return self._default_gid[0]

    def _decide(
        self, cred: PeerCred, nsid: str, kind: Kind, provider_uids: frozenset[int]
    ) -> Decision:
        access: Access = "subscribe" if kind == "subscription" else "call"
        if any(rule.matches(cred, nsid, access) for rule in self.deny):
            return False, "denied by policy"
        if any(rule.matches(cred, nsid, access) for rule in self.allow):
            return True, "allowed by policy"
        uid = cred.uid
        if uid == 0:
            return True, "root"
        if uid in provider_uids:
            return True, "same user as the provider"
        if kind != "procedure" and in_group(cred, self._group_id()):
            return True, f"{kind} open to group {self.default_group}"
        if kind != "procedure":
            what = "queries" if kind == "query" else "subscriptions"
            return False, f"{what} need membership in group {self.default_group} or a grant"
        return False, "procedures need the provider's own user or an explicit grant"

    def may_provide(
        self, cred: PeerCred, nsid: str, *, own_uid: int, authority: str | None
    ) -> Provision:
        """Whether ``cred`` may register ``nsid``. ``own_uid``: the broker's user;
        ``authority``: the id of the installed manifest of the peer's app, if it has one."""
        if is_kiki_service(cred, own_uid):
            return Provision(True, "a Kiki service", reserve=True)
        if any(rule.matches(cred, nsid) for rule in self.provide):
            return Provision(True, "allowed by a provide rule")
        if nsid.startswith(KIKI_NSIDS):
            return Provision(
                False,
                "dev.kiki.* is provided only by Kiki's own services (root, the broker's user, "
                "a system unit kiki-*) or by a provide rule",
            )
        if authority is not None and nsid.startswith(authority + "."):
            return Provision(True, f"under the authority of the installed app {authority}", True)
        if authority is None:
            why = "the provider has no app id with an installed manifest, and no provide rule"
            return Provision(False, f"{why} grants it")
        return Provision(
            False, f"it is not under {authority}, the authority of the provider's installed app"
        )


def installed_apps_dir() -> Path:
    """Where ``kiki app install`` keeps installed manifests (``<state dir>/apps``, as
    :mod:`libkiki.lexicon.install` lays it out; its lexicons are on the broker's search path
    under the same state directory)."""
    return state_dir() / "apps"


def installed_authority(apps_dir: Path | None, app_id: str | None) -> str | None:
    """The NSID authority of the app whose id the kernel gave a peer: the id of its installed
    manifest (``<apps_dir>/<app id>.json``), or None when that app is not installed. Read at
    each registration (rare), so an app installed while the broker runs is known at once."""
    if apps_dir is None or app_id is None:
        return None
    path = apps_dir / f"{app_id}.json"  # an app id has no '/' (libkiki.peer)
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("installed manifest %s unreadable, so it grants nothing: %s", path, exc)
        return None
    manifest_id = raw.get("id") if isinstance(raw, dict) else None
    return app_id if manifest_id == app_id else None
