"""Who may call which tool, decided from the caller's kernel-given identity.

The policy file (``/etc/kiki/tool-policy.toml``) lists rules; a rule names principals and tool
NSID globs::

    [[deny]]
    principals = ["app:org.example.Untrusted"]
    tools = ["dev.kiki.*"]

    [[allow]]
    principals = ["uid:1000", "group:kiki-agents", "app:org.example.Music"]
    tools = ["dev.kiki.media.*", "dev.kiki.notifications.notify"]

Principals: ``uid:N``, ``user:NAME``, ``gid:N`` / ``group:NAME`` (the caller's primary or
supplementary groups), ``app:ID`` (from the caller's cgroup), ``*`` (anyone). Tools: NSID globs
(``*`` matches within and across segments, ``?`` one character).

Decision order: a matching ``deny`` refuses; a matching ``allow`` grants; otherwise the defaults
apply — root may call anything; ``query`` tools (read-only) are open to members of the ``kiki``
group and to the broker's own user; ``procedure`` tools (side effects) to the caller whose uid
is the providing process's uid (an app calling its own tools, the broker's user calling the
broker's) — anything else needs an explicit ``allow``.

Decisions are remembered per caller identity, tool, kind and provider user, for as long as the
policy is loaded: names (``user:``, ``group:``, ``default_group``) are therefore looked up once,
not on every call (a ``getgrnam`` reads ``/etc/group`` and cost ~150 µs), and a change to the
user or group database takes effect at the next reload (SIGHUP), as a change to the file does.
"""

from __future__ import annotations

import fnmatch
import grp
import pwd
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from libkiki.errors import KikiError
from libkiki.peer import PeerCred

Kind = Literal["query", "procedure"]
DEFAULT_GROUP = "kiki"


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller as policy sees it: credentials plus the groups its uid belongs to."""

    cred: PeerCred
    groups: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of(cls, cred: PeerCred, proc: Path = Path("/proc")) -> Caller:
        return cls(cred, frozenset({cred.gid, *_supplementary_groups(cred.pid, proc)}))


def _supplementary_groups(pid: int, proc: Path) -> list[int]:
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("Groups:"):
                return [int(g) for g in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


@dataclass(frozen=True, slots=True)
class Rule:
    principals: tuple[str, ...]
    tools: tuple[re.Pattern[str], ...]

    def matches(self, caller: Caller, nsid: str) -> bool:
        return any(p.fullmatch(nsid) for p in self.tools) and any(
            _principal_matches(p, caller) for p in self.principals
        )


def _principal_matches(principal: str, caller: Caller) -> bool:
    if principal == "*":
        return True
    kind, _, value = principal.partition(":")
    cred = caller.cred
    match kind:
        case "uid":
            return value.isdigit() and int(value) == cred.uid
        case "user":
            return _uid(value) == cred.uid
        case "gid":
            return value.isdigit() and int(value) in caller.groups
        case "group":
            return _gid(value) in caller.groups
        case "app":
            return cred.app_id == value
    return False


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


_PRINCIPAL = re.compile(r"^(\*|(uid|gid):\d+|(user|group|app):[A-Za-z0-9_.@-]+)$")


def _rules(doc: object, section: str, source: str) -> tuple[Rule, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise KikiError(f"{source}: [{section}] must be an array of tables ([[{section}]])")
    rules = []
    for i, entry in enumerate(doc):
        where = f"{source}: {section}[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"principals", "tools"}:
            raise KikiError(f"{where}: a rule has exactly the keys principals and tools")
        principals, tools = entry.get("principals"), entry.get("tools")
        if (
            not isinstance(principals, list)
            or not isinstance(tools, list)
            or not (_strings(principals) and _strings(tools))
        ):
            raise KikiError(f"{where}: principals and tools must be non-empty lists of strings")
        for p in principals:
            if not _PRINCIPAL.match(p):
                raise KikiError(
                    f"{where}: {p!r} is not a principal (uid:N, user:NAME, gid:N, "
                    "group:NAME, app:ID or *)"
                )
        rules.append(
            Rule(tuple(principals), tuple(re.compile(fnmatch.translate(t)) for t in tools))
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
        """Read a policy file; a missing file means the defaults alone."""
        if not path.exists():
            return cls()
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise KikiError(f"{path}: {exc}") from exc
        unknown = set(doc) - {"allow", "deny", "default_group"}
        if unknown:
            raise KikiError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        group = doc.get("default_group", DEFAULT_GROUP)
        if not isinstance(group, str):
            raise KikiError(f"{path}: default_group must be a string")
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
