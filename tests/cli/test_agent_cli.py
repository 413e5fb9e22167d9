"""``kiki agent export|import|move`` between two real updaters: the agent (installed on the
first from a remote) lands whole on the second, a second move sends only a small delta, an
import signed by an untrusted key is refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kikitest import kiki
from kikitest.ostree_fixtures import in_worker, make_app_tree, serve_dir

pytestmark = pytest.mark.integration

AGENT = "org.example.agent"


@pytest.fixture
def two_updaters(tmp_path: Path, sockdir: Path, spawn_service: Any) -> Iterator[tuple[Path, Path]]:
    from kiki_updater.publish import publish
    from kiki_updater.signing import generate_keypair, sign_commit

    secret, public = generate_keypair()
    (tmp_path / "agent.key").write_text(secret)
    repo = tmp_path / "published"
    publish(
        make_app_tree(tmp_path / "agent", AGENT, "1.0"),
        repo,
        kind="agent",
        sign=lambda r, c: sign_commit(r, c, secret),
    )
    with serve_dir(repo) as (url, _):
        socks = []
        for name in ("here", "there"):
            home = sockdir / name
            (home / "etc").mkdir(parents=True)
            (home / "etc" / "updater.toml").write_text(
                f'broker_tools = false\nroot = "{tmp_path / name}"\n'
                f'agent_secret_key = "{tmp_path / "agent.key"}"\n'
                f'agent_keys = ["{public}"]\n'
                f'[remotes.origin]\nurl = "{url}"\ned25519_keys = ["{public}"]\n'
            )
            env = {"KIKI_RUNTIME_DIR": str(home), "KIKI_CONFIG_DIR": str(home / "etc")}
            _, notes = spawn_service("updater", extra_env=env)
            notes.wait_for("READY")
            socks.append(home / "updater.sock")
        yield socks[0], socks[1]


def test_an_agent_moves_with_its_state_and_then_only_deltas(
    two_updaters: tuple[Path, Path], tmp_path: Path
) -> None:
    here, there = two_updaters
    import asyncio

    from libkiki.rpc import connect_unix

    async def install() -> Any:
        async with connect_unix(here) as conn:
            return await conn.request(
                "dev.kiki.update.install", {"target": "agent", "appId": AGENT, "remote": "origin"}
            )

    asyncio.run(install())
    data = tmp_path / "here" / "agent" / AGENT / "data"
    (data / "memory.json").write_text("remembered " * 1000)
    first = kiki(
        "agent",
        "--socket",
        str(here),
        "move",
        AGENT,
        "--to",
        str(there),
        "--full",
        "--keep",
        "--json",
    )
    assert first.returncode == 0, first.stderr
    sent = json.loads(first.stdout)["export"]["bytes"]
    landed = tmp_path / "there" / "agent" / AGENT / "data" / "memory.json"
    assert landed.read_text() == "remembered " * 1000
    (data / "memory.json").write_text("remembered more " * 1000)
    second = kiki("agent", "--socket", str(here), "move", AGENT, "--to", str(there), "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["export"]["bytes"] < sent / 2
    assert landed.read_text() == "remembered more " * 1000
    assert not (tmp_path / "here" / "agent" / AGENT).exists()  # retired without --keep
    listed = json.loads(kiki("app", "--socket", str(there), "list", "--json").stdout)
    assert [a["appId"] for a in listed["agents"]] == [AGENT]


def test_an_import_signed_by_an_untrusted_key_is_refused(
    two_updaters: tuple[Path, Path], tmp_path: Path
) -> None:
    from kiki_updater.agents import export_agent
    from kiki_updater.signing import generate_keypair
    from kiki_updater.store import Store

    _, there = two_updaters
    stranger, _ = generate_keypair()
    code = make_app_tree(tmp_path / "code", AGENT, "6.6")
    (tmp_path / "state").mkdir()
    in_worker(
        export_agent,
        Store(tmp_path / "elsewhere"),
        AGENT,
        code,
        tmp_path / "state",
        tmp_path / "moved",
        secret=stranger,
    )
    run = kiki("agent", "--socket", str(there), "import", AGENT, str(tmp_path / "moved"))
    assert run.returncode == 1
    assert "no trusted key" in run.stderr
    assert not (tmp_path / "there" / "agent" / AGENT / "current").exists()


@pytest.mark.parametrize("inside", ["repo/refs/heads/planted", "journal", ""])
def test_export_into_or_import_from_the_updaters_own_state_is_refused(
    two_updaters: tuple[Path, Path], tmp_path: Path, inside: str
) -> None:
    here, _ = two_updaters
    own = tmp_path / "here" / inside
    run = kiki("agent", "--socket", str(here), "export", AGENT, "--out", str(own))
    assert run.returncode == 1
    assert "inside the updater's state" in run.stderr
    run = kiki("agent", "--socket", str(here), "import", AGENT, str(own))
    assert run.returncode == 1
    assert "inside the updater's state" in run.stderr
    assert list((tmp_path / "here").glob("**/*.delta")) == []


def test_an_export_writes_private_deltas_never_through_a_planted_symlink(
    two_updaters: tuple[Path, Path], tmp_path: Path
) -> None:
    import asyncio
    import os
    import stat

    from libkiki.rpc import connect_unix

    here, _ = two_updaters

    async def install() -> Any:
        async with connect_unix(here) as conn:
            return await conn.request(
                "dev.kiki.update.install", {"target": "agent", "appId": AGENT, "remote": "origin"}
            )

    asyncio.run(install())
    (tmp_path / "here" / "agent" / AGENT / "data" / "private").write_text("the agent's own")
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.delta").symlink_to(victim)
    run = kiki("agent", "--socket", str(here), "export", AGENT, "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert victim.read_text() == "root's file\n"
    for part in ("code", "state"):
        written = os.lstat(out / f"{part}.delta")
        assert stat.S_ISREG(written.st_mode)
        assert stat.S_IMODE(written.st_mode) == 0o600, part


def _drawn_phases(shown: str) -> list[str]:
    drawn = [line for line in shown.split("\r") if line.startswith("\x1b[K[")]
    return [line.split("% ", 1)[1].split(" ")[0] for line in drawn if "% " in line]


def _bars(shown: str) -> int:
    """How many bars were drawn: each ends cleared (a clear not followed by a bar's line)."""
    return shown.count("\r\x1b[K") - len(re.findall(r"\r\x1b\[K\[", shown))


def test_export_import_and_move_draw_their_progress_on_a_terminal_only(
    two_updaters: tuple[Path, Path], tmp_path: Path
) -> None:
    """As ``kiki app install`` draws it (``os.ProgressBar``): the updater's phases on a
    terminal, the bar cleared at the end; nothing with ``--json`` or piped."""
    from test_app_cli import kiki_on_a_terminal

    here, there = two_updaters
    _install_agent(here)
    status, shown, out = kiki_on_a_terminal(
        "agent", "--socket", str(here), "export", AGENT, "--out", str(tmp_path / "out")
    )
    assert status == 0, shown
    assert out.startswith(f"export {AGENT}: succeeded")
    assert "export" in _drawn_phases(shown), shown
    assert shown.endswith("\r\x1b[K")
    status, shown, out = kiki_on_a_terminal(
        "agent", "--socket", str(there), "import", AGENT, str(tmp_path / "out")
    )
    assert status == 0, shown
    assert "import" in _drawn_phases(shown), shown
    assert shown.endswith("\r\x1b[K")
    status, shown, out = kiki_on_a_terminal(
        "agent", "--socket", str(here), "move", AGENT, "--to", str(there), "--keep"
    )
    assert status == 0, shown
    phases = _drawn_phases(shown)
    assert "export" in phases, shown
    assert "import" in phases, shown
    assert phases.index("export") < phases.index("import")
    assert shown.endswith("\r\x1b[K")
    assert _bars(shown) == 2, shown  # kept: no remove
    status, shown, out = kiki_on_a_terminal(
        "agent", "--socket", str(here), "move", AGENT, "--to", str(there), "--keep", "--json"
    )
    assert status == 0, shown
    assert json.loads(out)["kept"] is True
    assert shown == ""
    # without --keep the source's copy is removed after the import: that too is drawn
    status, shown, out = kiki_on_a_terminal(
        "agent", "--socket", str(here), "move", AGENT, "--to", str(there)
    )
    assert status == 0, shown
    assert "the source's copy retired" in out
    assert _bars(shown) == 3, shown  # export, import, and the retiring remove
    piped = kiki("agent", "--socket", str(there), "export", AGENT, "--out", str(tmp_path / "o2"))
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""


def _install_agent(sock: Path) -> None:
    import asyncio

    from libkiki.rpc import connect_unix

    async def install() -> Any:
        async with connect_unix(sock) as conn:
            return await conn.request(
                "dev.kiki.update.install", {"target": "agent", "appId": AGENT, "remote": "origin"}
            )

    asyncio.run(install())
