"""Who may read, subscribe to and act on which app's tree (sans-I/O, besides loading the file).

``/etc/kiki/a11y-policy.toml`` (reloaded on SIGHUP; optional) lists rules; principals are
:mod:`libkiki.principals`' (the broker's grammar and trust rules), rights are ``read`` (a
``Query``, the ``snapshot`` and ``find`` tools), ``subscribe`` and ``act``, and ``apps`` are globs
of the app ids of the trees (default ``*``)::

    [[allow]]
    principals = ["group:agents", "app:kiki-sync-relay"]
    rights = ["read", "subscribe", "act"]
    apps = ["*"]

    [[deny]]
    principals = ["*"]
    rights = ["act"]
    apps = ["org.example.Bank"]

A rule may also name ``publishers``, principals of the connection that published the tree (by
the kernel's word, whatever app the tree is for; default ``*``): an app id a user gave one of
its own units matches ``apps`` as well as the real app's, and ``publishers`` tells them apart.

A trusted publisher may name the app it publishes for (the AT-SPI bridge publishes every app of
a session, each on its own connection): ``[[publisher]]`` rules say who, and which app ids::

    [[publisher]]
    principals = ["uid:1000+app:kiki-atspi-bridge"]
    apps = ["*"]                # the app ids it may name (default "*")

Anyone else's claim is ignored (the tree's app is its publisher's, as always), except by
``deny`` rules, which hold on the claimed app id too: a claim only ever narrows access.

A matching ``deny`` refuses, a matching ``allow`` grants; otherwise root sees and acts on every
tree, and anyone else on the trees whose publisher has its uid (its own session's apps) only.
A remote person a trusted delegate called for through the broker (:class:`Remote`) is decided
as the broker decides them (:meth:`Principals.admits`): only ``remote:`` principals name them,
and by default they have nothing (not the delegate's rights, nor anyone local's).
Decisions are remembered per peer, right and tree for as long as the policy is loaded.
:meth:`A11yPolicy.public` says what a stream shared by subscribers it cannot name may carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from libkiki.a11y import wire
from libkiki.errors import ConfigError, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Principals, Remote, Who, globs, read_policy_file, rule_tables

Right = Literal["read", "subscribe", "act"]
RIGHTS: Final = ("read", "subscribe", "act")
_MAX_DECISIONS = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    principals: Principals
    rights: frozenset[str]
    apps: tuple[re.Pattern[str], ...]
    granting: bool
    publishers: Principals | None = None  # None: whoever published the tree

    def names(
        self, right: Right, app: wire.App, publisher: PeerCred | None, claimed: str = ""
    ) -> bool:
        """Whether the rule covers ``right`` on ``app``'s tree (published by ``publisher``,
        None when unknown), for whichever principals. ``claimed`` is the app id the tree's
        publisher said it is for, trusted or not: a deny rule holds on it too (a claim only
        ever narrows access), an allow rule looks only at the tree's own app id."""
        if right not in self.rights:
            return False
        ids = (app.app_id, claimed) if claimed and not self.granting else (app.app_id,)
        if not any(p.fullmatch(i) for p in self.apps for i in ids):
            return False
        if self.publishers is None:
            return True
        if publisher is None:
            return not self.granting  # unknown: a deny still holds, an allow does not
        return self.publishers.matches(publisher, granting=self.granting)

    def matches(
        self,
        who: Who,
        right: Right,
        app: wire.App,
        publisher: PeerCred | None,
        claimed: str = "",
    ) -> bool:
        return self.names(right, app, publisher, claimed) and self.principals.admits(
            who, granting=self.granting
        )


@dataclass(frozen=True, slots=True)
class PublisherRule:
    """Who may name the app it publishes for, and which app ids."""

    principals: Principals
    apps: tuple[re.Pattern[str], ...]


def _rules(doc: object, section: str, source: str) -> tuple[Rule, ...]:
    rules = []
    defaults = {**_ANY_APP, "publishers": ["*"]}
    for where, entry in rule_tables(doc, section, source, ("principals", "rights"), defaults):
        if unknown := set(entry["rights"]) - set(RIGHTS):
            raise ConfigError(
                f"{where}: unknown rights {', '.join(sorted(unknown))} (read, subscribe, act)"
            )
        publishers = entry["publishers"]
        rules.append(
            Rule(
                Principals.parse(entry["principals"], where),
                frozenset(entry["rights"]),
                globs(entry["apps"]),
                granting=section == "allow",
                # "*" among others is still everyone: no narrowing by publisher at all.
                publishers=None if "*" in publishers else Principals.parse(publishers, where),
            )
        )
    return tuple(rules)


def _publisher_rules(doc: object, source: str) -> tuple[PublisherRule, ...]:
    return tuple(
        PublisherRule(Principals.parse(entry["principals"], where), globs(entry["apps"]))
        for where, entry in rule_tables(doc, "publisher", source, ("principals",), _ANY_APP)
    )


_ANY_APP = {"apps": ["*"]}


@dataclass(frozen=True, slots=True)
class A11yPolicy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    publishers: tuple[PublisherRule, ...] = ()
    _decisions: dict[tuple[Who, str, wire.App, PeerCred | None, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _public: dict[tuple[str, wire.App, PeerCred | None, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, path: Path) -> A11yPolicy:
        doc = read_policy_file(path)
        if doc is None:
            return cls()
        if unknown := set(doc) - {"allow", "deny", "publisher"}:
            raise ConfigError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        return cls(
            _rules(doc.get("allow"), "allow", str(path)),
            _rules(doc.get("deny"), "deny", str(path)),
            _publisher_rules(doc.get("publisher"), str(path)),
        )

    def may_name(self, publisher: PeerCred, app_id: str) -> bool:
        """Whether ``publisher`` may say its tree is ``app_id``'s (a ``[[publisher]]`` rule)."""
        return any(
            rule.principals.matches(publisher) and any(p.fullmatch(app_id) for p in rule.apps)
            for rule in self.publishers
        )

    def allows(
        self,
        who: Who,
        right: Right,
        app: wire.App,
        publisher: PeerCred | None = None,
        claimed: str = "",
    ) -> bool:
        """Whether ``who`` (a local peer, or a remote person a trusted delegate called for)
        has ``right`` on ``app``'s tree, which ``publisher`` published (None: not known, as
        for a tree already gone) saying it is ``claimed``'s (an app id, trusted or not: deny
        rules hold on it too)."""
        key = (who, right, app, publisher, claimed)
        found = self._decisions.get(key)
        if found is None:
            found = self._decide(who, right, app, publisher, claimed)
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = found
        return found

    def _decide(
        self, who: Who, right: Right, app: wire.App, publisher: PeerCred | None, claimed: str
    ) -> bool:
        if any(rule.matches(who, right, app, publisher, claimed) for rule in self.deny):
            return False
        if any(rule.matches(who, right, app, publisher) for rule in self.allow):
            return True
        # A remote person has what remote: rules grant, and nothing by default: not the rights
        # of the delegate's uid, nor of anyone local.
        return not isinstance(who, Remote) and who.uid in (0, app.uid)

    def public(
        self, right: Right, app: wire.App, publisher: PeerCred | None = None, claimed: str = ""
    ) -> bool:
        """Whether everyone has ``right`` on ``app``'s tree: ``allow`` rules grant it to ``*``
        (every local peer) and to ``remote:*`` (every remote person a delegate names: ``*``
        does not match them), and no ``deny`` rule for it names the app, whoever that rule
        names. What a stream shared by many subscribers, none of whom it knows, may carry."""
        key = (right, app, publisher, claimed)
        found = self._public.get(key)
        if found is None:
            granting = [r.principals.items for r in self.allow if r.names(right, app, publisher)]
            found = (
                not any(rule.names(right, app, publisher, claimed) for rule in self.deny)
                and any(p.anyone for items in granting for p in items)
                and any(p.remote == "*" for items in granting for p in items)
            )
            if len(self._public) >= _MAX_DECISIONS:
                self._public.clear()
            self._public[key] = found
        return found

    def sees_all(self, who: Who, right: Right) -> bool:
        """Whether ``who`` has ``right`` on every tree whatever its app: root, with no deny
        rule that could name it. Such a peer needs no per-tree check (the shared snapshot)."""
        return not isinstance(who, Remote) and who.uid == 0 and not self.deny

    def check(
        self,
        who: Who,
        right: Right,
        app: wire.App,
        publisher: PeerCred | None = None,
        claimed: str = "",
    ) -> None:
        """:class:`PermissionDenied` unless ``who`` has ``right`` on ``app``'s tree."""
        if self.allows(who, right, app, publisher, claimed):
            return
        tree = f"tree {app.tree_id} ({app.app_id}, uid {app.uid})"
        if isinstance(who, Remote):
            why = "a remote person needs an allow rule naming remote:"
            raise PermissionDenied(
                f"{who} may not {_DO[right]} {tree}: {why}",
                data={"treeId": app.tree_id, "right": right, "onBehalfOf": who.view()},
            )
        raise PermissionDenied(
            f"uid {who.uid} may not {_DO[right]} {tree}: by default a user "
            f"{_DOES[right]} its own session's apps only",
            data={"treeId": app.tree_id, "right": right},
        )


_DO: Final = {"read": "read", "subscribe": "subscribe to", "act": "act on"}
_DOES: Final = {"read": "reads", "subscribe": "subscribes to", "act": "acts on"}
