"""Who a rule names, and whether a peer is one of them: the one principal grammar of Kiki.

Every service that lets a policy say who may connect, read, act, subscribe or provide parses
its principals here and matches them against :class:`~libkiki.peer.PeerCred`, the identity the
kernel gave the peer at ``connect()``: never against a claim in the payload.

Grammar (one string)::

    uid:N  user:NAME  gid:N  group:NAME  app:ID  *      and terms joined by '+' (all must match)
    remote:SUBJECT  remote:*                             (alone: a remote person, see below)

``gid:`` and ``group:`` match the peer's primary gid and every supplementary group the kernel
recorded at connect (``SO_PEERGROUPS``), not ``/etc/group`` read later. ``user:`` and
``group:`` names are resolved once, when the principal is parsed (at policy load): a change to
the user or group database takes effect at the next load. A name that resolves to nobody makes
its term match nobody, and is logged at load.

An app id is only as good as whoever named the unit (:mod:`libkiki.peer`): root names the
system's units, but any user can put its own processes in a unit of any name in its own user
manager. So where a principal *grants* (``granting=True``), ``app:ID`` alone matches a system
unit's app id only; an app in a user's session is granted together with a term that says which
users (``user:alice+app:ID``, ``uid:1000+app:ID``, ``group:agents+app:ID``). Where it *refuses*
(a deny rule), ``app:ID`` matches the id wherever it comes from.

Remote people (phones, dashboards, other agents reaching the device through a relay) have no
kernel identity here: a local process the policy trusts as a *delegate* vouches for them, and
names them as a :class:`Remote` (its ``subject``, and the ``session`` it came in on). A
``remote:`` principal matches such a :class:`Remote` only, ``remote:*`` any of them; it is a
term of its own (never joined by '+'), and no other principal, ``*`` included, matches a remote
person: a delegate can never claim a local principal, and a rule written for local peers never
grants to someone on the far side of a relay. A service a delegate's call reaches through the
broker reads the person from the call (``_meta["dev.kiki/onBehalfOf"]``, :func:`remote_of`) and
decides for them with :meth:`Principals.admits`, as the broker does.

Kiki's own services (:func:`is_kiki_service`) are told by the kernel too: root, the caller's
own uid (the developer constellation, where ``kiki up`` runs everything as one user), or a
process in a system unit ``kiki-*.service`` (only root names those).
"""

from __future__ import annotations

import fnmatch
import functools
import grp
import logging
import pwd
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from libkiki.errors import ConfigError, InvalidParams
from libkiki.peer import PeerCred

log = logging.getLogger(__name__)

__all__ = [
    "Principal",
    "Principals",
    "Remote",
    "Who",
    "globs",
    "identity_of",
    "in_group",
    "is_kiki_service",
    "matches",
    "read_policy_file",
    "remote_of",
    "resolve_group",
    "resolve_user",
    "rule_tables",
]

_TERM = re.compile(r"(uid|gid):[0-9]+|(user|group|app):[A-Za-z0-9_.@-]+")
_GRAMMAR = (
    "uid:N, user:NAME, gid:N, group:NAME, app:ID, or such terms joined by '+'; or *; "
    "or remote:SUBJECT or remote:* alone"
)
# A remote subject as a delegate names it (a DID, an account name, an e-mail address).
SUBJECT = re.compile(r"[A-Za-z0-9_.:@%-]{1,256}")
_REMOTE = re.compile(r"remote:(\*|[A-Za-z0-9_.:@%-]{1,256})")

# A term as matched: ("uid", N | None), ("gid", N | None) or ("app", ID). None: a name that
# resolved to nobody, so the term matches nobody.
Term = tuple[str, int | str | None]


def resolve_user(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def resolve_group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def in_group(cred: PeerCred, gid: int | None) -> bool:
    """Whether ``gid`` is the peer's primary group or one of its groups at connect()."""
    return gid is not None and (cred.gid == gid or gid in cred.groups)


@dataclass(frozen=True, slots=True)
class Remote:
    """A remote person a delegate acts for: who (``subject``), and in which ``session``."""

    subject: str
    session: str | None = None

    def __str__(self) -> str:
        return f"remote:{self.subject}"

    def view(self) -> dict[str, str]:
        """As an audit line and a forwarded call name it (``onBehalfOf``)."""
        view = {"subject": self.subject}
        if self.session is not None:
            view["session"] = self.session
        return view


# Whom a rule is asked about: a local peer (the kernel's word) or a remote person (a delegate's).
Who = PeerCred | Remote


def remote_of(value: object) -> Remote:
    """``_meta["dev.kiki/onBehalfOf"]`` (``{"subject": ..., "session": ...}``, session
    optional) as a :class:`Remote`, or :class:`InvalidParams`. Only whoever the caller knows to
    speak for a trusted delegate (the broker) may be believed when it names one."""
    if not isinstance(value, dict) or set(value) - {"subject", "session"}:
        raise InvalidParams(
            "onBehalfOf is an object with a subject and, optionally, a session",
            data={"rule": "onBehalfOf"},
        )
    subject, session = value.get("subject"), value.get("session")
    if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
        raise InvalidParams(
            "onBehalfOf.subject is 1 to 256 of A-Z a-z 0-9 _ . : @ % -",
            data={"rule": "onBehalfOf"},
        )
    if session is not None and (
        not isinstance(session, str) or not 0 < len(session) <= 128 or not session.isprintable()
    ):
        raise InvalidParams(
            "onBehalfOf.session is a string of 1 to 128 printable characters",
            data={"rule": "onBehalfOf"},
        )
    return Remote(subject, session)


@dataclass(frozen=True, slots=True)
class Principal:
    """One parsed principal; ``terms`` empty means anyone (``*``). ``remote`` set: a
    ``remote:`` principal (``"*"``: any remote person), which has no terms and matches remote
    people only."""

    text: str
    terms: tuple[Term, ...]
    remote: str | None = None

    @classmethod
    def parse(cls, text: str, where: str = "principal") -> Principal:
        """Parse ``text``, resolving names now; :class:`ConfigError` saying ``where`` if it is
        not a principal."""
        if not isinstance(text, str):
            raise ConfigError(f"{where}: {text!r} is not a principal ({_GRAMMAR})")
        if text == "*":
            return cls(text, ())
        if text.startswith("remote:"):
            if not _REMOTE.fullmatch(text):
                raise ConfigError(f"{where}: {text!r} is not a principal ({_GRAMMAR})")
            return cls(text, (), text.removeprefix("remote:"))
        parts = text.split("+")
        if not all(_TERM.fullmatch(p) for p in parts):
            raise ConfigError(f"{where}: {text!r} is not a principal ({_GRAMMAR})")
        terms: list[Term] = []
        for part in parts:
            kind, _, value = part.partition(":")
            term: Term
            match kind:
                case "uid" | "gid":
                    term = (kind, int(value))
                case "user":
                    term = ("uid", resolve_user(value))
                case "group":
                    term = ("gid", resolve_group(value))
                case _:
                    term = ("app", value)
            if term[1] is None:
                log.warning("%s: no %s %r (yet): %r matches nobody", where, kind, value, text)
            terms.append(term)
        return cls(text, tuple(terms))

    @property
    def anyone(self) -> bool:
        return not self.terms and self.remote is None

    def matches_remote(self, remote: Remote) -> bool:
        """Whether this principal names the remote person ``remote``: ``remote:`` ones only."""
        return self.remote is not None and self.remote in ("*", remote.subject)

    def matches(self, cred: PeerCred, *, granting: bool = True) -> bool:
        if self.remote is not None:
            return False  # a local peer is never a remote person
        if not self.terms:
            return True
        for kind, value in self.terms:
            if kind == "uid":
                ok = value is not None and cred.uid == value
            elif kind == "gid":
                ok = in_group(cred, value if isinstance(value, int) else None)
            else:
                # A user's app id is that user's word for it: it grants only beside a term
                # that says which users (any user could name its own process so).
                ok = cred.app_id == value and (
                    not granting or cred.app_user is None or any(k != "app" for k, _ in self.terms)
                )
            if not ok:
                return False
        return True

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Principals:
    """Several principals, any of which may match."""

    items: tuple[Principal, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str], where: str = "principals") -> Principals:
        if isinstance(texts, str):
            raise ConfigError(f"{where}: principals must be a list of strings, not one string")
        return cls(tuple(Principal.parse(t, where) for t in texts))

    @property
    def anyone(self) -> bool:
        return any(p.anyone for p in self.items)

    def matches(self, cred: PeerCred, *, granting: bool = True) -> bool:
        return any(p.matches(cred, granting=granting) for p in self.items)

    def matches_remote(self, remote: Remote) -> bool:
        return any(p.matches_remote(remote) for p in self.items)

    def admits(self, who: Who, *, granting: bool = True) -> bool:
        """Whether any of these names ``who``: a remote person by a ``remote:`` principal only,
        a local peer by the others only (``granting`` as for :meth:`matches`)."""
        if isinstance(who, Remote):
            return self.matches_remote(who)
        return self.matches(who, granting=granting)


@functools.lru_cache(maxsize=512)
def _cached(text: str) -> Principal | None:
    try:
        return Principal.parse(text)
    except ConfigError as exc:
        log.warning("%s: it matches nobody", exc)
        return None


def matches(text: str, cred: PeerCred) -> bool:
    """Whether the (granting) principal ``text`` matches ``cred``, parsed once per process: for
    a configuration read once at start. One that is not a principal matches nobody."""
    principal = _cached(text)
    return principal is not None and principal.matches(cred)


def is_kiki_service(cred: PeerCred, own_uid: int) -> bool:
    """Whether the kernel says ``cred`` is one of Kiki's own services: root, ``own_uid`` (the
    asking service's own user: the developer constellation runs everything as one user; on a
    device it is the service's own), or a process in a system unit ``kiki-*`` (whose name only
    root could give it; a user's unit of that name does not count)."""
    if cred.uid in (0, own_uid):
        return True
    return cred.app_user is None and cred.app_id is not None and cred.app_id.startswith("kiki-")


def identity_of(cred: PeerCred) -> str:
    """A peer's identity as far as the kernel vouches for it, stable across its restarts: a
    system unit's name (its uid may be a DynamicUser's), else its uid with the app id its user
    gave it."""
    if cred.app_id is not None and cred.app_user is None:
        return f"app:{cred.app_id}"
    if cred.app_id is not None:
        return f"uid:{cred.uid}+app:{cred.app_id}"
    return f"uid:{cred.uid}"


def read_policy_file(path: Path) -> dict[str, Any] | None:
    """A policy file's TOML, or None when there is no file (the defaults alone). A file that
    cannot be used is a :class:`ConfigError` naming it; so is a dangling symlink on its path,
    which is not a missing file: its deny rules would vanish without a word."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        for part in (path, *path.parents):  # /etc/kiki a link to a disk not mounted, say
            if part.is_symlink() and not part.exists():
                raise ConfigError(f"{path}: {part} is a symlink to nothing") from None
        log.info("no policy file %s: the defaults alone", path)
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (TOML is): {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def rule_tables(
    doc: object,
    section: str,
    source: str,
    keys: Iterable[str],
    defaults: Mapping[str, list[str]] | None = None,
) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """The ``[[section]]`` rules of a policy file, each as (where, its fields), checked the same
    way for every policy: an array of tables, each with exactly ``keys`` (those in ``defaults``
    may be left out), every field a non-empty list of strings. ``where`` names the rule in
    errors ("FILE: allow[2]"). Nothing at all (``doc`` None) is no rules."""
    if doc is None:
        return
    if not isinstance(doc, list):
        raise ConfigError(f"{source}: [{section}] must be an array of tables ([[{section}]])")
    defaults = defaults or {}
    wanted = [*keys, *(k for k in defaults if k not in keys)]
    named = ", ".join(wanted[:-1]) + f" and {wanted[-1]}" if len(wanted) > 1 else wanted[0]
    for i, entry in enumerate(doc):
        where = f"{source}: {section}[{i}]"
        if not isinstance(entry, dict) or set(entry) - set(wanted):
            raise ConfigError(f"{where}: a rule has exactly the keys {named}")
        fields: dict[str, list[str]] = {}
        for key in wanted:
            value = entry.get(key, defaults.get(key))
            if not _strings(value):
                raise ConfigError(f"{where}: {named} must be non-empty lists of strings")
            fields[key] = value
        yield where, fields


def globs(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Shell-style globs (``*`` within and across dots, ``?`` one character), compiled once."""
    return tuple(re.compile(fnmatch.translate(p)) for p in patterns)


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
