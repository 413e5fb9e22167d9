"""Every updater operation runs as the server runs it: in a worker thread with a GLib main
context of its own. Called on a thread without one (pytest's main thread, a bare thread) it is
refused with ``NoOwnContext`` before it touches anything: libostree would otherwise use GLib's
global context, shared by the whole process (a pull made so aborted a whole test run once)."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.agents import export_agent, import_agent
from kiki_updater.gio import NoOwnContext, lib, own_context
from kiki_updater.operations import Operations
from kiki_updater.pull import Remote, pull
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, publish_versions

pytestmark = pytest.mark.unit

APP = "org.example.player"
AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()


def _published(tmp_path: Path) -> Remote:
    published = tmp_path / "published"
    publish_versions(published, tmp_path, APP, ["1.0"], secret=SECRET)
    return Remote.of("local", str(published), ed25519_keys=(PUBLIC,))


def _on_a_bare_thread(call: Callable[[], Any]) -> BaseException | None:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return raised[0] if raised else None


def test_operations_on_the_main_thread_are_refused_before_any_work(tmp_path: Path) -> None:
    remote = _published(tmp_path)
    ops = Operations(Store(tmp_path / "device"))
    with pytest.raises(NoOwnContext, match=r"own_context"):
        ops.install("app", APP, remote)
    with pytest.raises(NoOwnContext):
        ops.rollback("app", APP)
    with pytest.raises(NoOwnContext):
        ops.deploy("app", APP, "app/x", "0" * 64, remote=None, action="install")
    # nothing was pulled, nothing deployed: the refusal came first
    assert not (tmp_path / "device" / "repo").exists()
    assert not (tmp_path / "device" / "app").exists()


def test_a_pull_on_a_thread_without_its_own_context_is_refused(tmp_path: Path) -> None:
    remote = _published(tmp_path)
    store = Store(tmp_path / "device")
    refused = _on_a_bare_thread(lambda: pull(store.repo, remote, f"app/{APP}/x86_64/stable"))
    assert isinstance(refused, NoOwnContext)
    # GLib's global context pushed as the thread's default is not a context of its own
    GLib = lib().GLib

    def with_the_global_one() -> None:
        GLib.MainContext.default().push_thread_default()
        try:
            pull(store.repo, remote, f"app/{APP}/x86_64/stable")
        finally:
            GLib.MainContext.default().pop_thread_default()

    assert isinstance(_on_a_bare_thread(with_the_global_one), NoOwnContext)


def test_agent_moves_need_their_own_context_too(tmp_path: Path) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=3)
    state = tmp_path / "state"
    state.mkdir()
    store = Store(tmp_path / "src")
    with pytest.raises(NoOwnContext):
        export_agent(store, AGENT, code, state, tmp_path / "m")
    with pytest.raises(NoOwnContext):
        import_agent(Store(tmp_path / "dst"), AGENT, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_the_same_operations_in_a_worker_with_their_own_context_run(tmp_path: Path) -> None:
    remote = _published(tmp_path)
    ops = Operations(Store(tmp_path / "device"))
    assert in_worker(ops.install, "app", APP, remote).version == "1.0"
    # own_context is what in_worker and the server's workers use: the guard accepts it anywhere
    with own_context():
        assert ops.store.deployed("app", APP) is not None
        assert _on_a_bare_thread(lambda: ops.rollback("app", APP)) is not None


def test_a_progress_left_with_a_pending_change_is_finished_before_the_context_goes() -> None:
    """A progress changed just before its operation ends has an idle source queued in the
    worker's context; libostree's finalize does not remove it, so the drain would dispatch it
    with the progress freed (GLib warns of an "invalid non-instantiatable type", or the process
    crashes). ``in_own_context`` finishes the progress first: its last change is delivered once,
    while it is alive."""
    from kiki_updater.gio import in_own_context

    changes: list[int] = []

    def work(op: Any, progress: Any, phase: Any) -> None:
        progress.connect("changed", lambda *_: changes.append(1))
        progress.set_uint("fetched", 3)  # queues the idle source that reports the change

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(20):
            in_worker(in_own_context, work, None, None, [], True)
            gc.collect()
    assert [str(w.message) for w in seen] == []
    assert changes == [1] * 20
