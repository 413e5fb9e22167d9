"""The store: one ``bare-user-only`` OSTree repository and the deployments checked out of it.

Layout under the updater's root (``<state>/ostree``)::

    repo/                               the repository (objects, refs, remotes)
    verified.json                       file objects hashed whole, by stat (``verified.py``)
    app/<id>/deploy/<commit>/           a hardlinked checkout: its files are the repo's objects
    app/<id>/current -> deploy/<commit> swapped by rename(2), then the directory fsync'd
    app/<id>/data/                      the app's writable state, never inside a deployment
    app/<id>/origin.json                remote, ref and the history of what was deployed
    agent/<id>/...                      the same for agents

Refs: ``<kind>/<id>/<arch>/<channel>`` points at the deployed commit, ``kiki/rollback/<kind>/<id>``
at the previous one, so that ``prune`` keeps every rollback target; a rollback swaps the two.
Everything here blocks (libostree, fsync): the server runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import orjson

from kiki_updater.gio import UpdaterError, commit_version, fsync_dir, lib, open_repo, syncfs
from kiki_updater.names import is_id, is_name
from kiki_updater.objects import Parsed
from kiki_updater.verified import Stat, Verified
from libkiki.errors import InvalidParams, NotFound

__all__ = [
    "ARCH",
    "CorruptObject",
    "CrossDevice",
    "Deployed",
    "Kind",
    "NoRollback",
    "Store",
    "app_ref",
]

Kind = Literal["app", "agent"]
ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine(), platform.machine()
)
HISTORY_MAX = 32
SEARCHABLE = 0o711  # the directories above an app's data/


# Two threads creating the same repository at once would both run ostree's create.
_CREATING = threading.Lock()


class CrossDevice(UpdaterError):
    """A checkout would have to copy: the deployment directory is on another filesystem."""


class CorruptObject(UpdaterError):
    """An object of the repository does not match its checksum (a disk error, a hand edit)."""


class NoRollback(NotFound):
    """There is no previous deployment to go back to."""


def check_id(kind: Kind, ident: str) -> None:
    if kind not in ("app", "agent"):
        raise InvalidParams(f"unknown kind {kind!r}")
    if not is_id(ident):
        raise InvalidParams(f"{ident!r} is not an {kind} id (a reverse-DNS name)")


def app_ref(kind: Kind, ident: str, channel: str = "stable", arch: str = ARCH) -> str:
    check_id(kind, ident)
    if not is_name(channel):
        raise InvalidParams(f"{channel!r} is not a channel name")
    return f"{kind}/{ident}/{arch}/{channel}"


@dataclass(frozen=True, slots=True)
class Deployed:
    kind: Kind
    ident: str
    ref: str
    commit: str
    version: str
    remote: str | None
    previous: str | None
    path: Path
    history: tuple[dict[str, Any], ...] = field(default=())


class Store:
    """The store. Each thread gets OSTree repository objects of its own: an ``OstreeRepo``
    holds one transaction at a time, and operations on two apps run in two worker threads at
    once; separate objects share the repository on disk as two processes would (libostree's
    repository lock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo_path = root / "repo"
        self._local = threading.local()
        self.verified = Verified(root / "verified.json")
        # directory trees parsed by this process (``objects.py``), for every later check
        self.parsed = Parsed()

    @property
    def repo(self) -> Any:
        """The repository, created ``bare-user-only`` on first use."""
        repo = getattr(self._local, "repo", None)
        if repo is None:
            with _CREATING:
                self.root.mkdir(parents=True, exist_ok=True)
                repo = self._local.repo = open_repo(self.repo_path, "bare-user-only")
        return repo

    @property
    def scratch(self) -> Any:
        """A second repository where a commit is fetched alone and checked before the store
        pulls its content (``operations.py``); it holds only commit objects, each deleted once
        checked (:meth:`forget_checked`)."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            with _CREATING:
                scratch = self._local.scratch = open_repo(self.root / "verify", "bare-user-only")
            # Nothing here is kept: libostree's sync of the whole filesystem at the end of
            # each pull would make a commit durable that is deleted once checked. A commit a
            # crash left damaged here fails its check and is deleted (:meth:`forget_checked`).
            scratch.set_disable_fsync(True)
        return scratch

    def forget_checked(self, commit: str) -> None:
        """Delete ``commit`` (and its signatures) from the scratch repository: it was only
        there to be checked. Only this operation's commit, never a prune: another app's
        operation may be checking its own commit there at the same time."""
        L = lib()
        with contextlib.suppress(L.GLib.Error):
            self.scratch.delete_object(L.OSTree.ObjectType.COMMIT, commit, None)

    def home(self, kind: Kind, ident: str) -> Path:
        check_id(kind, ident)
        return self.root / kind / ident

    def make_home(self, kind: Kind, ident: str) -> Path:
        """The app's home, and the directories above it up to the root, made mode 0711 whatever
        the umask (the unit's is 0027): searchable, not listable, so that the app's own uid
        reaches its ``data/`` by path (a health command) and nothing else of the state."""
        home = self.home(kind, ident)
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.root / kind, home):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=SEARCHABLE)
            if stat.S_IMODE(path.stat().st_mode) != SEARCHABLE:
                path.chmod(SEARCHABLE)
        return home

    # -- reading -------------------------------------------------------------------------------

    def origin(self, kind: Kind, ident: str) -> dict[str, Any] | None:
        """``origin.json``; one that does not parse (a later write is not fsync'd: a power cut
        can leave it empty) is rebuilt from the refs, its history lost."""
        try:
            data = orjson.loads((self.home(kind, ident) / "origin.json").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("ref"), str):
            return data
        return self._rebuilt_origin(kind, ident)

    def _rebuilt_origin(self, kind: Kind, ident: str) -> dict[str, Any] | None:
        current = self.current(kind, ident)
        if current is None:
            return None
        _, refs = self.repo.list_refs(None, None)
        mine = sorted(
            r for r, c in refs.items() if r.startswith(f"{kind}/{ident}/") and c == current
        )
        if not mine:
            return None
        ref = mine[0]
        remotes = sorted(r.partition(":")[0] for r in refs if r.partition(":")[2] == ref)
        return {
            "remote": remotes[0] if remotes else None,
            "ref": ref,
            "history": [],
            "historyLost": True,
        }

    def current(self, kind: Kind, ident: str) -> str | None:
        try:
            target = os.readlink(self.home(kind, ident) / "current")
        except FileNotFoundError:
            return None
        return Path(target).name

    def previous(self, kind: Kind, ident: str) -> str | None:
        _, rev = self.repo.resolve_rev(rollback_ref(kind, ident), True)
        return str(rev) if rev else None

    def resolve(self, ref: str) -> str | None:
        _, rev = self.repo.resolve_rev(ref, True)
        return str(rev) if rev else None

    def deployed(self, kind: Kind, ident: str) -> Deployed | None:
        origin = self.origin(kind, ident)
        commit = self.current(kind, ident)
        if origin is None or commit is None:
            return None
        return Deployed(
            kind,
            ident,
            origin["ref"],
            commit,
            commit_version(self.repo, commit),
            origin.get("remote"),
            self.previous(kind, ident),
            self.home(kind, ident) / "deploy" / commit,
            tuple(origin.get("history", ())),
        )

    def installed(self, kind: Kind) -> Iterator[Deployed]:
        base = self.root / kind
        if not base.is_dir():
            return
        for entry in sorted(base.iterdir()):
            if is_id(entry.name) and (found := self.deployed(kind, entry.name)):
                yield found

    # -- changing ------------------------------------------------------------------------------

    def checkout(self, kind: Kind, ident: str, commit: str) -> Path:
        """The deployment of ``commit``, checked out (hardlinks only) if it is not yet."""
        home = self.make_home(kind, ident)
        deploy = home / "deploy"
        final = deploy / commit
        if final.is_dir():
            return final
        deploy.mkdir(exist_ok=True)
        if os.stat(deploy).st_dev != os.stat(self.repo_path).st_dev:
            raise CrossDevice(
                f"{deploy} is on another filesystem than the repository: a checkout would copy"
            )
        partial = deploy / f".partial-{commit}"
        if partial.exists():  # left by a run that was killed mid-checkout
            shutil.rmtree(partial)
        L = lib()
        options = L.OSTree.RepoCheckoutAtOptions()
        options.mode = 1  # OSTREE_REPO_CHECKOUT_MODE_USER; the enum does not assign here
        options.no_copy_fallback = True
        fd = os.open(deploy, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.repo.checkout_at(options, fd, partial.name, commit, None)
        except L.GLib.Error as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if "across devices" in exc.message:
                raise CrossDevice(f"checkout of {commit[:12]} would copy: {exc.message}") from None
            raise UpdaterError(f"checkout of {commit[:12]} failed: {exc.message}") from None
        finally:
            os.close(fd)
        os.rename(partial, final)
        fsync_dir(deploy)
        return final

    def swap(self, kind: Kind, ident: str, commit: str) -> None:
        """Point ``current`` at ``deploy/<commit>``: one rename(2), then the directory fsync."""
        home = self.home(kind, ident)
        tmp = home / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"deploy/{commit}", tmp)
        os.replace(tmp, home / "current")
        fsync_dir(home)

    def set_refs(self, kind: Kind, ident: str, ref: str, commit: str, previous: str | None) -> None:
        # Two immediate writes, not a transaction: committing one syncs the whole filesystem
        # (syncfs), which costs a rollback ten times its own time. The rollback ref first: a
        # crash between the two leaves the old ref and both commits kept alive.
        repo = self.repo
        repo.set_ref_immediate(None, rollback_ref(kind, ident), previous, None)
        repo.set_ref_immediate(None, ref, commit, None)

    def write_origin(
        self, kind: Kind, ident: str, origin: dict[str, Any], *, durable: bool
    ) -> None:
        """Replace ``origin.json``; ``durable``: synced first (its first write: without it the
        app would not be known after a crash). A later write only adds history, and a crash
        that loses it loses a line of history, never the deployment: it is not worth the two
        fsyncs that would double a rollback's time."""
        home = self.home(kind, ident)
        tmp = home / ".origin.json.tmp"
        with tmp.open("wb") as f:
            f.write(orjson.dumps(origin, option=orjson.OPT_INDENT_2))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, home / "origin.json")
        if durable:
            fsync_dir(home)

    def deploy(
        self, kind: Kind, ident: str, ref: str, commit: str, *, remote: str | None, action: str
    ) -> Deployed:
        """Check ``commit`` out and make it current; the deployed one before becomes the
        rollback target. Deployments older than those two are removed."""
        before = self.current(kind, ident)
        path = self.checkout(kind, ident, commit)
        (self.home(kind, ident) / "data").mkdir(mode=0o700, exist_ok=True)
        self.swap(kind, ident, commit)
        previous = before if before != commit else self.previous(kind, ident)
        self.set_refs(kind, ident, ref, commit, previous)
        self.record(kind, ident, ref, commit, remote=remote, action=action)
        self.clean(kind, ident, keep={commit, previous})
        found = self.deployed(kind, ident)
        if found is None or found.path != path:
            raise UpdaterError(f"{kind} {ident}: {commit[:12]} was deployed but is not current")
        return found

    def record(
        self,
        kind: Kind,
        ident: str,
        ref: str,
        commit: str,
        *,
        remote: str | None,
        action: str,
        version: str | None = None,
        known: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], ...]:
        """Add ``commit`` to the history in ``origin.json``: the history written. ``version``
        and ``known`` (``origin.json`` as just read) spare reading them again."""
        if known is None:
            known = self.origin(kind, ident)
        origin = known or {"history": []}
        entry = {
            "commit": commit,
            "version": commit_version(self.repo, commit) if version is None else version,
            "action": action,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        history = [entry, *origin.get("history", [])][:HISTORY_MAX]
        fresh = known is None or known.get("ref") != ref or known.get("remote") != remote
        self.write_origin(
            kind, ident, {"remote": remote, "ref": ref, "history": history}, durable=fresh
        )
        return tuple(history)

    def rollback(
        self,
        kind: Kind,
        ident: str,
        *,
        action: str = "rollback",
        found: Deployed | None = None,
    ) -> Deployed:
        """Swap ``current`` and the ref back to the rollback target (no network); the commit
        rolled back from becomes the target, so a second rollback undoes the first.
        ``found``: what :meth:`deployed` said just before (the caller's, not read again)."""
        if found is None:
            found = self.deployed(kind, ident)
        if found is None:
            raise NotFound(f"{kind} {ident} is not installed")
        if found.previous is None:
            raise NoRollback(f"{kind} {ident} has no previous deployment")
        target, now = found.previous, found.commit
        path = self.checkout(kind, ident, target)  # normally still there: kept by clean()
        self.swap(kind, ident, target)
        self.set_refs(kind, ident, found.ref, target, now)
        version = commit_version(self.repo, target)
        known = {"remote": found.remote, "ref": found.ref, "history": list(found.history)}
        history = self.record(
            kind,
            ident,
            found.ref,
            target,
            remote=found.remote,
            action=action,
            version=version,
            known=known,
        )
        return Deployed(kind, ident, found.ref, target, version, found.remote, now, path, history)

    def clean(self, kind: Kind, ident: str, keep: set[str | None]) -> None:
        deploy = self.home(kind, ident) / "deploy"
        for entry in deploy.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def remove(self, kind: Kind, ident: str, *, keep_data: bool = False) -> None:
        """Remove the deployments, the refs and (unless ``keep_data``) ``data/``; the objects go
        at the next :meth:`prune`."""
        found = self.deployed(kind, ident)
        home = self.home(kind, ident)
        if found is None and not home.exists():
            raise NotFound(f"{kind} {ident} is not installed")
        (home / "current").unlink(missing_ok=True)
        fsync_dir(home)
        repo = self.repo
        refs = {rollback_ref(kind, ident)} | ({found.ref} if found else set())
        for ref in refs:
            repo.set_ref_immediate(None, ref, None, None)
        for entry in home.iterdir():
            if entry.name == "data" and keep_data:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if not keep_data:
            home.rmdir()

    def is_partial(self, commit: str) -> bool:
        """Whether the repository holds ``commit`` with objects missing (or not at all)."""
        L = lib()
        try:
            _, _, state = self.repo.load_commit(commit)
        except L.GLib.Error:
            return False
        return bool(state & L.OSTree.RepoCommitState.PARTIAL)

    def fsck(self, commit: str) -> int:
        """Check every object ``commit`` reaches against its checksum: its file objects, its
        directory trees on the way and their metadata (modes) (``objects.py``: about 30 ms for
        2000 files, 3 MB): the number of files checked. A file object hashed whole before and
        not changed since (``verified.py``) is not hashed again. A bad one is deleted, so that
        the next pull fetches it again, and raised as :class:`CorruptObject`: libostree reuses
        an object it already holds, so a pull alone would never repair it."""
        from kiki_updater.objects import (
            BadObject,
            commit_root,
            file_stat,
            file_verified,
            reached,
        )
        from kiki_updater.verified import recordable

        L = lib()
        FILE = L.OSTree.ObjectType.FILE
        objects = self.repo_path / "objects"
        try:
            found = reached(objects, *commit_root(self.repo, commit), self.parsed)
        except BadObject as bad:
            kind = L.OSTree.ObjectType.DIR_TREE
            self._confirm_bad(commit, kind, bad.checksum)
            # libostree finds the tree whole (it never does when the check above did not):
            # its own traversal then
            files, dirmetas = self._by_libostree(commit)
        else:
            files, dirmetas = found.files, found.dirmetas
        for checksum in dirmetas:
            self._check_dirmeta(commit, checksum)
        known = self.verified.load()
        now = int(time.time())
        fresh: dict[str, tuple[Stat, int]] = {}
        # Whole but written since their record: forgotten, so that their mtime set back to 0
        # later (``cp -a``) cannot match the record again. Looked for among every entry the
        # file holds: one lapsed or stamped ahead is believed again after the clock is set back.
        listed: frozenset[str] | None = None
        stale: list[str] = []
        try:
            for checksum in files:
                record = known.get(checksum)
                if record is not None and file_stat(objects, checksum) == record[0]:
                    continue
                key = file_verified(objects, checksum)
                if key is None:
                    self._confirm_bad(commit, FILE, checksum)
                elif recordable(key):
                    fresh[checksum] = (key, now)
                else:
                    if listed is None:
                        listed = self.verified.listed()
                    if checksum in listed:
                        stale.append(checksum)
        except CorruptObject as bad:
            self.verified.update(fresh, drop=[*stale, bad.data["object"]])
            raise
        if fresh or stale:
            self.verified.update(fresh, drop=stale)
        return len(files)

    def _check_dirmeta(self, commit: str, checksum: str) -> None:
        """A directory's metadata (owner, mode, xattrs) is a metadata object: whole when its
        bytes hash to its name, and then libostree needs not be asked."""
        from kiki_updater.objects import BadObject, read_meta

        try:
            read_meta(self.repo_path / "objects", checksum, "dirmeta")
        except BadObject as bad:
            self._refuse(commit, lib().OSTree.ObjectType.DIR_META, checksum, str(bad))

    def _confirm_bad(self, commit: str, kind: Any, checksum: str) -> None:
        """libostree's verdict on an object the fast check did not find whole: a symlink, an
        unusual mode (whole, returns) or a damaged or missing object (deleted, the commit
        marked partial, :class:`CorruptObject`)."""
        from kiki_updater.objects import object_path

        L = lib()
        path = object_path(
            self.repo_path / "objects", checksum, L.OSTree.object_type_to_string(kind)
        )
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(mode := path.lstat().st_mode) and not stat.S_ISLNK(mode):
                # a FIFO, a device, a directory: no object is ever one; libostree is not asked
                # (it would block opening a FIFO)
                self._refuse(commit, kind, checksum, "not a regular file or a symlink")
        try:
            self.repo.fsck_object(kind, checksum, None)
        except L.GLib.Error as exc:
            self._refuse(commit, kind, checksum, exc.message)

    def _refuse(self, commit: str, kind: Any, checksum: str, why: str) -> NoReturn:
        L = lib()
        with contextlib.suppress(L.GLib.Error):  # a missing object is not there to delete
            self.repo.delete_object(kind, checksum, None)
        # Partial: the next pull of this commit looks for its missing objects again.
        self.repo.mark_commit_partial(commit, True)
        raise CorruptObject(
            f"object {checksum[:12]} of {commit[:12]} is corrupt ({why}); "
            "removed, the next pull fetches it again",
            data={"error": "CorruptObject", "object": checksum},
        ) from None

    def _by_libostree(self, commit: str) -> tuple[set[str], set[str]]:
        """The file objects and directory metadata objects ``commit`` reaches."""
        OSTree = lib().OSTree
        _, reachable = self.repo.traverse_commit(commit, 0, None)
        named = [OSTree.object_name_deserialize(key) for key in reachable]
        files = {checksum for checksum, kind in named if kind == OSTree.ObjectType.FILE}
        metas = {checksum for checksum, kind in named if kind == OSTree.ObjectType.DIR_META}
        return files, metas

    def sync_pulled(
        self, commit: str, since: str, remote_ref: tuple[str, str] | None = None
    ) -> int:
        """Make durable what a pull made without syncing (``pull(sync=False)``): the objects
        ``commit`` reaches that ``since`` (the deployed commit, durable since its own pull)
        does not, the commit, then the state directory and ``remote_ref`` (remote, ref) the
        pull moved; the number of objects synced. A tree that cannot be read so, or an object
        that cannot be opened: the whole filesystem synced, as libostree would have (-1)."""
        from kiki_updater.objects import BadObject, added, commit_root, sync_objects

        objects = self.repo_path / "objects"
        try:
            new = added(objects, commit_root(self.repo, commit), commit_root(self.repo, since))
            return sync_objects(self.repo_path, commit, new, remote_ref)
        except (BadObject, OSError, lib().GLib.Error):
            syncfs(self.repo_path)
            return -1

    def prune(self) -> tuple[int, int]:
        """Delete every object no ref reaches (remote-tracking refs included): (objects, bytes).
        Depth 0: a commit's parents are not kept for it (every release names the one before,
        so following parents would keep them all); the previous release is kept by the
        rollback ref."""
        L = lib()
        _, _total, pruned, size = self.repo.prune(L.OSTree.RepoPruneFlags.REFS_ONLY, 0, None)
        if pruned:
            self._forget_pruned()
        return int(pruned), int(size)

    def _forget_pruned(self) -> None:
        """Drop the records of objects no longer in the repository (``verified.py``)."""
        from kiki_updater.objects import file_stat

        objects = self.repo_path / "objects"
        kept = {c: r for c, r in self.verified.load().items() if file_stat(objects, c)}
        self.verified.update(kept, keep_only=True)
        self.parsed.keep(objects)


def rollback_ref(kind: Kind, ident: str) -> str:
    return f"kiki/rollback/{kind}/{ident}"
