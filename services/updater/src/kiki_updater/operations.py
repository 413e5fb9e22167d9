"""Install, update and rollback of one app or agent: the steps in their order, blocking.

install/update::

    pull the commit alone -> verify its signature -> pull its content -> check out
    -> the install step (manifest checks) -> swap ``current`` and the refs -> health check
    (failed: the previous commit is put back and the failure reported)

A commit that fails verification moves no ref: the remote-tracking ref is put back, the
deployed ref was never touched, and no content was downloaded. Each phase is reported to
``phase(name)`` first, so that the server can journal it and send progress.

Every operation runs as the server runs it: in a worker thread with a GLib main context of its
own (``gio.own_context``); called on a thread without one it raises ``NoOwnContext`` before
doing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiki_updater.gio import UpdaterError, commit_metadata, require_own_context
from kiki_updater.journal import SWAPPED, Entry, Journal
from kiki_updater.pull import Remote, ensure_remote, pull
from kiki_updater.store import Deployed, Kind, NoRollback, Store, app_ref
from libkiki.errors import Conflict, KikiError, NotFound, Unavailable

__all__ = [
    "AlreadyInstalled",
    "Downgrade",
    "HealthFailed",
    "NotInstalled",
    "Operations",
    "UpToDate",
]

log = logging.getLogger(__name__)

# (kind, id, checkout, allow_breaking): the checks and installs of an app's manifest; what
# it installed (``defs#installReport``), if anything
Installer = Callable[[Kind, str, Path, bool], dict[str, Any] | None]
# (kind, id, deployment): how the check ran (``defs#healthCheck``), None when none is declared
HealthCheck = Callable[[Kind, str, Path], dict[str, Any] | None]
Phase = Callable[[str, dict[str, Any]], None]


class AlreadyInstalled(Conflict):
    pass


class NotInstalled(NotFound):
    pass


class UpToDate(Conflict):
    pass


class Downgrade(Conflict):
    """The remote's commit is older than the deployed one: a mirror (or anyone on the path of
    an ``http://`` remote) can serve an old release, still validly signed, to bring back what
    it fixed. Going back is ``rollback``, never an update."""


class HealthFailed(UpdaterError):
    """The new commit did not pass its health check; the previous one was put back."""


def _named(exc: KikiError, name: str) -> KikiError:
    exc.data = {"error": name, **(exc.data or {})}
    return exc


def _quiet(name: str, info: dict[str, Any]) -> None:
    pass


def bound(meta: dict[str, Any], ref: str, kind: str, ident: str) -> None:
    """Refuse a signed commit served under a name it was not published for: its
    ``ostree.ref-binding`` must hold ``ref`` (a beta release is not stable's), its ``kiki.id``
    and ``kiki.kind`` must be the app's (one app's release is not another's). Each is
    required: a commit without them was not published by ``kiki app build``."""
    from kiki_updater.signing import SignatureRefused  # cryptography: with the first pull

    binding = meta.get("ostree.ref-binding")
    if not isinstance(binding, list) or ref not in binding:
        raise SignatureRefused(f"the commit served as {ref} is not bound to it ({binding!r})")
    if meta.get("kiki.id") != ident or meta.get("kiki.kind") != kind:
        raise SignatureRefused(
            f"the commit served as {ref} is {meta.get('kiki.kind')!r} "
            f"{meta.get('kiki.id')!r}, not {kind} {ident}"
        )


@dataclass
class Operations:
    store: Store
    install_step: Installer | None = None
    health: HealthCheck | None = None
    journal: Journal | None = None

    def _journaled(self, entry: Entry, phase: Phase) -> Phase:
        """``phase`` that first writes the journal: on disk before the phase's work starts."""

        def step(name: str, info: dict[str, Any]) -> None:
            entry.phase = name
            if "commit" in info and entry.action != "rollback":
                entry.commit = info["commit"] or entry.commit
            if self.journal is not None and name != "done":
                self.journal.write(entry)
            phase(name, info)

        return step

    def fetch(
        self,
        remote: Remote,
        ref: str,
        *,
        progress: Any = None,
        phase: Phase = _quiet,
        kind: Kind,
        ident: str,
        deployed: str | None = None,
    ) -> str:
        """Pull and verify the commit ``ref`` names on ``remote``, then its content: the
        verified commit.

        The commit alone is fetched into a scratch repository first and its signature checked
        there: a refused commit costs no content download and touches no ref of the store (and
        libostree would not use a static delta to a commit already present in the store).
        The content pull is pinned to that checksum. The commit must be bound to ``ref`` and
        name ``kind`` and ``ident`` (:func:`bound`). With ``deployed`` (an update), a commit
        older than it is refused (:class:`Downgrade`) before any content is pulled."""
        from kiki_updater.signing import verify_commit  # cryptography: with the first pull

        require_own_context("a fetch")
        scratch = self.store.scratch
        ensure_remote(scratch, remote)
        phase("pull-commit", {"ref": ref})
        commit = pull(scratch, remote, ref, commit_only=True)
        try:
            phase("verify", {"commit": commit})
            if remote.gpg_keyring is None or remote.ed25519_keys:
                verify_commit(scratch, commit, remote.ed25519_keys)
            bound(commit_metadata(scratch, commit), ref, kind, ident)
            if deployed is not None and commit != deployed:
                self._not_older(scratch, commit, deployed)
        finally:
            scratch.set_ref_immediate(remote.name, ref, None, None)
            self.store.forget_checked(commit)
        repo = self.store.repo
        ensure_remote(repo, remote)
        phase("pull", {"commit": commit})
        # A commit whose bad object fsck dropped is partial: a static delta would not bring
        # that object back (it carries what changed), a pull by objects does.
        repair = self.store.is_partial(commit)
        # An update's pull writes a few objects: synced one by one (those the deployed commit
        # lacks), not with the whole filesystem. A first install or a repair keeps
        # libostree's sync.
        own_sync = deployed is not None and not repair
        pulled = pull(
            repo,
            remote,
            ref,
            progress=progress,
            commit=commit,
            no_deltas=repair,
            sync=not own_sync,
        )
        if own_sync and deployed is not None:
            self.store.sync_pulled(pulled, deployed, (remote.name, ref))
        return pulled

    def _not_older(self, scratch: Any, commit: str, deployed: str) -> None:
        # The timestamp is part of the signed commit object: a replayed release keeps its own.
        offered = commit_metadata(scratch, commit)
        current = commit_metadata(self.store.repo, deployed)
        if offered["timestamp"] < current["timestamp"] or commit == current["parent"]:
            raise _named(
                Downgrade(
                    f"{commit[:12]} ({offered.get('version')}) is older than the deployed "
                    f"{deployed[:12]} ({current.get('version')}): not an update"
                ),
                "Downgrade",
            )

    def install(
        self,
        kind: Kind,
        ident: str,
        remote: Remote,
        *,
        channel: str = "stable",
        update: bool = False,
        progress: Any = None,
        phase: Phase = _quiet,
        op: str = "",
        allow_breaking: bool = False,
    ) -> Deployed:
        """Install (or with ``update``, update) from ``remote``; ``allow_breaking`` lets the
        install step accept a lexicon change that breaks a type the installed version
        published (a directory install asked for it)."""
        require_own_context(f"the {'update' if update else 'install'} of {kind} {ident}")
        store = self.store
        found = store.deployed(kind, ident)
        if update and found is None:
            raise _named(NotInstalled(f"{kind} {ident} is not installed"), "NotInstalled")
        if not update and found is not None:
            raise _named(
                AlreadyInstalled(f"{kind} {ident} is installed ({found.version})"),
                "AlreadyInstalled",
            )
        ref = found.ref if found is not None else app_ref(kind, ident, channel)
        action = "update" if update else "install"
        entry = Entry(
            op,
            kind,
            ident,
            action,
            "queued",
            ref=ref,
            before=found.commit if found else None,
            before_previous=found.previous if found else None,
        )
        step = self._journaled(entry, phase)
        # The commit the remote-tracking ref holds before this pull moves it: a release whose
        # health check failed stays reachable by that ref alone.
        tracked = store.resolve(f"{remote.name}:{ref}") if update else None
        try:
            try:
                commit = self.fetch(
                    remote,
                    ref,
                    progress=progress,
                    phase=step,
                    kind=kind,
                    ident=ident,
                    deployed=found.commit if found else None,
                )
            except NotFound as exc:
                raise _named(exc, "NotFound") from None
            if found is not None and commit == found.commit:
                raise _named(
                    UpToDate(f"{kind} {ident} is up to date ({found.version})"), "UpToDate"
                )
            done = self.deploy(
                kind,
                ident,
                ref,
                commit,
                remote=remote.name,
                action=action,
                phase=step,
                allow_breaking=allow_breaking,
            )
        finally:
            # A failure from the swap on leaves the journal unless the undo put everything
            # back: recovery at the next start finishes the undo.
            if self.journal is not None and (
                entry.phase not in SWAPPED or self._is_back(kind, ident, ref, entry.before)
            ):
                self.journal.clear(kind, ident)
        kept = (None, done.commit, done.previous)
        if update and (entry.before_previous not in kept or tracked not in kept):
            # The release before the previous one, or the one the remote-tracking ref held
            # (a release whose health check failed), is now reachable by no ref of this
            # app's. With neither (the app's second release) the refs let nothing go: a
            # prune, which reads every object the repository holds, would free nothing.
            self._prune()
        return done

    def _prune(self) -> None:
        try:
            self.store.prune()
        except Exception:  # the update is done; what is left is freed at the next one
            log.exception("prune after an update")

    def _is_back(self, kind: Kind, ident: str, ref: str, before: str | None) -> bool:
        store = self.store
        if store.current(kind, ident) != before:
            return False
        return before is None or store.resolve(ref) == before

    def deploy(
        self,
        kind: Kind,
        ident: str,
        ref: str,
        commit: str,
        *,
        remote: str | None,
        action: str,
        phase: Phase = _quiet,
        allow_breaking: bool = False,
    ) -> Deployed:
        """Check every object, check out, run the install step, swap, run the health check.
        From the swap on, any failure (a failed health check, an error, an interruption) puts
        the previous commit back: a commit that has not passed its check never stays live."""
        require_own_context(f"the deployment of {kind} {ident}")
        store = self.store
        before = store.current(kind, ident)
        before_previous = store.previous(kind, ident)
        phase("checkout", {"commit": commit})
        store.fsck(commit)
        path = store.checkout(kind, ident, commit)
        report = None
        if self.install_step is not None:
            phase("install", {"commit": commit})
            report = self.install_step(kind, ident, path, allow_breaking)
        # what the install step did is reported with the swap: the operation carries it
        phase("swap", {"commit": commit, "previous": before, "install": report})
        ran = None
        try:
            deployed = store.deploy(kind, ident, ref, commit, remote=remote, action=action)
            problem = None
            if self.health is not None:
                phase("health", {"commit": commit})
                try:
                    ran = self.health(kind, ident, deployed.path)
                except Unavailable:
                    raise  # the check never ran (systemd, the settings): no verdict on the app
                except KikiError as exc:
                    problem = exc
        except BaseException:
            self.undo(kind, ident, ref, before, before_previous, action="undone")
            raise
        if problem is not None:
            self.undo(kind, ident, ref, before, before_previous)
            data: dict[str, Any] = {"error": "HealthFailed", "commit": commit}
            if isinstance(problem.data, dict) and "health" in problem.data:
                data["health"] = problem.data["health"]
            raise HealthFailed(
                f"{kind} {ident} {deployed.version} failed its health check ({problem}); "
                + ("the previous commit is back" if before else "it was removed"),
                data=data,
            ) from None
        phase("done", {"commit": commit, "health": ran})
        return deployed

    def undo(
        self,
        kind: Kind,
        ident: str,
        ref: str,
        before: str | None,
        before_previous: str | None,
        *,
        action: str = "health-rollback",
    ) -> None:
        """Put ``before`` back, and its rollback target (the failed commit is nobody's
        rollback target); a first install that failed is removed, its ``data/`` kept.
        ``current`` and the refs first, the history last: they are what runs."""
        store = self.store
        if before is None:
            if store.home(kind, ident).exists():
                store.remove(kind, ident, keep_data=True)
            return
        store.checkout(kind, ident, before)
        store.swap(kind, ident, before)
        store.set_refs(kind, ident, ref, before, before_previous)
        store.clean(kind, ident, keep={before, before_previous})
        remote = (store.origin(kind, ident) or {}).get("remote")
        store.record(kind, ident, ref, before, remote=remote, action=action)

    def rollback(self, kind: Kind, ident: str, *, phase: Phase = _quiet, op: str = "") -> Deployed:
        require_own_context(f"the rollback of {kind} {ident}")
        found = self.store.deployed(kind, ident)
        if found is None:
            raise _named(NotInstalled(f"{kind} {ident} is not installed"), "NotInstalled")
        if found.previous is None:
            raise _named(NoRollback(f"{kind} {ident} has no previous deployment"), "NoRollback")
        entry = Entry(
            op,
            kind,
            ident,
            "rollback",
            "swap",
            ref=found.ref,
            commit=found.previous,
            before=found.commit,
            before_previous=found.previous,
        )
        step = self._journaled(entry, phase)
        try:
            step("swap", {"commit": found.previous})
            done = self.store.rollback(kind, ident, found=found)
            step("done", {"commit": done.commit})
            return done
        finally:
            if self.journal is not None:
                self.journal.clear(kind, ident)
