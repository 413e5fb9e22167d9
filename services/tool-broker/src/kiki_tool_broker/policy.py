"""Who may call which tool, decided from the caller's kernel-given identity.

The policy file (``/etc/kiki/tool-policy.toml``) lists rules; a rule names principals and tool
NSID globs::

    [[deny]]
    principals = ["app:org.example.Untrusted"]
    tools = ["dev.kiki.*"]

    [[allow]]
    principals = ["group:agents", "app:kiki-sync-relay", "user:alice+app:org.example.Music"]
    tools = ["dev.kiki.media.*", "dev.kiki.notify.notify"]

Principals: ``uid:N``, ``user:NAME``, ``gid:N`` / ``group:NAME`` (the caller's primary or
supplementary groups at connect time), ``app:ID`` (from the caller's cgroup), ``*`` (anyone),
and terms joined by ``+``, which must all match. Tools: NSID globs (``*`` matches within and
across segments, ``?`` one character).

An app id is only as good as whoever named the unit (:mod:`libkiki.peer`): root names the
system's units, but any user can put its own processes in a unit of any name in its own user
manager. So in an ``allow`` rule, ``app:ID`` alone grants to a system unit of that id only; an
app in a user's session is granted together with the users it may run as
(``user:alice+app:ID``, ``uid:1000+app:ID``, ``group:agents+app:ID``). In a ``deny`` rule
``app:ID`` matches the id wherever it comes from.

Decision order: a matching ``deny`` refuses; a matching ``allow`` grants; otherwise the defaults
apply — root may call anything; ``query`` tools (read-only) are open to members of the
``default_group`` (``kiki`` unless the file says otherwise); ``procedure`` tools (side effects),
and queries too, to the caller whose uid is the providing process's uid (an app calling its own
tools, the broker's user calling the broker's) — anything else needs an explicit ``allow``.
A missing policy file means the defaults alone.

Decisions are remembered per caller identity, tool, kind and provider user, for as long as the
policy is loaded: names (``user:``, ``group:``, ``default_group``) are therefore looked up once,
not on every call (a ``getgrnam`` reads ``/etc/group`` and cost ~150 µs), and a change to the
user or group database takes effect at the next reload (SIGHUP), as a change to the file does.
"""

from __future__ import annotations

import fnmatch
import grp
import logging
import pwd
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from libkiki.errors import ConfigError
from libkiki.peer import PeerCred

log = logging.getLogger(__name__)

Kind = Literal["query", "procedure"]
DEFAULT_GROUP = "kiki"


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller as policy sees it: credentials plus its groups, primary and supplementary."""

    cred: PeerCred
    groups: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of(cls, cred: PeerCred) -> Caller:
        # The groups the kernel recorded at connect() (SO_PEERGROUPS), not /proc/<pid>/status
        # read later: by then the pid may be another process's, or nobody's.
        return cls(cred, frozenset({cred.gid, *cred.groups}))


@dataclass(frozen=True, slots=True)
class Rule:
    principals: tuple[tuple[str, ...], ...]  # each principal's terms, all of which must match
    tools: tuple[re.Pattern[str], ...]
    granting: bool  # an allow rule (a deny rule's app: matches a user's app id too)

    def matches(self, caller: Caller, nsid: str) -> bool:
        return any(p.fullmatch(nsid) for p in self.tools) and any(
            _principal_matches(terms, caller, self.granting) for terms in self.principals
        )


def _principal_matches(terms: tuple[str, ...], caller: Caller, granting: bool) -> bool:
    if terms == ("*",):
        return True
    cred = caller.cred
    for term in terms:
        kind, _, value = term.partition(":")
        match kind:
            case "uid":
                ok = int(value) == cred.uid
            case "user":
                ok = _uid(value) == cred.uid
            case "gid":
                ok = int(value) in caller.groups
            case "group":
                ok = _gid(value) in caller.groups
            case "app":
                # A user's app id is that user's word for it: it grants only beside a term
                # that says which users (any user could name its own process so).
                ok = cred.app_id == value and (
                    not granting
                    or cred.app_user is None
                    or any(not t.startswith("app:") for t in terms)
                )
            case _:
                ok = False
        if not ok:
            return False
    return True


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


_TERM = re.compile(r"(uid|gid):[0-9]+|(user|group|app):[A-Za-z0-9_.@-]+")


def _principal(text: str, where: str) -> tuple[str, ...]:
    terms = tuple(text.split("+"))
    if terms != ("*",) and not all(_TERM.fullmatch(t) for t in terms):
        raise ConfigError(
            f"{where}: {text!r} is not a principal (uid:N, user:NAME, gid:N, group:NAME, "
            "app:ID, or such terms joined by '+'; or *)"
        )
    for term in terms:  # a name that resolves to nobody makes its rule match nobody
        kind, _, name = term.partition(":")
        if (kind == "user" and _uid(name) is None) or (kind == "group" and _gid(name) is None):
            log.warning("%s: no %s %r (yet): %r matches nobody", where, kind, name, text)
    return terms


def _rules(doc: object, section: str, source: str) -> tuple[Rule, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise ConfigError(f"{source}: [{section}] must be an array of tables ([[{section}]])")
    rules = []
    for i, entry in enumerate(doc):
        where = f"{source}: {section}[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"principals", "tools"}:
            raise ConfigError(f"{where}: a rule has exactly the keys principals and tools")
        principals, tools = entry.get("principals"), entry.get("tools")
        if (
            not isinstance(principals, list)
            or not isinstance(tools, list)
            or not (_strings(principals) and _strings(tools))
        ):
            raise ConfigError(f"{where}: principals and tools must be non-empty lists of strings")
        rules.append(
            Rule(
                tuple(_principal(p, where) for p in principals),
                tuple(re.compile(fnmatch.translate(t)) for t in tools),
                granting=section == "allow",
            )
        )
    return tuple(rules)


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


# Decisions remembered per policy; past this many, the memory starts over (a bound, not a cache
# policy: real devices have a handful of callers and tools).
_MAX_DECISIONS = 4096

Decision = tuple[bool, str]


@dataclass(frozen=True, slots=True)
class Policy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    default_group: str = DEFAULT_GROUP
    _decisions: dict[tuple[Caller, str, str, frozenset[int]], Decision] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read a policy file; a missing file means the defaults alone (a dangling symlink on
        its path is an error, not a missing file: its deny rules would vanish without a word)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            for part in (path, *path.parents):  # /etc/kiki a link to a disk not mounted, say
                if part.is_symlink() and not part.exists():
                    raise ConfigError(f"{path}: {part} is a symlink to nothing") from None
            log.info("no policy file %s: the defaults alone", path)
            return cls()
        except OSError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        try:
            doc = tomllib.loads(data.decode())
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 (TOML is): {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        unknown = set(doc) - {"allow", "deny", "default_group"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        group = doc.get("default_group", DEFAULT_GROUP)
        if not isinstance(group, str):
            raise ConfigError(f"{path}: default_group must be a string")
        if _gid(group) is None:  # then queries are open to nobody by default
            log.warning("%s: default_group: no group %r (yet): no caller is in it", path, group)
        return cls(
            _rules(doc.get("allow"), "allow", str(path)),
            _rules(doc.get("deny"), "deny", str(path)),
            group,
        )

    def allows(
        self, caller: Caller, nsid: str, kind: Kind, provider_uids: Iterable[int]
    ) -> Decision:
        """``(allowed, reason)``; the reason is for the audit log and the denial message."""
        key = (caller, nsid, kind, frozenset(provider_uids))
        found = self._decisions.get(key)
        if found is None:
            found = self._decide(caller, nsid, kind, key[3])
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = found
        return found

    def _decide(
        self, caller: Caller, nsid: str, kind: Kind, provider_uids: frozenset[int]
    ) -> Decision:
        if any(rule.matches(caller, nsid) for rule in self.deny):
            return False, "denied by policy"
        if any(rule.matches(caller, nsid) for rule in self.allow):
            return True, "allowed by policy"
        uid = caller.cred.uid
        if uid == 0:
            return True, "root"
        if uid in provider_uids:
            return True, "same user as the provider"
        if kind == "query" and _gid(self.default_group) in caller.groups:
            return True, f"query open to group {self.default_group}"
        if kind == "query":
            return False, f"queries need membership in group {self.default_group} or a grant"
        return False, "procedures need the provider's own user or an explicit grant"
