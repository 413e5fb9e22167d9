"""The OS through bootc: a stand-in ``bootc`` prints the bootc project's real status documents
and records its command lines. Every field Kiki shows comes from those documents; nothing
reboots unless asked; bootc's failures come back with its exit status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kiki_updater.bootc import Bootc, BootcFailed, deployments, reboot_required
from kikitest.ostree_fixtures import BOOTC_TESTDATA, bootc_stand_in
from libkiki.errors import Unavailable
from libkiki.paths import UPDATER_SOCKET
from libkiki.rpc import connect_unix

pytestmark = pytest.mark.integration

DOCUMENTS = sorted(p.name for p in BOOTC_TESTDATA.glob("spec-*"))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_field_shown_is_the_documents(tmp_path: Path, document: str) -> None:
    script, _ = bootc_stand_in(tmp_path, document)
    doc = Bootc(str(script)).status()
    status: dict[str, Any] = doc["status"] or {}
    found = [(r, status.get(r)) for r in ("staged", "booted", "rollback")]
    found += [("other", e) for e in status.get("otherDeployments") or []]
    entries: list[tuple[str, dict[str, Any]]] = [(r, e) for r, e in found if e is not None]
    shown = deployments(doc)
    assert len(shown) == len(entries)
    for view, (role, entry) in zip(shown, entries, strict=True):
        image: dict[str, Any] = entry["image"] or {}  # null: from plain OSTree, not an image
        assert view.get("image") == (image.get("image") or {}).get("image")
        assert view.get("digest") == image.get("imageDigest")
        assert view.get("version") == image.get("version")
        assert view.get("timestamp") == image.get("timestamp")
        assert view.get("checksum") == (entry.get("ostree") or {}).get("checksum")
        assert view["pinned"] == entry.get("pinned", False)
        assert (view["booted"], view["staged"], view["rollback"]) == (
            role == "booted",
            role == "staged",
            role == "rollback",
        )


def test_known_documents_read_as_bootc_wrote_them(tmp_path: Path) -> None:
    def shown(name: str) -> tuple[list[dict[str, Any]], bool]:
        doc = Bootc(str(bootc_stand_in(tmp_path / name, name)[0])).status()
        return deployments(doc), reboot_required(doc)

    staged, reboot = shown("spec-staged-rollback.yaml")
    assert reboot
    assert [(d["staged"], d["rollback"], d["version"], d["digest"][:15]) for d in staged] == [
        (True, False, "nightly", "sha256:16dc2b62"),
        (False, True, "nightly", "sha256:736b3594"),
    ]
    pinned, reboot = shown("spec-booted-pinned.yaml")
    assert not reboot
    assert [(d["booted"], d["pinned"], d["version"]) for d in pinned] == [
        (True, True, "stream9.20240807.0"),
        (False, True, "stream9.20240807.0"),
    ]
    remote, _ = shown("spec-ostree-remote.yaml")
    assert remote[0]["version"] == "20231230.1"  # a string, as bootc has it
    assert shown("spec-v1-null.json") == ([], False)


def test_a_missing_bootc_and_a_failing_one(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        Bootc(str(tmp_path / "nowhere")).status()
    script, _ = bootc_stand_in(tmp_path, "spec-only-booted.yaml", exit=3)
    with pytest.raises(BootcFailed, match="exited 3: error: stand-in") as failed:
        Bootc(str(script)).upgrade()
    assert failed.value.data == {"error": "BootcFailed", "exitStatus": 3}


def test_the_service_wraps_bootc_and_never_reboots_unasked(
    tmp_path: Path, sockdir: Path, spawn_service: Any
) -> None:
    script, log = bootc_stand_in(tmp_path, "spec-staged-booted.yaml")
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "updater.toml").write_text(
        f'broker_tools = false\nbootc = "{script}"\nroot = "{tmp_path / "ostree"}"\n'
    )
    _, notes = spawn_service("updater")
    notes.wait_for("READY")

    async def call(method: str, params: dict[str, Any]) -> Any:
        async with connect_unix(sockdir / UPDATER_SOCKET) as conn:
            return await conn.request("dev.kiki.update." + method, params)

    async def scenario() -> None:
        listed = await call("list", {})
        assert [d["staged"] for d in listed["deployments"]] == [True, False]
        assert (await call("status", {}))["rebootRequired"] is True
        await call("update", {"target": "os", "checkOnly": True})
        done = (await call("update", {"target": "os"}))["operation"]
        assert (done["target"], done["kind"], done["state"]) == ("os", "upgrade", "succeeded")
        assert done["message"] == "stand-in bootc: upgrade"
        await call("update", {"target": "os", "apply": True})
        await call("migrate", {"image": "quay.io/example/other:1"})
        await call("rollback", {"target": "os"})

    asyncio.run(scenario())
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c for c in commands if c[0] != "status"] == [
        ["upgrade", "--check"],
        ["upgrade"],
        ["upgrade", "--apply"],  # the only one asked to reboot
        ["switch", "quay.io/example/other:1"],
        ["rollback"],
    ]
