"""An imported agent's state is its own uid's, all of it, and that uid reaches it: under the
unit's ``UMask=0027`` the directories above ``data/`` are made 0711, and the health command (run
as the agent's uid) reads and writes anywhere in its state."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiki_updater.agents import export_agent, import_agent
from kiki_updater.app_users import AppUsers
from kiki_updater.health import HealthGate
from kiki_updater.signing import generate_keypair
from kiki_updater.store import Store
from kikitest.ostree_fixtures import in_worker, make_app_tree, traversable_dir, write_manifest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="an agent's own uid needs root"),
]

AGENT = "org.example.agent"
SECRET, PUBLIC = generate_keypair()
CHECK = (
    'cat "$KIKI_APP_DATA/secret" >/dev/null && cat "$KIKI_APP_DATA/sub/deep" >/dev/null'
    ' && echo x > "$KIKI_APP_DATA/sub/new"'
)


@pytest.fixture
def unit_umask() -> Iterator[None]:
    before = os.umask(0o027)
    yield
    os.umask(before)


@pytest.mark.usefixtures("unit_umask")
def test_an_imported_agents_state_is_its_own_uids_and_reachable(tmp_path: Path) -> None:
    code = make_app_tree(tmp_path / "code", AGENT, "1.0", files=2)
    write_manifest(
        code, AGENT, "1.0", health={"command": ["/bin/sh", "-c", CHECK], "deadlineSeconds": 10}
    )
    state = tmp_path / "state"
    (state / "sub").mkdir(mode=0o700, parents=True)
    (state / "secret").write_text("token")
    (state / "secret").chmod(0o600)
    (state / "sub" / "deep").write_text("deep")
    (state / "link").symlink_to("/etc/shadow")
    with traversable_dir() as top:
        store = Store(top / "dst")
        in_worker(export_agent, Store(tmp_path / "src"), AGENT, code, state, tmp_path / "m")
        in_worker(import_agent, store, AGENT, tmp_path / "m")
        home = store.home("agent", AGENT)
        for directory in (store.root, home.parent, home):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o711, directory
        uid = AppUsers(store.root).uid("agent", AGENT)
        data = home / "data"
        for path in (data, data / "sub", data / "sub" / "deep", data / "secret", data / "link"):
            assert os.lstat(path).st_uid == uid, path
        assert os.stat("/etc/shadow").st_uid == 0  # the symlink's target was left alone
        HealthGate()("agent", AGENT, (home / "current").resolve())
        assert (data / "sub" / "new").read_text() == "x\n"
