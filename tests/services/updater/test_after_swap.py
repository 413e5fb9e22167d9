"""From the swap on, any failure puts the previous commit back; the journal is left only when
that undo could not finish (recovery at the next start does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiki_updater.journal import Journal, recover
from kiki_updater.operations import Operations
from kiki_updater.pull import Remote
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, publish_versions

pytestmark = pytest.mark.unit

APP = "org.example.player"
SECRET, PUBLIC = generate_keypair()


def _updating(tmp_path: Path) -> tuple[Operations, Remote, str, str]:
    published = tmp_path / "published"
    publish_versions(published, tmp_path, APP, ["1.0"], secret=SECRET)
    root = tmp_path / "device"
    ops = Operations(Store(root), journal=Journal(root))
    remote = Remote.of("local", str(published), ed25519_keys=(PUBLIC,))
    old = in_worker(ops.install, "app", APP, remote)
    publish_versions(published, tmp_path / "next", APP, ["1.1"], secret=SECRET)
    return ops, remote, old.commit, old.ref


def _full_disk(*args: Any, **kw: Any) -> None:
    raise OSError(28, "No space left on device")


def test_an_error_after_the_swap_puts_the_previous_commit_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, remote, old, ref = _updating(tmp_path)
    record = Store.record
    calls: list[str] = []

    def first_fails(self: Store, *args: Any, **kw: Any) -> None:
        calls.append(kw["action"])
        if len(calls) == 1:
            _full_disk()
        record(self, *args, **kw)

    monkeypatch.setattr(Store, "record", first_fails)
    with pytest.raises(OSError, match="No space"):
        in_worker(ops.install, "app", APP, remote, update=True)
    assert ops.store.current("app", APP) == old
    assert ops.store.resolve(ref) == old
    assert calls == ["update", "undone"]
    assert ops.journal is not None
    assert ops.journal.pending() == []


def test_an_interruption_after_the_swap_puts_the_previous_commit_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, remote, old, ref = _updating(tmp_path)

    def interrupted(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    ops.health = interrupted
    with pytest.raises(KeyboardInterrupt):
        in_worker(ops.install, "app", APP, remote, update=True)
    assert ops.store.current("app", APP) == old
    assert ops.store.resolve(ref) == old


def test_an_undo_that_fails_leaves_the_journal_for_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, remote, old, ref = _updating(tmp_path)
    set_refs = Store.set_refs
    calls: list[str] = []

    def refs_then_full(self: Store, *args: Any) -> None:
        calls.append(args[3])
        if len(calls) == 1:
            set_refs(self, *args)  # the update's: its ref moves
        else:
            _full_disk()  # the undo's

    monkeypatch.setattr(Store, "set_refs", refs_then_full)
    monkeypatch.setattr(Store, "record", _full_disk)
    with pytest.raises(OSError, match="No space"):
        in_worker(ops.install, "app", APP, remote, update=True)
    assert ops.journal is not None
    (left,) = ops.journal.pending()
    assert left.phase == "swap"
    monkeypatch.undo()
    in_worker(recover, ops.store, ops.journal)
    assert ops.store.current("app", APP) == old
    assert ops.store.resolve(ref) == old
    assert ops.journal.pending() == []
