"""Publishing: an app directory committed to an ``archive`` repository that any static HTTP server
can serve, with the static delta from the previous release and a fresh summary.

The commit's metadata comes from the app's manifest (``kiki-app.json``): ``version`` (the key
``ostree log`` shows), ``kiki.id``, ``kiki.kind`` and ``kiki.manifest`` (the manifest itself, so
that a device can read what it is about to install before checking it out). Signing is
``signing.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kiki_updater.gio import commit_dir, lib, open_repo
from kiki_updater.store import ARCH, Kind, app_ref
from libkiki.errors import LexiconError, ValidationError

__all__ = ["MANIFEST_FILE", "Release", "publish", "read_manifest", "regenerate_summary"]

MANIFEST_FILE = "kiki-app.json"
MANIFEST_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class Release:
    app_id: str
    version: str
    ref: str
    commit: str
    parent: str | None
    delta: str | None  # "<from>-<to>", when a previous release existed


def read_manifest(tree: Path) -> dict[str, Any]:
    """The manifest's ``id`` and ``version`` checked (the full check is the install's)."""
    from libkiki.lexicon.files import read_json_file

    path = tree / MANIFEST_FILE
    if not path.exists():
        raise ValidationError("manifest", f"{tree} has no {MANIFEST_FILE}")
    try:
        # bounded, and never a FIFO or a device: the reader the lexicon loader uses
        manifest = read_json_file(path, MANIFEST_MAX)
    except LexiconError as exc:
        raise ValidationError("manifest", str(exc)) from None
    if not isinstance(manifest, dict):
        raise ValidationError("manifest", f"{MANIFEST_FILE} is not an object")
    for key in ("id", "version"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise ValidationError(f"manifest.{key}", f"{MANIFEST_FILE} needs a string {key!r}")
    return manifest


def publish(
    tree: Path,
    repo_path: Path,
    *,
    kind: Kind = "app",
    channel: str = "stable",
    arch: str = ARCH,
    sign: Callable[[Any, str], None] | None = None,
    sign_summary: Callable[[Any], None] | None = None,
    timestamp: int | None = None,
) -> Release:
    """Commit ``tree`` as the next release on its ref in the archive repository at
    ``repo_path`` (created if missing), then the delta from the previous release and the
    summary. ``sign(repo, commit)`` signs the commit before the summary is written, and
    ``sign_summary(repo)`` the summary (GPG: ``summary.sig``, which ``gpg-verify-summary``
    remotes require)."""
    manifest = read_manifest(tree)
    app_id, version = manifest["id"], manifest["version"]
    ref = app_ref(kind, app_id, channel, arch)
    repo = open_repo(repo_path, "archive")
    _, parent = repo.resolve_rev(ref, True)
    commit = commit_dir(
        repo,
        tree,
        ref,
        subject=f"{app_id} {version}",
        metadata={
            "version": version,
            "kiki.id": app_id,
            "kiki.kind": kind,
            # what libostree and the updater check a pulled commit against: a commit
            # published for one channel cannot be served as another's
            "ostree.ref-binding": [ref],
            "kiki.manifest": orjson.dumps(manifest).decode(),
        },
        parent=parent or None,
        timestamp=timestamp,
    )
    if sign is not None:
        sign(repo, commit)
    delta = None
    if parent:
        L = lib()
        params = L.GLib.Variant("a{sv}", {})
        repo.static_delta_generate(
            L.OSTree.StaticDeltaGenerateOpt.MAJOR, parent, commit, None, params, None
        )
        delta = f"{parent}-{commit}"
    regenerate_summary(repo)
    if sign_summary is not None:
        sign_summary(repo)
    return Release(app_id, version, ref, commit, parent or None, delta)


def regenerate_summary(repo: Any) -> None:
    repo.regenerate_summary(None, None)
